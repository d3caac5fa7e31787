"""The README's commands stay true: its npcompile command runs as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_main_command_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.+?)\n```", text, re.S).group(1)
    assert "pip install -e ." in first
    npc = first[first.index("npcompile "):]
    args = shlex.split(npc)[1:]
    out = args.index("-o")
    args[out + 1] = str(tmp_path / "out")
    r = subprocess.run([sys.executable, "-m", "npcompile", *args, "--runs", "5"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.onnx").is_file()
    assert (tmp_path / "out" / "report.md").read_text().startswith("# npcompile report")


def test_readme_test_command_is_ci_command() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.+?)\n```", text, re.S)
    test_cmd = blocks[1].split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci
    assert "torch==2.13.0" in blocks[1] and "torch==2.13.0" in ci
