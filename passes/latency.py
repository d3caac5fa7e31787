"""Latency budget: keep the widths whose measured latency on the target is at most a fraction of
the original's, with the least metric loss.

A bisection on the fraction of FLOPs to keep: each probe runs the FLOPs ``budget`` selection for
that fraction, deletes the channels in a copy of the model, and measures the copy on the target
(``measure``, from the compilation's target; ONNX Runtime on the CPU by default). The largest
FLOPs fraction whose latency meets the goal wins. Every probe is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import onnx

from npcompile.channels.masked import prune_copy
from npcompile.errors import UserError
from npcompile.passes.search import BudgetPass
from npcompile.pipeline import Context, Pass, PassResult, register_pass

__all__ = ["LatencyBudgetPass", "ort_latency"]

log = logging.getLogger(__name__)


def ort_latency(threads: int = 0, runs: int = 20, warmup: int = 3) -> Callable[[onnx.ModelProto, dict], float]:
    """A measure function: p50 milliseconds of a model in an optimized ONNX Runtime CPU session."""
    from npcompile.runtime.verify import make_session
    from npcompile.targets.base import BenchmarkOptions, measure

    def run(model: onnx.ModelProto, feeds: dict) -> float:
        session = make_session(model, threads)
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        return measure(lambda: session.run(None, feeds), batch, BenchmarkOptions(warmup, runs)).p50_ms

    return run


@register_pass
class LatencyBudgetPass(Pass):
    """Select channels so that the measured latency is at most ``target_latency`` x the original's."""

    name = "latency-budget"
    kind = "select"
    description = "keep the least-loss widths whose measured latency meets a fraction of the original's"

    def __init__(self, target_latency: float, evaluator: Any = None, measure: Any = None, round_to: int = 1,
                 min_channels: int = 1, include: Any = None, exclude: Any = None, iterations: int = 6,
                 threads: int = 0) -> None:
        if not 0.0 < float(target_latency) < 1.0:
            raise UserError(f"--target-latency is the fraction of the original latency to reach, in (0, 1); "
                            f"got {target_latency}")
        if iterations < 1:
            raise UserError("latency budget: iterations must be >= 1")
        super().__init__(target_latency=target_latency, round_to=round_to, min_channels=min_channels,
                         iterations=iterations)
        self.target = float(target_latency)
        self.evaluator, self.round_to, self.min_channels = evaluator, round_to, min_channels
        self.include, self.exclude, self.iterations = include, exclude, iterations
        self.measure = measure if callable(measure) else ort_latency(threads)

    def _select(self, ctx: Context, flops: float) -> dict:
        BudgetPass(target_flops=flops, evaluator=self.evaluator, round_to=self.round_to,
                   min_channels=self.min_channels, include=self.include, exclude=self.exclude).run(ctx)
        return dict(ctx.removal)

    def run(self, ctx: Context) -> PassResult:
        from npcompile.runtime.verify import probe_inputs

        feeds = probe_inputs(ctx.model, ctx.probe, batch=None, seed=ctx.seed)
        base = self.measure(ctx.model, feeds)
        goal = self.target * base
        lo, hi = 0.02, 1.0  # FLOPs fractions: lo meets the goal (assumed), hi does not
        best: dict | None = None
        best_f = None
        probes = []
        for _ in range(self.iterations):
            mid = (lo + hi) / 2
            removal = self._select(ctx, mid)
            ms = self.measure(prune_copy(ctx.model, ctx.analysis, removal, ctx.probe), feeds) if removal else base
            probes.append({"flops_fraction": mid, "latency_ms": ms, "latency_fraction": ms / base})
            log.info("latency budget: keep %.3f of FLOPs -> %.3f ms (%.3f of original)", mid, ms, ms / base)
            if ms <= goal:
                lo, best, best_f = mid, removal, mid
            else:
                hi = mid
        if best is None:  # nothing probed met the goal: take the smallest fraction tried
            best_f = lo
            best = self._select(ctx, lo)
            ctx.notes.append(f"latency budget: no probe reached {self.target:g} of the original latency; "
                             f"kept {lo:.3f} of the FLOPs")
        ctx.removal = best
        data = {"target_latency": self.target, "original_ms": base, "flops_fraction": best_f, "probes": probes}
        ctx.report_extras["latency-budget"] = {"summary": f"keep {best_f:.3f} of FLOPs for <= {self.target:g} of "
                                                          f"{base:.3f} ms", **data}
        n = int(sum(m.sum() for m in best.values()))
        return PassResult(False, f"selected {n} channels: {best_f:.3f} of FLOPs kept, {len(probes)} latency probes",
                          data)
