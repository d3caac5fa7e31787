"""Runs that did nothing or destroyed the model while exiting 0: warnings for silent no-ops
(``--include`` matching no group, ``--min-channels`` above every width, ``--criterion maxout``
without maxout units) and a failure for an accuracy collapsed to chance level."""

from __future__ import annotations

from typing import Any

from npcompile.graph.names import matches
from npcompile.report.gates import GateResult

__all__ = ["collapse_gate", "noop_warnings"]


def _hits(patterns: list[str], names: list[str]) -> bool:
    return matches(names, patterns)


def noop_warnings(options: Any, report: dict[str, Any]) -> list[str]:
    """One sentence per option that had no effect."""
    out = []
    names = [g["name"] for g in report.get("groups", [])] + [row["name"] for row in report.get("layers", [])]
    for flag, patterns in (("--include", options.include), ("--exclude", options.exclude)):
        missed = [p for pat in patterns for p in pat.split(",") if p and not _hits([p], names)]
        if missed:
            out.append(f"{flag} {', '.join(missed)} matches no channel group or layer "
                       "(npcompile inspect MODEL --wide lists the names)")
    widths = [g["width_before"] for g in report.get("groups", []) if g["prunable"]]
    if widths and options.min_channels > 1 and options.min_channels >= max(widths):
        out.append(f"--min-channels {options.min_channels} is at or above every prunable width (largest "
                   f"{max(widths)}): nothing can be removed")
    if options.criterion == "maxout" and any(r.get("name") == "maxout" and str(r.get("summary", "")).startswith(
            "no prunable maxout units") for r in report.get("passes", [])):
        out.append("--criterion maxout: the model has no prunable maxout units; nothing was scored")
    return out


def collapse_gate(report: dict[str, Any], allowed: bool) -> GateResult | None:
    """A failed gate when accuracy fell to chance level (1/classes) from well above it; ``None``
    when accuracy was not measured, did not collapse, or ``allowed``."""
    acc = report.get("accuracy") or {}
    if allowed or acc.get("unit") != "%" or acc.get("before") is None:
        return None
    classes = acc.get("classes")
    if not classes:
        return None
    chance = 100.0 / classes
    if acc["before"] >= 2 * chance and acc["after"] <= 1.5 * chance:
        return GateResult("accuracy-collapse", chance, acc["after"], False,
                          f"accuracy collapsed to chance level: {acc['before']:.4g} % -> {acc['after']:.4g} % "
                          f"({classes} classes, chance {chance:.3g} %); prune less, or --allow-collapse")
    return None
