"""The compile report: a versioned JSON document (for CI) and a Markdown summary (for people)."""

from __future__ import annotations

from typing import Any

from npcompile import __version__
from npcompile.graph.stats import ModelStats

__all__ = ["REPORT_SCHEMA", "REPORT_VERSION", "build_report", "render_markdown", "format_change", "format_number"]

REPORT_SCHEMA = "npcompile.report.document"
REPORT_VERSION = 1


def _ratio(before: float, after: float) -> float | None:
    return None if not before else 1.0 - after / before


def _layers(before: ModelStats, after: ModelStats) -> list[dict[str, Any]]:
    after_by_name = {layer.name: layer for layer in after.layers}
    rows = []
    for b in before.layers:
        a = after_by_name.get(b.name)
        rows.append({
            "name": b.name, "op": b.op,
            "in_before": b.in_channels, "in_after": a.in_channels if a else 0,
            "out_before": b.out_channels, "out_after": a.out_channels if a else 0,
            "params_before": b.params, "params_after": a.params if a else 0,
            "flops_before": b.flops, "flops_after": a.flops if a else 0,
        })
    return rows


def build_report(*, options: Any, round_to: int, default_round_to: int, target: Any,
                 groups_before: list[tuple], removed: dict[str, list[int]], stats_before: ModelStats,
                 stats_after: ModelStats, verification: Any, records: list[dict[str, Any]],
                 latency: dict[str, Any], sizes: dict[str, int], timings: dict[str, float],
                 artifact_info: dict[str, Any], notes: list[str], pipeline: list[Any] | None = None
                 ) -> dict[str, Any]:
    """Assemble the report document (see ``docs`` in the README for the fields)."""
    mode = options.mode
    groups = []
    for _gid, name, op, size, frozen, dead in groups_before:
        gone = len(removed.get(name, []))
        groups.append({"name": name, "op": op, "width_before": size, "width_after": size - gone,
                       "prunable": not frozen and size > 1, "frozen": frozen, "dead": dead})
    frozen = [{"group": g["name"], "reasons": g["frozen"]} for g in groups if g["frozen"]]
    channels_removed = sum(len(v) for v in removed.values())
    if options.round_to is not None:
        rounding_source = "user (--round-to)"
    elif getattr(options, "target_latency", None) is not None and mode == "budget":
        rounding_source = "steps of the latency curve measured on ONNX Runtime"
    elif mode in ("ratio", "search", "budget"):
        rounding_source = f"default of target {target.name}"
    else:
        rounding_source = "none (threshold and lossless modes keep exact selections)"
    lanes = max(int(target.default_round_to()), 1)
    width_flags = [{"group": g["name"], "width": g["width_after"], "multiple_of": lanes,
                    "note": f"width {g['width_after']} is not a multiple of {lanes}, the width {target.name}'s "
                            "kernels work in: part of the FLOPs saved may not turn into speed"}
                   for g in groups if lanes > 1 and g["width_after"] != g["width_before"]
                   and "latency curve" not in rounding_source
                   and g["width_after"] % lanes]
    nm = getattr(options, "nm_pattern", None)
    if nm is not None and mode not in ("lossless", "sparsity"):
        rounding_source += f", made a multiple of {nm[1]} for the {nm[0]}:{nm[1]} sparsity pattern"
    speedup = latency.get("speedup") if latency else None
    flops_red = _ratio(stats_before.flops, stats_after.flops)
    summary = {
        "params_before": stats_before.params, "params_after": stats_after.params,
        "param_reduction": _ratio(stats_before.params, stats_after.params),
        "nonzero_params_before": stats_before.nonzero_params,
        "nonzero_params_after": stats_after.nonzero_params,
        "nonzero_reduction": _ratio(stats_before.nonzero_params, stats_after.nonzero_params),
        "flops_before": stats_before.flops, "flops_after": stats_after.flops, "flops_reduction": flops_red,
        "size_before": sizes["before"], "size_after": sizes["after"],
        "max_abs_diff": verification.max_abs_diff, "max_rel_diff": verification.max_rel_diff,
        "speedup": speedup,
        "speedup_low": latency.get("speedup_low") if latency else None,
        "speedup_high": latency.get("speedup_high") if latency else None,
        "latency_reduction": (1.0 - 1.0 / speedup) if speedup else None,
        "latency_vs_flops": ((1.0 - 1.0 / speedup) / flops_red) if speedup and flops_red else None,
        "groups_total": len(groups), "groups_prunable": sum(g["prunable"] for g in groups),
        "groups_frozen": len(frozen), "groups_pruned": sum(1 for v in removed.values() if v),
        "channels_removed": channels_removed,
    }
    opts = {k: v for k, v in vars(options).items() if k not in ("input_shapes", "gates")}
    opts["input_shapes"] = {k: list(v) for k, v in options.input_shapes.items()}
    opts["gates"] = {k: v for k, v in vars(options.gates).items() if v is not None}
    return {
        "schema": REPORT_SCHEMA, "version": REPORT_VERSION, "npcompile": __version__,
        "mode": mode, "criterion": None if mode == "lossless" else options.criterion,
        "options": opts,
        "rounding": {"round_to": round_to, "target_default": default_round_to, "source": rounding_source},
        "target": {"name": target.name, "info": artifact_info},
        "summary": summary,
        "verification": verification.as_dict(),
        "latency": latency,
        "layers": _layers(stats_before, stats_after),
        "groups": groups,
        "frozen": frozen,
        "width_flags": width_flags,
        "plan": {k: v for k, v in sorted(removed.items()) if v},
        "pipeline": [{"name": p.name, "options": _plain(p.options)} for p in (pipeline or [])],
        "passes": records,
        "timings": timings,
        "notes": notes + ([] if mode != "lossless" or getattr(options, "train", None) else
                          ["no pruning option given: only lossless passes ran (dead-channel removal, "
                           "cleanup)"]),
    }


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool, list, type(None))) else repr(v) for k, v in options.items()}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def format_change(reduction: float | None) -> str:
    """A reduction (0.3: 30 % less) as a signed change: ``-30.0 %``."""
    return "n/a" if reduction is None else f"{-100 * reduction:+.1f} %"


