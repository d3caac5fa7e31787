"""The protocol every deployment target follows, and latency statistics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

__all__ = ["Target", "Artifact", "LatencyStats", "BenchmarkOptions", "measure"]


@dataclass
class BenchmarkOptions:
    """How latency is measured: ``warmup`` runs, then ``runs`` timed runs (at least
    ``min_seconds`` of them), with ``threads`` intra-op threads (0: the runtime's default)."""

    warmup: int = 10
    runs: int = 100
    min_seconds: float = 0.0
    threads: int = 0


@dataclass
class LatencyStats:
    """Latency of one model on one target, in milliseconds per batch."""

    runs: int
    batch: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    throughput: float  # samples per second at p50
    samples_ms: list[float] | None = None  # every timed run, for distributions
    p50_low_ms: float | None = None  # 95 % interval of the median (order statistics)
    p50_high_ms: float | None = None
    spread: float | None = None  # (p90 - p10) / p50 of the runs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_samples(samples_s: list[float], batch: int) -> LatencyStats:
        """Statistics of timed runs given in seconds."""
        return LatencyStats.from_ms(list(np.asarray(samples_s, float) * 1e3), batch)

    @staticmethod
    def from_ms(samples_ms: list[float], batch: int) -> LatencyStats:
        """Statistics of timed runs given in milliseconds, with the interval of the median."""
        from npcompile.runtime.timing import summarize

        ms = np.asarray(samples_ms, float)
        s = summarize(ms)
        p50 = s["p50_ms"]
        return LatencyStats(len(ms), batch, float(ms.mean()), p50, float(np.percentile(ms, 90)),
                            float(np.percentile(ms, 99)), float(ms.min()),
                            batch / (p50 / 1e3) if p50 > 0 else float("inf"),
                            [round(float(x), 6) for x in ms], s["p50_low_ms"], s["p50_high_ms"], s["spread"])


def measure(fn: Callable[[], Any], batch: int, options: BenchmarkOptions) -> LatencyStats:
    """Time ``fn``: warm-up runs, then at least ``options.runs`` timed runs."""
    for _ in range(options.warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < options.runs or time.perf_counter() - start < options.min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return LatencyStats.from_samples(samples, batch)


@dataclass
class Artifact:
    """What a target built: the files it wrote and an in-memory handle for benchmarking."""

    target: str
    files: dict[str, Path]
    handle: Any = None
    info: dict[str, Any] | None = None


class Target:
    """A deployment target. ``available()`` says whether it can run here (and why not);
    ``build`` turns an ONNX model into the target's artifact under ``outdir``; ``benchmark``
    measures its latency on ``inputs``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    install_hint: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.options = options

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, ""

    def default_round_to(self) -> int:
        """Channel multiple that suits this target's kernels (1: any width)."""
        return 1

    def build(self, model: onnx.ModelProto, outdir: Path, name: str = "model") -> Artifact:
        raise NotImplementedError

    def benchmark(self, artifact: Artifact, inputs: dict[str, np.ndarray],
                  options: BenchmarkOptions) -> LatencyStats | None:
        return None
