"""A Ray cluster that is not there, or goes away mid-run, ends in one clear error (exit 2), not a
hang: an address where nothing answers fails at once; a cluster lost while tasks run fails after
``--probe-timeout`` seconds without progress, and the process exits."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")

DRIVER = """
import sys, time
from npcompile.errors import NpcompileError
from npcompile.execution.ray_backend import RayBackend
try:
    backend = RayBackend(sys.argv[1], 1, timeout=float(sys.argv[2]))
    print("connected", flush=True)
    backend.map(time.sleep, [2.0] * 30)
    print("finished", flush=True)
except NpcompileError as e:
    print("error:", e, flush=True)
    sys.exit(2)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def test_an_address_where_no_cluster_answers_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    example = ROOT / "examples" / "lenet_mnist"
    r = subprocess.run([sys.executable, "-m", "npcompile", str(example / "model.onnx"), "--search", "binary",
                        "--tolerance", "1", "--eval", str(example / "eval.npz"),
                        "--ray", f"127.0.0.1:{_free_port()}", "-o", str(out)],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to the Ray cluster" in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


def test_a_cluster_lost_mid_run_is_a_clear_error() -> None:
    port = _free_port()
    short = tempfile.mkdtemp(prefix="npr-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", f"--temp-dir={short}"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        driver = None
        for _ in range(60):  # the head takes a few seconds to listen
            if _reachable(port):
                break
            time.sleep(1)
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, f"127.0.0.1:{port}", "5"], env=_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert driver.stdout is not None
        first = driver.stdout.readline()
        assert first.strip() == "connected", driver.stderr.read() if driver.stderr else ""
        time.sleep(1)
        os.killpg(head.pid, signal.SIGKILL)  # the whole cluster goes away while tasks run
        out, _ = driver.communicate(timeout=240)
        assert driver.returncode == 2, out
        assert "error:" in out and "finished no task within 5 s" in out and "finished\n" not in out
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        shutil.rmtree(short, ignore_errors=True)


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
