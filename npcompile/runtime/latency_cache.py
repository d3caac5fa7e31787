"""The on-disk cache of latency models: one JSON file per key.

The key is a hash of what changes the measured latencies: the model's bytes, the target, the
session options (provider, intra-op threads), the input shapes (batch size), the measurement grid,
and the machine (CPU model, cores this process may use, ONNX Runtime version). Options that do not
change latency (pruning ratio, criterion, output folder, evaluation data, seeds) are not in it.
The folder is ``$NPCOMPILE_CACHE_DIR/latency`` or ``~/.cache/npcompile/latency`` unless given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from npcompile.graph.model_io import atomic_write_bytes

__all__ = ["cache_dir", "cache_key", "machine_fingerprint", "load_cached", "store"]

log = logging.getLogger(__name__)


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder latency models are cached in."""
    if override:
        return Path(override)
    root = os.environ.get("NPCOMPILE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "npcompile")
    return Path(root) / "latency"


def machine_fingerprint() -> dict[str, Any]:
    """CPU model, cores this process may use, machine type and ONNX Runtime version."""
    import onnxruntime as ort

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"cpu": cpu, "cores": cores, "machine": platform.machine(), "onnxruntime": ort.__version__}


def cache_key(model_bytes: bytes, target: str, options: dict[str, Any], input_shapes: dict[str, Any],
              machine: dict[str, Any] | None = None) -> str:
    """Hex digest naming the latency model of this model, target, session options, shapes and machine."""
    doc = {"model": hashlib.sha256(model_bytes).hexdigest(), "target": target, "options": options,
           "shapes": {k: list(v) for k, v in sorted(input_shapes.items())},
           "machine": machine if machine is not None else machine_fingerprint()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def load_cached(folder: Path, key: str) -> dict[str, Any] | None:
    """The cached table for ``key``, or ``None`` (a damaged file counts as missing)."""
    path = folder / f"{key[:40]}.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("latency cache: ignoring unreadable %s (%s)", path, e)
        return None
    return data if data.get("key") == key else None


def store(folder: Path, key: str, data: dict[str, Any]) -> Path | None:
    """Write the table; a cache that cannot be written is only logged."""
    path = folder / f"{key[:40]}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps({**data, "key": key}).encode())
    except OSError as e:
        log.warning("latency cache: could not write %s (%s)", path, e)
        return None
    return path