def format_number(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:g}"


_change, _num = format_change, format_number  # the short names the report code uses


def _quantization_lines(q: Any) -> list[str]:
    """The quantization section (see :mod:`npcompile.passes.quantize`)."""
    if not isinstance(q, dict) or not q.get("nodes"):
        return []
    size, nodes = q["size"], q["nodes"]
    lines = ["## Quantization", "", f"{q['description']}.", "",
             f"Model {_num(size['before'])}B → {_num(size['after'])}B ({size['ratio']:.3f}x); weights "
             f"{_num(size['weights_before'])}B → {_num(size['weights_after'])}B. Nodes: {nodes['quantized']} "
             f"quantized, {nodes['float']} in float.", ""]
    cal = q.get("calibration")
    if cal:
        lines += [f"Calibration: {cal['method']} on {cal['samples']} samples ({cal['batches']} batches of "
                  f"{cal['batch_size']}) from {cal['source'] or 'the calibration data'}.", ""]
    for row in (q.get("fidelity") or {}).get("outputs", []):
        agree = f", top-1 agreement {100 * row['top1_agreement']:.1f} %" if row.get("top1_agreement") is not None \
            else ""
        rel = f"relative L2 error {row['rel_l2']:.3g}" if row.get("rel_l2") is not None else "no error figure"
        lines.append(f"- against the float model on {q['fidelity']['source']}: output `{row['name']}` {rel}{agree}")
    lines += [f"- left in float ({count}): {reason}" for reason, count in nodes.get("reasons", {}).items()]
    return lines + [""]


