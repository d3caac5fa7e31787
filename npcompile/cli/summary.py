"""The terminal summary of a compilation: what the run did (channels, non-zeros, sparsity, accuracy,
latency), why groups stayed whole, and every file written. Printed on success and on a failed gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npcompile.graph.names import matches, name_patterns
from npcompile.report.document import format_change as _change
from npcompile.report.document import format_number as _num

__all__ = ["kept_whole", "summary_lines", "print_summary"]


def kept_whole(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Prunable groups a ratio-style selection left at full width although it asked for channels
    (rounding up to ``round_to``, or ``--min-channels``): ``[{"group", "width"}]``."""
    if report.get("mode") not in ("ratio", "search", "budget"):
        return []
    opts = report.get("options") or {}
    ratio = opts.get("ratio")
    if report["mode"] == "ratio" and not ratio:
        return []
    inc, exc = opts.get("include") or [], opts.get("exclude") or []

    inc = [p for pat in inc for p in name_patterns(pat)]
    exc = [p for pat in exc for p in name_patterns(pat)]

    def chosen(name: str) -> bool:
        return (not inc or matches([name], inc)) and not (exc and matches([name], exc))

    out = []
    for g in report.get("groups", []):
        if not g["prunable"] or g["width_after"] != g["width_before"] or not chosen(g["name"]):
            continue
        if report["mode"] == "ratio" and round(ratio * g["width_before"]) < 1:
            continue  # the ratio itself asked for nothing in this group
        out.append({"group": g["name"], "width": g["width_before"]})
    return out


def _names(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def heads_line(blocks: list[dict[str, Any]], limit: int = 6) -> str:
    """Heads before -> after per attention block, in one line (``kv`` groups for grouped-query)."""
    def one(b: dict[str, Any]) -> str:
        kv = (f" (kv {b['kv_groups_before']}→{b['kv_groups_after']})" if "kv_groups_before" in b else "")
        return f"{b['block']} {b['heads_before']}→{b['heads_after']}{kv}"

    return _names([one(b) for b in blocks], limit) + f" · head_dim {blocks[0]['head_dim']}"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The lines printed under the summary table (plain text, one fact per line)."""
    s = report["summary"]
    lines = [f"groups: {s['groups_total']} ({s['groups_prunable']} prunable, {s['groups_frozen']} frozen, "
             f"{s['groups_pruned']} pruned, {s['channels_removed']} channels removed) · "
             f"round-to {report['rounding']['round_to']}"]
    whole = kept_whole(report)
    if whole and report["mode"] == "ratio":
        r = report["rounding"]
        names = _names([f"{w['group']} ({w['width']})" for w in whole])
        lines.append(f"kept whole by rounding to {r['round_to']} ({r['source']}): {names}; "
                     "a smaller --round-to prunes them")
    if report.get("attention"):
        lines.append("attention heads: " + heads_line(report["attention"]))
    if report.get("frozen"):
        lines.append("frozen (never pruned): " + _names([f"{f['group']} ({'; '.join(f['reasons'])})"
                                                          for f in report["frozen"]]))
    v = report.get("verification") or {}
    where = v.get("inputs") or "random probe inputs"
    lossy = report["mode"] not in ("lossless",) or report.get("finetune") or report.get("sparsity")
    diff = f"max output difference {s['max_rel_diff']:.3g} relative on {where}"
    if lossy and s["max_rel_diff"] > 1e-4:
        diff += " (expected: pruning changes the outputs" + ("; accuracy shows the effect)" if report.get(
            "accuracy") else "; give --eval DATA.npz to see the accuracy)")
    lines.append(diff)
    return lines


def _table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    s = report["summary"]
    table = Table(title=f"npcompile → {report['target']['name']} ({report['mode']})")
    for col in ("", "before", "after", "change"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("parameters", _num(s["params_before"]), _num(s["params_after"]), _change(s["param_reduction"]))
    nz_b, nz_a = s.get("nonzero_params_before"), s.get("nonzero_params_after")
    if nz_b is not None and nz_a is not None and (nz_a != s["params_after"] or nz_b != s["params_before"]):
        table.add_row("non-zero parameters", _num(nz_b), _num(nz_a), _change(s.get("nonzero_reduction")))
        if s["params_after"]:
            table.add_row("weight sparsity", "", f"{100 * (1 - nz_a / s['params_after']):.1f} %", "")
    table.add_row("FLOPs", _num(s["flops_before"]), _num(s["flops_after"]), _change(s["flops_reduction"]))
    table.add_row("size", f"{_num(s['size_before'])}B", f"{_num(s['size_after'])}B", "")
    acc = report.get("accuracy")
    if acc:
        unit = acc.get("unit") or ""
        table.add_row(f"{acc['metric']}{f' ({unit})' if unit else ''}", f"{acc['before']:.4g}",
                      f"{acc['after']:.4g}", f"{acc['after'] - acc['before']:+.2f}")
    lat = report.get("latency") or {}
    if lat and lat.get("speedup"):
        table.add_row("latency p50 (ms)", _p50(lat["before"]), _p50(lat["after"]), _speedup(lat))
    return table


def _p50(x: dict[str, Any]) -> str:
    """``0.412 (0.405-0.420)``: the median and its 95 % interval."""
    if x.get("p50_low_ms") is None:
        return f"{x['p50_ms']:.3f}"
    return f"{x['p50_ms']:.3f} ({x['p50_low_ms']:.3f}-{x['p50_high_ms']:.3f})"


def _speedup(lat: dict[str, Any]) -> str:
    if lat.get("speedup_low") is None:
        return f"{lat['speedup']:.2f}x"
    return f"{lat['speedup']:.2f}x ({lat['speedup_low']:.2f}-{lat['speedup_high']:.2f}x)"


def written_line(output: Path, files: dict[str, Path], junit: str | None = None) -> str:
    """``wrote OUT/model.onnx, report.json, ...`` naming every file this run wrote."""
    names = sorted(files, key=lambda n: (n != "model.onnx", n))
    text = f"wrote {output}/" + ", ".join(names) if names else f"wrote nothing to {output}"
    if junit:
        text += f"; JUnit {junit}"
    return text


def print_summary(console: Any, report: dict[str, Any], output: Path, files: dict[str, Path],
                  junit: str | None = None, failed: bool = False) -> None:
    """Print the table, the explanatory lines and the files written."""
    if any("only lossless passes ran" in n for n in report.get("notes", [])):
        console.print("no pruning option given: applied lossless passes only (dead-channel removal, cleanup)")
    console.print(_table(report))
    for line in summary_lines(report):
        console.print(line, soft_wrap=True)
    for g in report.get("gates") or []:
        status = "inconclusive" if g.get("status") == "inconclusive" else "pass" if g["passed"] else "FAIL"
        if g.get("status") == "inconclusive":
            status += f" ({'pass' if g['passed'] else 'FAIL'})"
        console.print(f"gate {g['name']}: {status}: {g['message']}", soft_wrap=True)
    console.print(written_line(output, files, junit) + (" (a gate failed)" if failed else ""), soft_wrap=True)
