"""Checks made before a compilation starts, so that a run which cannot succeed fails at once
(exit 2, one line) instead of after minutes of work: gates that need data or a timing target,
the JUnit path, sparsity patterns no target accelerates."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from npcompile.errors import OPT, OptionError

__all__ = ["preflight", "target_measures"]

log = logging.getLogger(__name__)

#: N:M patterns some target runs faster (TensorRT's sparse tensor cores)
ACCELERATED_PATTERNS = {(2, 4): "tensorrt"}


def target_measures(target: Any) -> bool:
    """Whether the target measures latency (overrides :meth:`Target.benchmark`)."""
    from npcompile.targets import Target

    return type(target).benchmark is not Target.benchmark


def preflight(options: Any, target: Any) -> None:
    """Raise :class:`UserError` for a run that cannot pass; log warnings for what is legal but
    likely not meant."""
    gates = options.gates
    has_eval = options.eval is not None or ":" in options.evaluator
    if gates.max_accuracy_drop is not None and not has_eval:
        raise OptionError(f"{OPT:max_accuracy_drop} needs evaluation data: give {OPT:eval} DATA.npz (or "
                          f"{OPT:evaluator} module:function)")
    if gates.min_speedup is not None and (not options.benchmark or not target_measures(target)):
        raise OptionError(f"{OPT:min_speedup} needs a measured latency: target {options.target} measures none "
                          f"(use {OPT:target} onnxruntime or tensorrt, with {OPT:benchmark})")
    if options.junit:
        junit = Path(options.junit)
        if junit.is_dir():
            raise OptionError(f"{OPT:junit} names a directory: {junit} (give a file path, e.g. {junit}/gates.xml)")
        parent = junit.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise OptionError(f"{OPT:junit} {junit}: {parent} is not a directory")
    nm = options.nm_pattern
    if nm is not None:
        accel = ACCELERATED_PATTERNS.get(nm)
        if accel is None:
            log.warning("sparsity %d:%d is applied to the weights, but no target runs it faster (only 2:4, on "
                        "TensorRT); the gain is in compressed size only", *nm)
        elif accel != options.target:
            log.warning("sparsity %d:%d runs faster only on target %s; on %s the gain is in compressed size "
                        "only", nm[0], nm[1], accel, options.target)