def _sensitivity_lines(sens: Any, images: list[str] | tuple[str, ...]) -> list[str]:
    """The per-layer sensitivity table (metric after removing each fraction of one group) and plot."""
    if not isinstance(sens, dict) or not sens.get("table"):
        return []
    rows = sens["table"]
    rows = [{"group": k, "points": v} for k, v in rows.items()] if isinstance(rows, dict) else rows
    fracs = sens.get("fractions") or [p["fraction"] for p in rows[0]["points"]]
    lines = ["## Sensitivity", "", f"Metric after removing a fraction of one group's channels (baseline "
             f"{sens.get('baseline', 'n/a')}).", "",
             "| group | width | " + " | ".join(f"{f:g}" for f in fracs) + " |",
             "|---|---:|" + "---:|" * len(fracs)]
    for r in rows:
        by = {p["fraction"]: p["metric"] for p in r["points"]}
        cells = " | ".join(f"{by[f]:.4g}" if f in by else "" for f in fracs)
        lines.append(f"| {r['group']} | {r.get('width', '')} | {cells} |")
    lines.append("")
    if "sensitivity.png" in images:
        lines += ["![sensitivity curves](sensitivity.png)", ""]
    return lines


def _latency_model_lines(report: dict[str, Any], images: list[str] | tuple[str, ...]) -> list[str]:
    """The latency budget's checks and the latency model's table (predicted ms per width)."""
    lb, lm = report.get("latency-budget"), report.get("latency-model")
    if not isinstance(lm, dict) or not lm.get("curves"):
        return []
    engine = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT engines"}.get(lm.get("engine", "onnxruntime"),
                                                                                  lm.get("engine"))
    lines = ["## Latency model", "",
             f"Measured on {engine} (batch {lm.get('batch')}, step {lm.get('step')}): {lm.get('layers')} layers, "
             f"{lm.get('timed_subgraphs', 0)} isolated subgraphs timed in {lm.get('build_s', 0):.1f} s"
             f"{' (reused from the cache)' if lm.get('reused') else ''}; whole model {lm['t_full_ms']:.3f} ms, "
             f"calibration factor {lm['kappa']:.2f}. Cache: `{lm.get('cache')}`.", ""]
    if isinstance(lb, dict) and lb.get("attempts"):
        lines += ["| check | goal | predicted | measured (95 % interval) |", "|---:|---:|---:|---:|"]
        for i, a in enumerate(lb["attempts"], 1):
            lines.append(f"| {i} | {a['goal']:.3f} | {a['predicted']:.3f} | {a['measured']:.3f} "
                         f"({a['low']:.3f}-{a['high']:.3f}) |")
        lines.append("")
    if lm.get("shares"):
        lines += ["Where the time goes: each layer's calibrated time against its share of the FLOPs "
                  "(latency/FLOPs above 1: slower than its FLOPs say; the remainder does not shrink with any "
                  "width).", "", "| layer | ms | latency | FLOPs | latency/FLOPs |", "|---|---:|---:|---:|---:|"]
        for r in lm["shares"]:
            ratio = f"{r['latency'] / r['flops']:.2f}" if r["flops"] > 0 else "n/a"
            lines.append(f"| {r['layer'] or '(remainder: other ops, overhead)'} | {r['ms']:.4g} | "
                         f"{r['latency']:.1%} | {r['flops']:.1%} | {ratio} |")
        lines.append("")
        excess = lm["shares"][-1].get("excess_ms") or 0.0
        if excess > 0:
            lines += [f"The calibrated layers add up to {excess:.4g} ms more than the whole model (fused ops, the "
                      "per-call overhead taken off each): the shares are of their sum.", ""]
    lines += ["| group | width | widths: predicted model ms (steps in bold) |", "|---|---:|---|"]
    for c in lm["curves"]:
        cells = ", ".join(f"**{w}**: {ms:.4g}" if w in c["steps"] else f"{w}: {ms:.4g}"
                          for w, ms in zip(c["widths"], c["ms"], strict=True))
        lines.append(f"| {c['group']} | {c['width']} | {cells} |")
    lines.append("")
    if "latency_model.png" in images:
        lines += ["![latency vs width per group](latency_model.png)", ""]
    return lines


