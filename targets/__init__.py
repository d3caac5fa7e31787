"""Deployment targets (installed as ``npcompile.targets``): onnx, onnxruntime, tensorrt, and plugins
from the entry-point group ``npcompile.targets``."""

from __future__ import annotations

import logging
from importlib import metadata

from npcompile.errors import UserError
from npcompile.pipeline.loading import import_class
from npcompile.targets.base import Artifact, BenchmarkOptions, LatencyStats, Target

__all__ = ["Target", "Artifact", "BenchmarkOptions", "LatencyStats", "get_target", "available_targets",
           "register_target"]

log = logging.getLogger(__name__)

_BUILTIN = {
    "onnx": "npcompile.targets.onnx_file:OnnxTarget",
    "onnxruntime": "npcompile.targets.ort:OnnxRuntimeTarget",
    "tensorrt": "npcompile.targets.tensorrt:TensorRTTarget",
}


_REGISTERED: dict[str, type[Target]] = {}


def register_target(cls: type[Target]) -> type[Target]:
    """Register a target class under its ``name`` (a plugin or a test does this)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTERED[cls.name] = cls
    return cls


def _load(spec: str) -> type[Target]:
    return import_class(spec, Target, "target")


def available_targets() -> dict[str, str]:
    """Target name -> ``module:Class`` for built-in and plugin targets."""
    out = dict(_BUILTIN)
    out.update({name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in _REGISTERED.items()})
    for ep in metadata.entry_points(group="npcompile.targets"):
        out.setdefault(ep.name, ep.value)
    return out


def get_target(name: str) -> type[Target]:
    """A target class by name (built-in or plugin) or by ``module:Class``."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    targets = available_targets()
    if name in targets:
        return _load(targets[name])
    if ":" in name:
        return _load(name)
    raise UserError(f"unknown target {name!r}; available: {', '.join(sorted(targets))}")
