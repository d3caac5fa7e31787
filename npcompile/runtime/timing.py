"""Latency you can trust: repeated measurement until the estimate is stable, intervals for the
median and for a speedup ratio, and a word when the machine is too busy to believe the figures.

Two models are compared in interleaved rounds (A B, B A, A B, ...), so that a load change on the
machine hits both alike. After every round the 95 % interval of the speedup is computed: the
wider of a bootstrap over the runs of both models (ratio of medians) and a t interval over the
per-round ratios (which widens when the machine drifts between rounds). Measuring stops when its
half-width is at most ``precision`` of the estimate, or at the cap (``max_rounds`` rounds or ``max_seconds``).
The interval of one median is the distribution-free order-statistic interval.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from npcompile.report.progress import progress

__all__ = ["StableOptions", "median_interval", "ratio_interval", "round_interval", "machine_load", "OtherWork",
           "stable_samples", "compare", "summarize", "dispersion_warning"]

log = logging.getLogger(__name__)

#: a runner times ``runs`` calls after ``warmup`` untimed ones and returns milliseconds per call
Runner = Callable[[int, int], Sequence[float]]


@dataclass
class StableOptions:
    """How long to measure: rounds of ``runs`` timed calls (``warmup`` untimed calls before the
    first), at least ``min_rounds``, until the interval's half-width is at most ``precision`` of
    the estimate, or ``max_rounds`` / ``max_seconds`` is reached. :func:`compare` times more calls
    per round where ``runs`` calls of a model take less than ``min_round_seconds``: rounds of a
    few milliseconds (a 0.03 ms model) measure the timer and the CPU's frequency steps more than
    the model."""

    runs: int = 50
    warmup: int = 10
    precision: float = 0.02
    min_rounds: int = 2
    max_rounds: int = 10
    max_seconds: float = 30.0
    confidence: float = 0.95
    min_round_seconds: float = 0.05


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def median_interval(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval of the median: the order statistics ``n/2 -+ z*sqrt(n)/2``."""
    x = np.sort(np.asarray(samples, float))
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    half = _z(confidence) * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)) - 1)
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    return float(x[lo]), float(x[hi])


