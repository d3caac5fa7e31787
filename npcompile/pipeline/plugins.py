"""Loading plugins named on the command line: ``module:Name``, ``module``, ``path/to/file.py`` or
``path/to/file.py:Name``. A Pass subclass is registered as a pass, a Target subclass as a target;
importing a module registers whatever its decorators register."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from npcompile.errors import UserError
from npcompile.pipeline import Pass, register_pass

__all__ = ["load_plugin"]


def _import_path(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"plugin file not found: {path}")
    name = f"npcompile_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_plugin(spec: str) -> list[str]:
    """Import a plugin; returns the names of the passes and targets it registered."""
    from npcompile.targets import Target, register_target

    if ".py" in spec:
        target, _, attr = spec.partition(".py")
        target, attr = target + ".py", attr.removeprefix(":")
    else:
        target, _, attr = spec.partition(":")
    try:
        module = _import_path(Path(target)) if target.endswith(".py") else importlib.import_module(target)
        objs = [getattr(module, attr)] if attr else [v for v in vars(module).values()
                                                      if isinstance(v, type) and v.__module__ == module.__name__]
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot load plugin {spec}: {type(e).__name__}: {e}".splitlines()[0]) from None
    names: list[str] = []
    for obj in objs:
        if isinstance(obj, type) and issubclass(obj, Pass) and obj is not Pass and obj.name:
            try:
                register_pass(obj)
            except ValueError as e:
                raise UserError(f"plugin {spec}: {e}") from None
            names.append(obj.name)
        elif isinstance(obj, type) and issubclass(obj, Target) and obj is not Target and obj.name:
            register_target(obj)
            names.append(obj.name)
        elif attr:
            raise UserError(f"plugin {spec} is neither an npcompile Pass nor a Target")
    return names
