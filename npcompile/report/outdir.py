"""Output folder semantics: a folder holds exactly one run's files.

A run writes everything into a staging folder inside the output folder, then renames each file
into place. Files that an earlier run wrote there and this run does not write (``OUTPUT_FILES``:
``report.html`` of an earlier ``--html`` run, ``model.ort.onnx`` of an earlier ``onnxruntime``
run, plots...) are removed, so the folder never mixes two runs. Files npcompile never writes are
left alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["OUTPUT_FILES", "publish"]

log = logging.getLogger(__name__)

#: every file name a compilation may write into its output folder
OUTPUT_FILES = ("model.onnx", "model.onnx.data", "model.ort.onnx", "model.engine", "report.json", "report.md",
                "report.html", "widths.png", "latency.png", "sensitivity.png",
                "latency_model.png")


def publish(staging: Path, outdir: Path) -> dict[str, Path]:
    """Move every file of ``staging`` into ``outdir`` and remove the earlier run's files that this
    run did not write; returns the files now in place, by name."""
    written = {p.name for p in staging.iterdir()}
    stale = [outdir / n for n in OUTPUT_FILES if n not in written and (outdir / n).is_file()]
    files: dict[str, Path] = {}
    for path in sorted(staging.iterdir()):
        os.replace(path, outdir / path.name)
        files[path.name] = outdir / path.name
    for path in stale:
        path.unlink()
        log.info("removed %s of an earlier run", path)
    return files
