"""Fleets: one recipe, many models (``npcompile batch``).

Each model is compiled by :func:`npcompile.api.compile` into its own folder under the output
directory, as one task of the backend (models compile in parallel on local workers or Ray; the
probes of one compilation then run in that worker). A model that fails (bad file, failed gate,
internal error) is recorded and the others go on. The index (``index.json``, ``index.md`` and
``junit.xml``) lists every model with its figures and gate results. Paths (models, data named by
the pipeline file, the output folder) must be readable and writable where the workers run: on a
Ray cluster of several machines, a shared file system.
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from npcompile.errors import GateError, NpcompileError
from npcompile.execution.backend import Backend, TaskFailure
from npcompile.graph.model_io import atomic_write_bytes

__all__ = ["FleetJob", "compile_job", "compile_fleet", "write_index", "folder_names", "INDEX_VERSION"]

log = logging.getLogger(__name__)

INDEX_VERSION = 1


@dataclass
class FleetJob:
    """One model of a fleet: where it is, where its outputs go, the compile options."""

    model: str
    output: str
    options: Any  # npcompile.api.CompileOptions
    style: str = "python"  # how error messages name options (npcompile.errors.STYLES)


def folder_names(models: Sequence[str]) -> list[str]:
    """One output folder name per model: the file's stem, made unique with ``-2``, ``-3``..."""
    seen: dict[str, int] = {}
    out = []
    for m in models:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(m).stem) or "model"
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        out.append(stem if n == 1 else f"{stem}-{n}")
    return out


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    s = report.get("summary", {})
    acc = report.get("accuracy") or {}
    lat = report.get("latency") or {}
    return {"param_reduction": s.get("param_reduction"), "flops_reduction": s.get("flops_reduction"),
            "size_before": s.get("size_before"), "size_after": s.get("size_after"),
            "channels_removed": s.get("channels_removed"), "max_rel_diff": s.get("max_rel_diff"),
            "accuracy_before": acc.get("before"), "accuracy_after": acc.get("after"), "metric": acc.get("metric"),
            "speedup": lat.get("speedup")}


def compile_job(job: FleetJob) -> dict[str, Any]:
    """Compile one model (runs on a worker); never raises for the model's own failures."""
    from npcompile.api import compile

    t0 = time.perf_counter()
    entry: dict[str, Any] = {"model": job.model, "output": job.output}
    try:
        result = compile(job.model, job.output, replace(job.options))
        entry.update(status="passed", exit_code=0, message="", figures=_figures(result.report),
                     gates=result.report.get("gates", []))
    except GateError as e:
        report = _read_report(job.output)
        entry.update(status="failed", exit_code=1, message=" ".join(e.render(job.style).split()),
                     figures=_figures(report), gates=report.get("gates", []))
    except NpcompileError as e:
        entry.update(status="error", exit_code=e.exit_code, message=" ".join(e.render(job.style).split()),
                     figures={}, gates=[])
    except Exception as e:  # an internal error in one model does not stop the fleet
        entry.update(status="error", exit_code=3, message=f"internal error: {type(e).__name__}: {e}",
                     traceback=traceback.format_exc(), figures={}, gates=[])
    entry["seconds"] = time.perf_counter() - t0
    return entry


def _read_report(folder: str) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / "report.json").read_text())
    except (OSError, ValueError):
        return {}