def render_markdown(report: dict[str, Any], images: list[str] | tuple[str, ...] = ()) -> str:
    """A human-readable summary of a report document; ``images`` names plot files beside it."""
    s = report["summary"]
    lines = [f"# npcompile report ({report['mode']})", ""]
    if any("only lossless passes ran" in n for n in report.get("notes", [])):
        lines += ["No pruning option was given: only lossless passes ran (dead-channel removal, cleanup).", ""]
    r = report["rounding"]
    lines += [
        f"Target: **{report['target']['name']}** · criterion: {report['criterion'] or '-'} · "
        f"round-to: {r['round_to']} ({r['source']})", "",
        "| | before | after | change |", "|---|---:|---:|---:|",
        f"| parameters | {_num(s['params_before'])} | {_num(s['params_after'])} | "
        f"{_change(s['param_reduction'])} |",
        f"| non-zero parameters | {_num(s['nonzero_params_before'])} | {_num(s['nonzero_params_after'])} | "
        f"{_change(s.get('nonzero_reduction'))} |",
        f"| FLOPs (batch 1) | {_num(s['flops_before'])} | {_num(s['flops_after'])} | "
        f"{_change(s['flops_reduction'])} |",
        f"| file size | {_num(s['size_before'])}B | {_num(s['size_after'])}B | "
        f"{_change(_ratio(s['size_before'], s['size_after']))} |",
        "",
        f"Verification: max output difference {s['max_abs_diff']:.3g} absolute, "
        f"{s['max_rel_diff']:.3g} relative.", "",
    ]
    acc = report.get("accuracy")
    if acc:
        unit = f" {acc['unit']}" if acc.get("unit") else ""
        lines += [f"**{acc['metric']}**: {acc['before']:.4g}{unit} before, {acc['after']:.4g}{unit} after "
                  f"({acc['after'] - acc['before']:+.4g}).", ""]
    for key, title in (("binary-search", "Binary search"), ("budget", "Budget"), ("latency-budget", "Latency budget"),
                       ("finetune", "Fine-tuning"),
                       ("sparsity", "Weight sparsity")):
        extra = report.get(key)
        if isinstance(extra, dict) and extra.get("summary"):
            lines += [f"{title}: {extra['summary']}", ""]
    lat = report.get("latency") or {}
    if lat:
        b, a = lat["before"], lat["after"]
        load = lat.get("load") or {}
        how = (f"{len(b.get('samples_ms') or [])} runs each in {lat.get('rounds', 1)} interleaved rounds"
               f"{'' if lat.get('stable', True) else ' (not stable at the cap)'}")
        if load.get("load1") is not None:
            how += f"; machine load {load['load1']:g} on {load['cores']} cores"
            if load.get("others") is not None:
                how += f", {load['others']:g} used by other processes while measuring"
            how += " (busy)" if load.get("busy") else ""
        lines += ["## Latency", "", f"batch {lat['batch']}, threads {lat['threads'] or 'default'}; {how}", "",
                  "| ms | p50 | p50 95 % interval | p90 | p99 | mean | spread |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, x in (("before", b), ("after", a)):
            ival = f"{x['p50_low_ms']:.3f}-{x['p50_high_ms']:.3f}" if x.get("p50_low_ms") is not None else "n/a"
            spread = f"{x['spread']:.2f}" if x.get("spread") is not None else "n/a"
            lines.append(f"| {name} | {x['p50_ms']:.3f} | {ival} | {x['p90_ms']:.3f} | {x['p99_ms']:.3f} | "
                         f"{x['mean_ms']:.3f} | {spread} |")
        lo, hi = lat.get("speedup_low"), lat.get("speedup_high")
        ival = f" (95 % interval {lo:.2f}-{hi:.2f}x)" if lo is not None and hi is not None else ""
        lines += ["", f"Speedup {lat['speedup']:.2f}x{ival}: latency {_change(s['latency_reduction'])} for "
                      f"FLOPs {_change(s['flops_reduction'])}.", ""]
        lines += [f"- warning: {w}" for w in lat.get("warnings") or []]
        if lat.get("warnings"):
            lines.append("")
        for row in lat.get("batches") or []:
            lines.append(f"- batch {row['batch']}: {row['before_p50_ms']:.3f} ms → {row['after_p50_ms']:.3f} ms "
                         f"(speedup {row['speedup']:.2f}x)")
        if lat.get("batches"):
            lines.append("")
        if "latency.png" in images:
            lines += ["![latency distributions](latency.png)", ""]
    lines += _latency_model_lines(report, images)
    lines += ["## Layers", ""]
    if "widths.png" in images:
        lines += ["![per-layer widths](widths.png)", ""]
    lines += ["| layer | op | in | out | params | FLOPs |", "|---|---|---:|---:|---:|---:|"]
    for row in report["layers"]:
        lines.append(f"| {row['name']} | {row['op']} | {row['in_before']}→{row['in_after']} | "
                     f"{row['out_before']}→{row['out_after']} | {_num(row['params_before'])}→"
                     f"{_num(row['params_after'])} | {_num(row['flops_before'])}→{_num(row['flops_after'])} |")
    if report.get("attention"):
        gqa = any("kv_groups_before" in b for b in report["attention"])
        lines += ["", "## Attention heads", "",
                  "| block | heads | " + ("KV groups | " if gqa else "") + "head_dim | status |",
                  "|---|---:|" + ("---:|" if gqa else "") + "---:|---|"]
        for b in report["attention"]:
            kv = f"{b['kv_groups_before']}→{b['kv_groups_after']} | " if "kv_groups_before" in b else (
                "– | " if gqa else "")
            status = "frozen: " + "; ".join(b["frozen"]) if b["frozen"] else "prunable" if b["prunable"] else "kept"
            lines.append(f"| {b['block']} | {b['heads_before']}→{b['heads_after']} | {kv}{b['head_dim']} | {status} |")
    lines += ["", f"## Channel groups ({s['groups_total']}: {s['groups_prunable']} prunable, "
                  f"{s['groups_frozen']} frozen, {s['groups_pruned']} pruned)", ""]
    if report["frozen"]:
        lines += ["Frozen groups and why:", ""]
        lines += [f"- `{f['group']}`: {'; '.join(f['reasons'])}" for f in report["frozen"]]
        lines.append("")
    sp = report.get("sparsity")
    if isinstance(sp, dict) and sp.get("layers"):
        w = sp.get("weights") or {}
        lines += ["## Weight sparsity", ""]
        if w.get("zlib_bytes_before") is not None:
            lines += [f"Weights compressed (zlib): {_num(w['zlib_bytes_before'])}B → {_num(w['zlib_bytes'])}B; "
                      f"values + bitmask: {_num(w.get('bitmask_bytes', 0))}B.", ""]
        lines += ["| layer | op | params | non-zero | sparsity |", "|---|---|---:|---:|---:|"]
        lines += [f"| {x['name']} | {x['op']} | {_num(x['params'])} | {_num(x['nonzero'])} | "
                  f"{100 * x['sparsity']:.1f} % |" for x in sp["layers"]]
        lines += [""] + [f"- skipped `{x['name']}`: {x['reason']}" for x in sp.get("skipped", [])] + [""]
    lines += _quantization_lines(report.get("quantization"))
    if report.get("width_flags"):
        lines += [f"Widths that may hurt {report['target']['name']}:", ""]
        lines += [f"- `{f['group']}`: {f['note']}" for f in report["width_flags"]]
        lines.append("")
    lines += _sensitivity_lines(report.get("sensitivity"), images)
    if report.get("gates"):
        lines += ["## Gates", "", "| gate | result |", "|---|---|"]
        lines += [f"| {g['name']} | {'pass' if g['passed'] else '**FAIL**'}: {g['message']} |" for g in report["gates"]]
        lines.append("")
    lines += ["## Passes", "", "| pass | seconds | changed | summary |", "|---|---:|---|---|"]
    for rec in report["passes"]:
        lines.append(f"| {rec['name']} | {rec['seconds']:.3f} | {rec['changed']} | {rec['summary']} |")
    lines.append("")
    for note in report.get("notes", []):
        lines.append(f"> {note}")
    return "\n".join(lines) + "\n"

