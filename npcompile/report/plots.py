"""Plots for the report (matplotlib, optional): per-layer widths, latency distributions,
sensitivity curves. Without matplotlib the report simply has no pictures."""

from __future__ import annotations

import io
import logging
from typing import Any

__all__ = ["available", "render_plots"]

log = logging.getLogger(__name__)


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _fig_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _widths(report: dict[str, Any]) -> bytes | None:
    import matplotlib.pyplot as plt

    layers = report.get("layers") or []
    if not layers:
        return None
    names = [row["name"].rsplit("/", 2)[-2] if row["name"].count("/") > 1 else row["name"] for row in layers]
    before = [row["out_before"] for row in layers]
    after = [row["out_after"] for row in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(layers)), 3.6))
    x = range(len(layers))
    ax.bar(x, before, color="#c7c7c7", label="before")
    ax.bar(x, after, color="#1f77b4", label="after")
    ax.set_xticks(list(x), names, rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title("Per-layer widths")
    ax.legend()
    return _fig_bytes(fig)


def _latency(report: dict[str, Any]) -> bytes | None:
    import matplotlib.pyplot as plt

    lat = report.get("latency") or {}
    b = (lat.get("before") or {}).get("samples_ms")
    a = (lat.get("after") or {}).get("samples_ms")
    if not a or not b:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    import numpy as np

    both = np.asarray(list(a) + list(b), dtype=float)
    lo, hi = float(both.min()), float(np.percentile(both, 98))  # an outlier must not squash the rest
    hi = hi if hi > lo else float(both.max())
    outliers = int((both > hi).sum())
    bins = 40 if hi > lo else 1
    clip = (lambda xs: np.minimum(np.asarray(xs, dtype=float), hi))  # noqa: E731 - outliers in the last bin
    ax.hist(clip(b), bins=bins, range=(lo, hi), alpha=0.6, label=f"before (p50 {lat['before']['p50_ms']:.3f} ms)")
    ax.hist(clip(a), bins=bins, range=(lo, hi), alpha=0.6, label=f"after (p50 {lat['after']['p50_ms']:.3f} ms)")
    ax.set_xlabel("latency per batch (ms)" + (f"; {outliers} slower run(s) counted in the last bin" if outliers
                                              else ""))
    ax.set_ylabel("runs")
    ax.set_title("Latency distribution")
    ax.legend()
    return _fig_bytes(fig)


def _sensitivity(report: dict[str, Any]) -> bytes | None:
    import matplotlib.pyplot as plt

    table = (report.get("sensitivity") or {}).get("table")
    if not table:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    rows = [(r["group"], r["points"]) for r in table] if isinstance(table, list) else list(table.items())
    for name, points in rows[:30]:
        xs = [p["fraction"] for p in points]
        ys = [p["metric"] for p in points]
        ax.plot(xs, ys, marker=".", linewidth=1, label=name.rsplit("/", 2)[-2] if name.count("/") > 1 else name)
    ax.set_xlabel("fraction of channels removed")
    ax.set_ylabel(report["sensitivity"].get("metric", "metric"))
    ax.set_title("Per-layer sensitivity")
    if len(table) <= 12:
        ax.legend(fontsize=6)
    return _fig_bytes(fig)


def _latency_model(report: dict[str, Any]) -> bytes | None:
    """Predicted whole-model latency against each group's width, the steps marked."""
    import matplotlib.pyplot as plt

    curves = (report.get("latency-model") or {}).get("curves") or []
    curves = [c for c in curves if len(c["widths"]) > 1][:24]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for c in curves:
        label = c["group"].rsplit("/", 2)[-2] if c["group"].count("/") > 1 else c["group"]
        xs = [w / c["width"] for w in c["widths"]]
        (line,) = ax.step(xs, c["ms"], where="post", lw=0.9, label=label)
        by = dict(zip(c["widths"], c["ms"], strict=True))
        ax.plot([w / c["width"] for w in c["steps"]], [by[w] for w in c["steps"]], "o", ms=2.5,
                color=line.get_color())
    ax.set_xlabel("kept width of one group (fraction of its width; dots: the steps the plan may use)")
    ax.set_ylabel("predicted model latency (ms)")
    ax.set_title("Latency model: latency vs width per group")
    if len(curves) <= 12:
        ax.legend(fontsize=5)
    return _fig_bytes(fig)


def render_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG images by file name (``widths.png``, ``latency.png``, ``sensitivity.png``) for what the
    report holds; empty without matplotlib."""
    if not available():
        log.info("matplotlib is not installed: the report has no plots (pip install 'npcompile[plots]')")
        return {}
    import matplotlib

    matplotlib.use("Agg", force=True)
    out: dict[str, bytes] = {}
    for name, fn in (("widths.png", _widths), ("latency.png", _latency), ("sensitivity.png", _sensitivity),
                     ("latency_model.png", _latency_model)):
        try:
            png = fn(report)
        except Exception as e:  # a plot must never break a compilation
            log.warning("could not draw %s: %s", name, e)
            png = None
        if png:
            out[name] = png
    return out