def compile_fleet(models: Sequence[str], outdir: str | Path, options: Any, backend: Backend,
                  on_done: Callable[[dict[str, Any]], None] | None = None, style: str = "python") -> dict[str, Any]:
    """Compile every model with ``options`` on ``backend``; returns the index (also written to
    ``outdir``). ``on_done`` is called with each model's entry, in model order; ``style``: how the
    entries' messages name options (``"cli"``: by flag)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    inner = replace(options, workers=0, ray=None, junit=None)  # a model's probes run in its worker
    jobs = [FleetJob(str(m), str(outdir / name), inner, style)
            for m, name in zip(models, folder_names(models), strict=True)]
    t0 = time.perf_counter()
    results = backend.map(compile_job, jobs, return_exceptions=True)
    entries = []
    for job, res in zip(jobs, results, strict=True):
        if isinstance(res, TaskFailure):  # the worker itself was lost, even after retries
            res = {"model": job.model, "output": job.output, "status": "error", "exit_code": 3,
                   "message": f"worker lost: {res}", "figures": {}, "gates": [], "seconds": 0.0}
        res["folder"] = Path(job.output).name
        entries.append(res)
        if on_done is not None:
            on_done(res)
    counts = {k: sum(e["status"] == k for e in entries) for k in ("passed", "failed", "error")}
    index = {"version": INDEX_VERSION, "models": entries, "counts": counts, "total": len(entries),
             "seconds": time.perf_counter() - t0, "backend": backend.describe(),
             "pipeline": options.pipeline, "target": options.target}
    write_index(index, outdir)
    return index


def _pct(v: Any) -> str:
    return f"{100 * v:.1f} %" if isinstance(v, (int, float)) else ""


def _num(v: Any, fmt: str = "{:.4g}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) else ""


def render_index_markdown(index: dict[str, Any]) -> str:
    """The index as Markdown: one row per model."""
    c = index["counts"]
    lines = [f"# npcompile batch: {index['total']} models", "",
             f"{c['passed']} passed, {c['failed']} failed a gate, {c['error']} errors · "
             f"{index['seconds']:.1f} s on {index['backend']['name']} ({index['backend']['workers']} worker(s))", "",
             "| model | status | params removed | FLOPs removed | size after | metric before | metric after "
             "| speedup | gates | message |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for e in index["models"]:
        f = e.get("figures") or {}
        gates = ", ".join(f"{g['name']} {'ok' if g['passed'] else 'FAILED'}" for g in e.get("gates") or [])
        msg = e.get("message", "").replace("|", "\\|")
        lines.append(f"| [{e['folder']}]({e['folder']}/report.md) | {e['status']} | {_pct(f.get('param_reduction'))} "
                     f"| {_pct(f.get('flops_reduction'))} | {_num(f.get('size_after'), '{:,}')} "
                     f"| {_num(f.get('accuracy_before'))} | {_num(f.get('accuracy_after'))} "
                     f"| {_num(f.get('speedup'), '{:.2f}x')} | {gates} | {msg} |")
    return "\n".join(lines) + "\n"


def render_index_junit(index: dict[str, Any]) -> str:
    """The index as JUnit XML: a test case per model (failure: a gate; error: the model failed)."""
    c = index["counts"]
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuites name="npcompile batch" tests="{index["total"]}" failures="{c["failed"]}" '
             f'errors="{c["error"]}">',
             f'  <testsuite name="npcompile.batch" tests="{index["total"]}" failures="{c["failed"]}" '
             f'errors="{c["error"]}" time="{index["seconds"]:.3f}">']
    for e in index["models"]:
        lines.append(f'    <testcase classname="npcompile.batch" name={quoteattr(e["folder"])} '
                     f'time="{e.get("seconds", 0.0):.3f}">')
        msg = e.get("message", "")
        if e["status"] == "failed":
            lines.append(f"      <failure message={quoteattr(msg)}>{escape(msg)}</failure>")
        elif e["status"] == "error":
            lines.append(f"      <error message={quoteattr(msg)}>{escape(e.get('traceback', msg))}</error>")
        else:
            lines.append(f"      <system-out>{escape(json.dumps(e.get('figures', {})))}</system-out>")
        lines.append("    </testcase>")
    lines += ["  </testsuite>", "</testsuites>", ""]
    return "\n".join(lines)


def write_index(index: dict[str, Any], outdir: str | Path) -> None:
    """``index.json``, ``index.md`` and ``junit.xml`` in ``outdir``."""
    outdir = Path(outdir)
    atomic_write_bytes(outdir / "index.json", json.dumps(index, indent=2).encode())
    atomic_write_bytes(outdir / "index.md", render_index_markdown(index).encode())
    atomic_write_bytes(outdir / "junit.xml", render_index_junit(index).encode())
