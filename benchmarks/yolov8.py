"""YOLOv8n-style detector at ``--ratio 0.3``: parameters, FLOPs and ONNX Runtime latency.

Builds the YOLOv8n topology from the test zoo (C2f with shortcuts, SPPF, PAN neck, Detect with
DFL; YOLOv8n's widths 16…256, random weights — ultralytics itself needs torchvision, which does not
import beside the CPU torch kept here), exports it with the TorchScript exporter at 320×320, and
compiles it with ``--ratio 0.3 --target onnxruntime`` (the target's default width rounding). It
prints the share of hidden channels that are prunable, parameters and FLOPs before/after, and the
latency of the original and the pruned model measured again here in rounds (p50 over ``--runs``
runs per round, best round), with the machine's load average.

It is a measurement script, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zoo  # noqa: E402

import npcompile  # noqa: E402
from npcompile.graph.model_io import load_model  # noqa: E402
from npcompile.graph.shapes import probe_shapes  # noqa: E402
from npcompile.pipeline import Context  # noqa: E402
from npcompile.runtime.verify import make_session  # noqa: E402


def _latency(model, x: np.ndarray, threads: int, runs: int, rounds: int) -> float:
    sess = make_session(model, threads)
    feeds = {sess.get_inputs()[0].name: x}
    for _ in range(5):
        sess.run(None, feeds)
    best = float("inf")
    for _ in range(rounds):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - t0)
        best = min(best, statistics.median(times))
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=int, default=320)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = zoo.randomize_bn(zoo.YOLO(yolo11=False, w=8, nc=80, image=args.image), 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "yolov8n.onnx"
        zoo.export(model, (1, 3, args.image, args.image), str(path), dynamo=False)
        onnx_model = load_model(path)
        analysis = Context(onnx_model, probe_shapes(onnx_model)).analysis
        hidden = [g for g in analysis.groups if not any("reaches graph output" in r for r in g.frozen)]
        share = sum(g.size for g in hidden if g.prunable) / max(sum(g.size for g in hidden), 1)
        t0 = time.perf_counter()
        result = npcompile.compile(onnx_model, Path(tmp) / "out", ratio=args.ratio, target="onnxruntime",
                                   threads=args.threads, benchmark=False)
        compile_s = time.perf_counter() - t0
        s = result.report["summary"]
        x = np.random.default_rng(0).standard_normal((1, 3, args.image, args.image)).astype(np.float32)
        before = after = float("inf")
        for _ in range(2):  # interleaved, best of both passes
            before = min(before, _latency(onnx_model, x, args.threads, args.runs, args.rounds))
            after = min(after, _latency(result.model, x, args.threads, args.runs, args.rounds))
    print(f"YOLOv8n topology at {args.image}x{args.image}, --ratio {args.ratio} --target onnxruntime "
          f"(round-to {result.report['rounding']['round_to']})")
    print(f"  hidden channels prunable: {100 * share:.1f} %")
    print(f"  parameters: {s['params_before']:,} -> {s['params_after']:,} (-{100 * s['param_reduction']:.1f} %)")
    print(f"  FLOPs:      {s['flops_before']:,} -> {s['flops_after']:,} (-{100 * s['flops_reduction']:.1f} %)")
    print(f"  latency p50 (ORT CPU, {args.threads} threads): {before:.2f} ms -> {after:.2f} ms "
          f"(speedup {before / after:.2f}x; latency reduction / FLOPs reduction "
          f"{(1 - after / before) / max(s['flops_reduction'], 1e-9):.2f})")
    print(f"  compile {compile_s:.1f} s; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} "
          "(timings are trustworthy on an idle machine only)")


if __name__ == "__main__":
    main()
