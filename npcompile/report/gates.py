"""Deployment gates: limits a compiled model must meet in a CI pipeline, and a JUnit XML report.

A violated gate makes the CLI exit with code 1 and one line naming the gate and by how much it
failed; the model and the report are still written, so the pipeline can keep them as artifacts.

Latency gates compare with the measurement's 95 % interval: ``--min-speedup X`` passes when the
interval's lower bound is at least X, fails when its upper bound is below X, and is *inconclusive*
otherwise; an inconclusive gate fails (exit 1) unless ``inconclusive="pass"`` (``--inconclusive
pass``). ``--target-latency F`` fails when even the lower bound of the measured latency fraction is
above F (missed beyond the measurement's uncertainty).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from npcompile.errors import OPT, OptionError
from npcompile.graph.model_io import atomic_write_bytes

__all__ = ["Gates", "GateResult", "check_gates", "write_junit"]


@dataclass
class Gates:
    """Limits; ``None`` disables a gate."""

    max_accuracy_drop: float | None = None  # percentage points
    min_speedup: float | None = None  # x, p50 latency before / after
    max_size_mb: float | None = None  # compiled model file, MB (10^6 bytes)
    min_param_reduction: float | None = None  # fraction of parameters removed, 0..1
    inconclusive: str = "fail"  # what a latency gate whose interval contains the limit counts as

    def validate(self) -> None:
        if self.inconclusive not in ("fail", "pass"):
            raise OptionError(f"{OPT:inconclusive} must be fail or pass, got {self.inconclusive!r}")
        checks = [(f"{OPT:max_accuracy_drop}", self.max_accuracy_drop, 0.0, 100.0),
                  (f"{OPT:min_speedup}", self.min_speedup, 0.0, 1e6),
                  (f"{OPT:max_size_mb=max_size}", self.max_size_mb, 0.0, 1e9),
                  (f"{OPT:min_param_reduction}", self.min_param_reduction, 0.0, 1.0)]
        for name, value, lo, hi in checks:
            if value is not None and not lo <= value <= hi:
                raise OptionError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")

    @property
    def any(self) -> bool:
        return any(v is not None for k, v in asdict(self).items() if k != "inconclusive")


@dataclass
class GateResult:
    name: str
    limit: float
    value: float | None
    passed: bool
    message: str
    status: str = ""  # pass, fail or inconclusive (then ``passed`` follows ``Gates.inconclusive``)

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "pass" if self.passed else "fail"

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
        out.append(_speedup_gate(gates, s))
    lat_gate = target_latency_gate(report)
    if lat_gate is not None:
        out.append(lat_gate)
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


def _speedup_gate(gates: Gates, s: dict[str, Any]) -> GateResult:
    limit = gates.min_speedup
    sp = s.get("speedup")
    if sp is None:
        return GateResult("min-speedup", limit, None, False,
                          "speedup: no latency was measured (use --target onnxruntime or tensorrt)")
    lo, hi = s.get("speedup_low") or sp, s.get("speedup_high") or sp
    shown = f"speedup {sp:.3f}x ({lo:.3f}-{hi:.3f}x)"
    if lo >= limit:
        return GateResult("min-speedup", limit, sp, True, f"{shown} >= limit {limit:g}x")
    if hi < limit:
        return GateResult("min-speedup", limit, sp, False,
                          f"{shown} < limit {limit:g}x (short by {limit - sp:.3f}x)")
    ok = gates.inconclusive == "pass"
    return GateResult("min-speedup", limit, sp, ok,
                      f"{shown} is inconclusive against limit {limit:g}x: the interval contains it "
                      f"(counted as {'passed' if ok else 'failed'}, --inconclusive {'fail' if ok else 'pass'} "
                      "changes that; an idle machine or a longer --latency-max-seconds narrows it)", "inconclusive")


def latency_fraction(report: dict[str, Any]) -> dict[str, float] | None:
    """The compiled model's latency as a fraction of the original's, with its interval: from the
    final measurement (``latency``), else from the latency budget's own check."""
    lat = report.get("latency") or {}
    if lat.get("speedup"):
        sp, lo, hi = lat["speedup"], lat.get("speedup_low") or lat["speedup"], lat.get("speedup_high") or lat["speedup"]
        return {"fraction": 1.0 / sp, "low": 1.0 / hi, "high": 1.0 / lo, "source": "final measurement"}
    checked = (report.get("latency-budget") or {}).get("verified")
    if checked:
        return {**checked, "source": "latency budget check"}
    return None


def target_latency_gate(report: dict[str, Any]) -> GateResult | None:
    """``--target-latency F``: fails when the measured latency fraction's lower bound is above F."""
    target = (report.get("options") or {}).get("target_latency")
    if target is None:
        return None
    f = latency_fraction(report)
    if f is None:
        return GateResult("target-latency", target, None, False, "target latency: no latency was measured")
    pm = f["fraction"] - f["low"]  # the uncertainty on the side that decides a miss
    shown = f"measured {f['fraction']:.2f} of baseline latency, target {target:.2f}"
    if f["fraction"] <= target:
        return GateResult("target-latency", target, f["fraction"], True,
                          f"{shown} (interval {f['low']:.2f}-{f['high']:.2f}): met")
    if f["low"] <= target:
        return GateResult("target-latency", target, f["fraction"], True,
                          f"{shown}: over by {f['fraction'] - target:.2f} ± {pm:.2f}, within the measurement's "
                          "uncertainty", "inconclusive")
    return GateResult("target-latency", target, f["fraction"], False,
                      f"{shown}, missed by {f['fraction'] - target:.2f} ± {pm:.2f}")


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
