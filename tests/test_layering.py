"""The layers stay apart: passes are thin adapters over the library, and the library never reaches up.

- No module under ``passes/`` (installed as ``npcompile.passes``) imports another pass module:
  what passes share lives in the library (``npcompile.importance``, ``npcompile.search.levels``,
  ``npcompile.graph.weights``, ``npcompile.runtime``). ``passes/__init__.py`` is the exception: it
  imports every pass module to register them.
- No library module under ``npcompile/`` imports a pass module; ``npcompile/api.py`` in particular
  takes ``parse_sparsity`` and ``ort_runner`` from the library.

Imports are read with :mod:`ast`, so imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PASSES = ROOT / "passes"
LIBRARY = ROOT / "npcompile"
PACKAGE = "npcompile.passes"


def _is_passes(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def pass_imports(path: Path, in_passes: bool) -> list[str]:
    """``line: module`` for every import of ``npcompile.passes`` (or one of its modules) in ``path``;
    with ``in_passes``, relative imports (which resolve inside ``npcompile.passes``) count too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if in_passes:
                    names = ["." * node.level + (node.module or "")]
            elif node.module in ("npcompile", PACKAGE):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif node.module:
                names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                names = [node.args[0].value]
        for name in names:
            if name.startswith(".") or (_is_passes(name) and (in_passes or name != PACKAGE)):
                found.append((node.lineno, name))
    return [f"{line}: {name}" for line, name in sorted(found)]


def _pass_modules() -> list[Path]:
    return sorted(p for p in PASSES.glob("*.py") if p.name != "__init__.py")


def _library_modules() -> list[Path]:
    # npcompile/passes and npcompile/targets may be links to the top-level folders in a checkout
    skip = {LIBRARY / "passes", LIBRARY / "targets"}
    return sorted(p for p in LIBRARY.rglob("*.py") if not any(s in p.parents for s in skip))


def test_there_are_modules_to_check() -> None:
    assert len(_pass_modules()) >= 10
    assert LIBRARY / "api.py" in _library_modules()


@pytest.mark.parametrize("path", _pass_modules(), ids=lambda p: p.name)
def test_passes_do_not_import_each_other(path: Path) -> None:
    found = pass_imports(path, in_passes=True)
    assert not found, f"passes/{path.name} imports pass modules (move the shared code into the library): {found}"


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(LIBRARY)))
def test_library_does_not_import_passes(path: Path) -> None:
    # the pipeline imports the package npcompile.passes by name to register the built-ins; that is allowed
    found = pass_imports(path, in_passes=False)
    assert not found, f"npcompile/{path.relative_to(LIBRARY)} imports pass modules: {found}"


def test_api_takes_sparsity_and_latency_helpers_from_the_library() -> None:
    found = pass_imports(LIBRARY / "api.py", in_passes=False)
    assert not [f for f in found if f.endswith((".sparsity", ".latency"))]
    text = (LIBRARY / "api.py").read_text(encoding="utf-8")
    assert "npcompile.passes.sparsity" not in text and "npcompile.passes.latency" not in text


def test_the_checker_sees_pass_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import npcompile.passes.search as s\n"
                   "from npcompile.passes.magnitude import group_magnitude\n"
                   "from npcompile import passes\n"
                   "from .activation import tensor_rank\n"
                   "import importlib\n"
                   "def f():\n"
                   "    from npcompile.passes import latency\n"
                   "    importlib.import_module('npcompile.passes.sparsity')\n"
                   "    importlib.import_module('npcompile.passes')\n"
                   "from npcompile.importance.magnitude import group_magnitude as g\n", encoding="utf-8")
    assert [f.split(": ")[1] for f in pass_imports(src, in_passes=True)] == [
        "npcompile.passes.search", "npcompile.passes.magnitude", "npcompile.passes", ".activation",
        "npcompile.passes.latency", "npcompile.passes.sparsity", "npcompile.passes"]
    # outside passes/, importing the package itself (to register the built-ins) is allowed
    assert [f.split(": ")[1] for f in pass_imports(src, in_passes=False)] == [
        "npcompile.passes.search", "npcompile.passes.magnitude", "npcompile.passes.latency",
        "npcompile.passes.sparsity"]
