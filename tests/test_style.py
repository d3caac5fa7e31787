"""The code base stays ruff-clean (run as part of the test suite, so CI checks it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    r = subprocess.run([ruff, "check", "npcompile", "passes", "targets", "tests", "benchmarks", "examples"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_subpackage_is_installed() -> None:
    """pyproject.toml lists the packages by hand: a new sub-package missing there would be left out
    of a (non-editable) install."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    mapped = (root / "npcompile" / "passes", root / "npcompile" / "targets")  # package-dir maps these
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "npcompile").rglob("__init__.py")
             if not any(p.is_relative_to(m) for m in mapped)}
    assert found - listed == set()
