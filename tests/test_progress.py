"""Progress of the long phases: drawn on a terminal (a pseudo-terminal here), never in a piped CI
log, never with --quiet or NPCOMPILE_PROGRESS=0; the compiled model is the same either way."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples" / "lenet_mnist"


def _args(out: Path) -> list[str]:
    return [sys.executable, "-m", "npcompile", str(EX / "model.onnx"), "--search", "binary", "--tolerance", "2",
            "--eval", str(EX / "eval.npz"), "--sensitivity", "--no-benchmark", "--no-plots", "-o", str(out)]


def _on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``args`` with stdout and stderr on a pseudo-terminal; the exit code and all it drew."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=60)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.fixture()
def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "NPCOMPILE_PROGRESS"}
    e["COLUMNS"], e["TERM"] = "120", "xterm"
    return e


def test_progress_on_a_terminal_only(tmp_path: Path, env: dict[str, str]) -> None:
    code, drawn = _on_terminal(_args(tmp_path / "tty"), env)
    assert code == 0, drawn[-3000:]
    assert "sensitivity" in drawn and "binary search" in drawn, drawn[-3000:]
    assert "\x1b[" in drawn  # a terminal bar, redrawn in place
    piped = subprocess.run(_args(tmp_path / "pipe"), capture_output=True, text=True, env=env, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert "binary search" not in piped.stderr and "\x1b[" not in piped.stderr
    # the bars draw in chunks, the search is the same
    assert (tmp_path / "tty" / "model.onnx").read_bytes() == (tmp_path / "pipe" / "model.onnx").read_bytes()


def test_quiet_and_the_switch_silence_it(tmp_path: Path, env: dict[str, str]) -> None:
    code, drawn = _on_terminal([*_args(tmp_path / "q"), "-q"], env)
    assert code == 0 and "binary search" not in drawn and "sensitivity" not in drawn, drawn[-2000:]
    code, drawn = _on_terminal(_args(tmp_path / "off"), {**env, "NPCOMPILE_PROGRESS": "0"})
    assert code == 0 and "binary search" not in drawn and "sensitivity" not in drawn, drawn[-2000:]


def test_forced_on_without_a_terminal(tmp_path: Path, env: dict[str, str]) -> None:
    r = subprocess.run(_args(tmp_path / "f"), capture_output=True, text=True, env={**env, "NPCOMPILE_PROGRESS": "1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "binary search" in r.stderr
