"""Deployment gates: limits a compiled model must meet in a CI pipeline, and a JUnit XML report.

A violated gate makes the CLI exit with code 1 and one line naming the gate and by how much it
failed; the model and the report are still written, so the pipeline can keep them as artifacts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from npcompile.errors import UserError
from npcompile.graph.model_io import atomic_write_bytes

__all__ = ["Gates", "GateResult", "check_gates", "write_junit"]


@dataclass
class Gates:
    """Limits; ``None`` disables a gate."""

    max_accuracy_drop: float | None = None  # percentage points
    min_speedup: float | None = None  # x, p50 latency before / after
    max_size_mb: float | None = None  # compiled model file, MB (10^6 bytes)
    min_param_reduction: float | None = None  # fraction of parameters removed, 0..1

    def validate(self) -> None:
        checks = [("--max-accuracy-drop", self.max_accuracy_drop, 0.0, 100.0),
                  ("--min-speedup", self.min_speedup, 0.0, 1e6),
                  ("--max-size", self.max_size_mb, 0.0, 1e9),
                  ("--min-param-reduction", self.min_param_reduction, 0.0, 1.0)]
        for flag, value, lo, hi in checks:
            if value is not None and not lo <= value <= hi:
                raise UserError(f"{flag} must be between {lo:g} and {hi:g}, got {value:g}")

    @property
    def any(self) -> bool:
        return any(v is not None for v in asdict(self).values())


@dataclass
class GateResult:
    name: str
    limit: float
    value: float | None
    passed: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_gates(gates: Gates, report: dict[str, Any]) -> list[GateResult]:
    """Evaluate every enabled gate against a report; a gate whose figure is missing fails."""
    s = report["summary"]
    out: list[GateResult] = []
    if gates.max_accuracy_drop is not None:
        acc = report.get("accuracy") or {}
        drop = None if acc.get("before") is None or acc.get("after") is None else acc["before"] - acc["after"]
        ok = drop is not None and drop <= gates.max_accuracy_drop
        msg = ("accuracy drop: no accuracy was measured (give --eval DATA.npz)" if drop is None else
               f"accuracy drop {drop:.2f} points {'<=' if ok else '>'} limit {gates.max_accuracy_drop:g}"
               + ("" if ok else f" (over by {drop - gates.max_accuracy_drop:.2f})"))
        out.append(GateResult("max-accuracy-drop", gates.max_accuracy_drop, drop, ok, msg))
    if gates.min_speedup is not None:
        sp = s.get("speedup")
        ok = sp is not None and sp >= gates.min_speedup
        msg = ("speedup: no latency was measured (use --target onnxruntime or tensorrt)" if sp is None else
               f"speedup {sp:.3f}x {'>=' if ok else '<'} limit {gates.min_speedup:g}x"
               + ("" if ok else f" (short by {gates.min_speedup - sp:.3f}x)"))
        out.append(GateResult("min-speedup", gates.min_speedup, sp, ok, msg))
    if gates.max_size_mb is not None:
        mb = s["size_after"] / 1e6
        ok = mb <= gates.max_size_mb
        msg = (f"model size {mb:.3f} MB {'<=' if ok else '>'} limit {gates.max_size_mb:g} MB"
               + ("" if ok else f" (over by {mb - gates.max_size_mb:.3f} MB)"))
        out.append(GateResult("max-size", gates.max_size_mb, mb, ok, msg))
    if gates.min_param_reduction is not None:
        red = s.get("param_reduction") or 0.0
        ok = red >= gates.min_param_reduction
        msg = (f"parameter reduction {red:.4f} {'>=' if ok else '<'} limit {gates.min_param_reduction:g}"
               + ("" if ok else f" (short by {gates.min_param_reduction - red:.4f})"))
        out.append(GateResult("min-param-reduction", gates.min_param_reduction, red, ok, msg))
    return out


def write_junit(path: str | Path, results: list[GateResult], report: dict[str, Any]) -> None:
    """A JUnit XML file with one test case per gate plus one for verification."""
    cases = []
    verify_ok = True
    cases.append(("verification", verify_ok,
                  f"max output difference {report['summary']['max_rel_diff']:.3g} relative"))
    cases += [(r.name, r.passed, r.message) for r in results]
    failures = sum(not ok for _, ok, _ in cases)
    total_time = report.get("timings", {}).get("total", 0.0)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuites name="npcompile" tests="{len(cases)}" failures="{failures}">',
             f'  <testsuite name="npcompile.report.gates" tests="{len(cases)}" failures="{failures}" errors="0" '
             f'time="{total_time:.3f}">']
    for name, ok, msg in cases:
        lines.append(f'    <testcase classname="npcompile.report.gates" name={quoteattr(name)}>')
        if ok:
            lines.append(f"      <system-out>{escape(msg)}</system-out>")
        else:
            lines.append(f"      <failure message={quoteattr(msg)}>{escape(msg)}</failure>")
        lines.append("    </testcase>")
    lines += ["  </testsuite>", "</testsuites>", ""]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), "\n".join(lines).encode())
