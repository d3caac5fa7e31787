"""Binary-search pruning speed: the search's wall time against its evaluations done the plain way.

Trains a small CNN on scikit-learn's 8x8 digits for a few seconds, exports it, and in one run:

1. times one plain evaluation: the accuracy evaluator over the held-out data on a plain ONNX Runtime
   session of the original model;
2. times the whole ``binary-search`` pass (masked-model build, its one-time exactness check, the
   baseline and every probe), after the magnitude ranking; both interleaved over ``--rounds``,
   best of each taken (medians printed too);
3. prints the ratio ``search time / (evaluations x plain evaluation)`` (goal <= 1.3) and checks
   that the really pruned model scores what the search reported.

Both sides use the same ONNX Runtime thread count (``--threads``, default 1). It is a measurement
script, not a test: nothing is asserted. Needs torch and scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "search"))

import numpy as np  # noqa: E402
import searchkit  # noqa: E402

from npcompile.graph.model_io import load_model  # noqa: E402
from npcompile.graph.shapes import probe_shapes  # noqa: E402
from npcompile.graph.stats import model_stats  # noqa: E402
from npcompile.passes.magnitude import MagnitudePass  # noqa: E402
from npcompile.passes.prune import PrunePass  # noqa: E402
from npcompile.passes.search import BinarySearchPass  # noqa: E402
from npcompile.pipeline import Context  # noqa: E402
from npcompile.runtime.data import Dataset  # noqa: E402
from npcompile.runtime.evaluate import AccuracyEvaluator  # noqa: E402
from npcompile.runtime.verify import make_session  # noqa: E402

GOAL = 1.3


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path, data = searchkit.trained_digits_model("cnn", Path(tmp) / "cnn.onnx", epochs=args.epochs,
                                                    width=args.width)
        train_s = time.perf_counter() - t0
        model = load_model(path)
    if args.tile > 1:
        data = Dataset({k: np.concatenate([v] * args.tile) for k, v in data.inputs.items()},
                       np.concatenate([data.labels] * args.tile), data.source)
    probe = probe_shapes(model)
    evaluator = AccuracyEvaluator(data, batch_size=args.batch_size, threads=args.threads)

    plain = make_session(model, args.threads)
    evaluator.evaluate(plain)  # warm-up
    # interleaved rounds, so that drift of a noisy machine hits both alike; the best of each is taken
    plain_times: list[float] = []
    search_times: list[float] = []
    for _ in range(args.rounds):
        for _ in range(args.repeat):
            t = time.perf_counter()
            accuracy = evaluator.evaluate(plain)
            plain_times.append(time.perf_counter() - t)
        ctx = Context(model, probe)
        MagnitudePass().run(ctx)
        search = BinarySearchPass(args.tolerance, evaluator, threads=args.threads)
        t = time.perf_counter()
        result = search.run(ctx)
        search_times.append(time.perf_counter() - t)
    plain_s, search_s = min(plain_times), min(search_times)
    evaluations = result.data["evaluations"]
    bound = 1 + sum(int(np.ceil(np.log2(g["width"] + 1))) for g in result.data["groups"])
    median_ratio = statistics.median(search_times) / (evaluations * statistics.median(plain_times))

    PrunePass().run(ctx)
    pruned_accuracy = evaluator.evaluate(ctx.model)
    before, after = model_stats(model, probe), model_stats(ctx.model, probe)
    return {
        "samples": len(data), "batch_size": args.batch_size, "threads": args.threads, "train_s": train_s,
        "plain_eval_s": plain_s, "plain_eval_all_s": plain_times, "search_s": search_s,
        "search_all_s": search_times, "rounds": args.rounds, "evaluations": evaluations, "evaluation_bound": bound,
        "ratio": search_s / (evaluations * plain_s), "median_ratio": median_ratio, "goal": GOAL,
        "accuracy": accuracy, "search_baseline": result.data["baseline"], "search_final": result.data["final"],
        "pruned_accuracy": pruned_accuracy, "tolerance": args.tolerance,
        "params": [before.params, after.params], "flops": [before.flops, after.flops],
        "groups": result.data["groups"], "fast_path": result.data["fast_path"],
    }


def report(r: dict[str, Any]) -> str:
    lines = [
        f"digits CNN: {r['samples']} evaluation samples, batch {r['batch_size']}, threads {r['threads'] or 'default'} "
        f"(trained in {r['train_s']:.1f} s)",
        f"plain evaluation (original model, plain ORT session): {r['plain_eval_s'] * 1e3:.1f} ms "
        f"(best of {len(r['plain_eval_all_s'])})",
        f"binary search: {r['search_s']:.3f} s (best of {r['rounds']}) for {r['evaluations']} evaluations "
        f"(bound sum ceil(log2(width+1)) + 1 = {r['evaluation_bound']}; masked fast path: {r['fast_path']})",
        f"search / (evaluations x plain evaluation) = {r['search_s']:.3f} / ({r['evaluations']} x "
        f"{r['plain_eval_s']:.4f}) = {r['ratio']:.2f}x  (goal <= {r['goal']}x: "
        f"{'met' if r['ratio'] <= r['goal'] else 'NOT met'}); with medians instead of bests: {r['median_ratio']:.2f}x",
        f"accuracy {r['accuracy']:.2f}% -> search final {r['search_final']:.2f}%, really pruned model "
        f"{r['pruned_accuracy']:.2f}% (tolerance {r['tolerance']} points)",
        f"params {r['params'][0]} -> {r['params'][1]} ({1 - r['params'][1] / r['params'][0]:.1%} fewer), "
        f"FLOPs {r['flops'][0]} -> {r['flops'][1]} ({1 - r['flops'][1] / r['flops'][0]:.1%} fewer)",
        "kept widths: " + ", ".join(f"{g['group']} {g['kept']}/{g['width']}" for g in r["groups"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    ap.add_argument("--width", type=int, default=32, help="CNN width (default 32)")
    ap.add_argument("--tile", type=int, default=1, help="repeat the evaluation data N times (default 1)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--tolerance", type=float, default=1.0, help="accuracy points (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for both sides (default 1: "
                    "evaluations of ~10 ms on a shared machine time steadily on one thread; 0: ONNX Runtime's default)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of plain evaluations and searches")
    ap.add_argument("--repeat", type=int, default=5, help="plain evaluations timed per round")
    ap.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    r = run(args)
    print(report(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