def ratio_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 1000,
                   seed: int = 0) -> tuple[float, float, float]:
    """``median(a) / median(b)`` and its bootstrap interval (percentiles of resampled ratios)."""
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    est = float(np.median(xa) / np.median(xb))
    rng = np.random.default_rng(seed)
    ma = np.median(xa[rng.integers(0, len(xa), (resamples, len(xa)))], axis=1)
    mb = np.median(xb[rng.integers(0, len(xb), (resamples, len(xb)))], axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(ma / mb, [tail, 100 - tail])
    return est, float(min(lo, est)), float(max(hi, est))


#: two-sided 97.5 % quantiles of Student's t for 1..10 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def round_interval(ratios: Sequence[float]) -> tuple[float, float] | None:
    """95 % interval of the speedup from the per-round ratios (t interval of their logarithms):
    it widens when the machine drifts between rounds, which pooled runs do not show."""
    r = np.log(np.asarray(ratios, float))
    if len(r) < 2:
        return None
    dof = len(r) - 1
    t = _T975[dof - 1] if dof <= len(_T975) else 1.96 + 2.4 / dof
    half = t * float(r.std(ddof=1)) / math.sqrt(len(r))
    return float(np.exp(r.mean() - half)), float(np.exp(r.mean() + half))


def machine_load() -> dict[str, Any]:
    """The 1-minute load average against the cores this process may use; ``busy`` when it keeps
    more than half of them occupied (figures then spread and drift). The average lags by a minute
    and counts this process too: :class:`OtherWork` tells what *other* processes used."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load1 = float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return {"load1": None, "cores": cores, "busy": False}
    return {"load1": round(load1, 2), "cores": cores, "busy": load1 > 0.5 * cores}


def _cpu_seconds_all() -> float | None:
    """CPU seconds used since boot on the cores this process may run on, by every process (Linux
    ``/proc/stat``, one ``cpuN`` line per core: user, nice, system, irq, softirq and steal, the
    time a hypervisor gave to others); None elsewhere. Cores outside the affinity set (other
    containers' cpusets) do not count."""
    try:
        with open("/proc/stat") as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu") and ln[3:4].isdigit()]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    total = 0
    for fields in lines:
        if len(fields) < 9 or (mine is not None and int(fields[0][3:]) not in mine):
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
        total += user + nice + system + irq + softirq + steal
    return total / ticks if lines else None


class OtherWork:
    """How many cores processes other than this one kept busy between construction and
    :meth:`cores` (CPU time of the whole machine less this process's, over the wall time): a
    measurement's own threads, and the load average's minute of lag, do not count."""

    BUSY_SHARE = 0.25  # other work on more than this share of the cores: the machine is busy

    def __init__(self) -> None:
        self.wall, self.all, self.own = time.perf_counter(), _cpu_seconds_all(), time.process_time()

    def cores(self) -> float | None:
        """Cores used by other processes since construction; None where it cannot be told."""
        now = _cpu_seconds_all()
        wall = time.perf_counter() - self.wall
        if now is None or self.all is None or wall < 0.05:
            return None
        return max(0.0, (now - self.all - (time.process_time() - self.own)) / wall)


def summarize(samples: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """p50 with its interval, and the relative spread (``(p90 - p10) / p50``) of timed runs (ms)."""
    x = np.asarray(samples, float)
    p10, p50, p90 = (float(v) for v in np.percentile(x, [10, 50, 90]))
    lo, hi = median_interval(x, confidence)
    return {"p50_ms": p50, "p50_low_ms": lo, "p50_high_ms": hi, "spread": (p90 - p10) / p50 if p50 > 0 else 0.0}


def dispersion_warning(spread: float) -> str | None:
    """A warning when runs of one model differ by more than half their median (a busy machine)."""
    if spread > 0.5:
        return f"latency runs spread widely ((p90 - p10) / p50 = {spread:.2f}): the machine is likely busy"
    return None


def stable_samples(run: Runner, options: StableOptions) -> tuple[list[float], dict[str, Any]]:
    """Time one model in rounds until its median's interval is within ``precision`` (or the cap):
    the runs (ms) and how the measurement went (rounds, stable, seconds)."""
    samples: list[float] = []
    start = time.perf_counter()
    stable = False
    rounds = 0
    with progress("measuring latency", total=options.max_rounds) as tick:
        while rounds < options.max_rounds:
            samples += list(run(options.runs, options.warmup if rounds == 0 else 0))
            rounds += 1
            tick(1)
            p50 = float(np.median(samples))
            lo, hi = median_interval(samples, options.confidence)
            stable = p50 > 0 and (hi - lo) / 2 <= options.precision * p50
            if rounds >= options.min_rounds and (stable or time.perf_counter() - start > options.max_seconds):
                break
    return samples, {"rounds": rounds, "stable": stable, "seconds": time.perf_counter() - start}


def compare(run_before: Runner, run_after: Runner, options: StableOptions) -> dict[str, Any]:
    """Measure two models in interleaved rounds until the speedup ``p50(before) / p50(after)`` is
    known within ``precision`` (or the cap). Returns the runs of both, the speedup with its
    interval, whether it became stable, the machine load and the warnings to show."""
    load_start = machine_load()
    other = OtherWork()
    before: list[float] = []
    after: list[float] = []
    start = time.perf_counter()
    rounds = 0
    stable = False
    speedup = (math.nan, math.nan, math.nan)
    per_round: list[float] = []
    runs = options.runs
    with progress("measuring latency", total=options.max_rounds) as tick:
        while rounds < options.max_rounds:
            warm = options.warmup if rounds == 0 else 0
            if rounds % 2 == 0:  # A B, then B A: whatever favours the first (or second) of a pair cancels
                b = list(run_before(runs, warm))
                a = list(run_after(runs, warm))
            else:
                a = list(run_after(runs, warm))
                b = list(run_before(runs, warm))
            before += b
            after += a
            rounds += 1
            tick(1)
            per_round.append(float(np.median(b) / np.median(a)))
            if rounds == 1:  # rounds of at least min_round_seconds of the faster model from now on
                fastest = min(float(np.median(b)), float(np.median(a)))
                if fastest > 0:
                    runs = max(runs, min(math.ceil(options.min_round_seconds * 1e3 / fastest), 100_000))
            est, lo, hi = ratio_interval(before, after, options.confidence, seed=rounds)
            between = round_interval(per_round)
            if between is not None:  # the wider of the two: drift between rounds counts
                lo, hi = min(lo, between[0]), max(hi, between[1])
            speedup = (est, lo, hi)
            stable = (hi - lo) / 2 <= options.precision * est
            if rounds >= options.min_rounds and (stable or time.perf_counter() - start > options.max_seconds):
                break
    load_end = machine_load()
    others = other.cores()
    load = {**load_end, "load1_start": load_start["load1"],
            "others": None if others is None else round(others, 2),
            "busy": bool(load_start["busy"] or load_end["busy"]) if others is None
            else others > OtherWork.BUSY_SHARE * load_end["cores"]}
    sb, sa = summarize(before, options.confidence), summarize(after, options.confidence)
    warnings = []
    if load["busy"]:
        what = (f"other processes used {others:.1f} of {load['cores']} cores while it measured"
                if others is not None else f"load {load['load1']:g} on {load['cores']} cores")
        warnings.append(f"the machine is busy ({what}): latency figures are noisy; measure on an idle machine to "
                        "trust them")
    for w in (dispersion_warning(max(sb["spread"], sa["spread"])),):
        if w and not load["busy"]:
            warnings.append(w)
    est, lo, hi = speedup
    if lo < 1.0 < hi:
        warnings.append(f"speedup {est:.2f}x ({lo:.2f}-{hi:.2f}x) is within measurement noise: the interval "
                        "straddles 1.0x")
    if not stable:
        warnings.append(f"latency did not stabilise within {rounds} rounds ({time.perf_counter() - start:.1f} s): "
                        f"the speedup interval is ±{(hi - lo) / 2 / est:.1%}")
    return {"before": before, "after": after, "speedup": est, "speedup_low": lo, "speedup_high": hi,
            "rounds": rounds, "stable": stable, "seconds": time.perf_counter() - start, "load": load,
            "options": asdict(options), "warnings": warnings}
