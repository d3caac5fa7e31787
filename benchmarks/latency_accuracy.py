"""Held-out accuracy of ``--target-latency`` plans against uniform ``--ratio`` plans at the same
measured latency (issue 18), on a trained network.

Reads ``model.onnx``, ``val.npz``, ``eval.npz`` (and ``train.npz`` for ``--finetune``) from
``--work``: what ``examples/binary_search_vgg/train.py --out DIR`` writes. For each latency target:

1. the plan: ``npcompile.compile(..., target_latency=F, eval=val.npz)`` (the latency model, the
   plan ranked by the loss measured on val.npz, verified on the whole model);
2. uniform plans: ``ratio`` in steps of ``--ratio-step`` at the target's rounding (the CPU's vector
   width), each measured against the original; the comparison takes the *least* pruned uniform
   plan that is at least as fast as the plan (so the uniform side never loses on speed);
3. with ``--finetune E``, both get the same E epochs of fine-tuning on train.npz.

It prints, per target: measured latency (95 % interval), FLOPs and parameters kept, accuracy on
eval.npz (the test images neither the plan nor the fine-tuning sees) for both. A measurement
script, not a test: nothing is asserted. Every latency is the pruned model against the original in
interleaved rounds on ONNX Runtime's CPU provider at ``--threads``, batch 1.

Usage: python benchmarks/latency_accuracy.py --work DIR [--targets 0.7,0.5] [--threads 1] [--finetune 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import npcompile  # noqa: E402
from npcompile.runtime.data import load_data  # noqa: E402
from npcompile.runtime.evaluate import make_evaluator  # noqa: E402
from npcompile.runtime.latency_model import ort_runner  # noqa: E402
from npcompile.runtime.timing import OtherWork, StableOptions, compare, machine_load  # noqa: E402
from npcompile.targets.ort import cpu_vector_width  # noqa: E402


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work
        self.original = onnx.load(str(self.work / "model.onnx"))
        self.common = {"benchmark": False, "plots": False, "threads": args.threads, "allow_collapse": True}
        test = load_data(self.work / "eval.npz", self.original, labels="required", what="test data")
        self.test = make_evaluator("accuracy", dataset=test, model=self.original, threads=args.threads)
        self.feeds = {k: np.asarray(v[:1]) for k, v in test.inputs.items()}
        self.runner = ort_runner(args.threads)
        self.base = self.runner(self.original, self.feeds)
        self.stable = StableOptions(runs=20, warmup=5, precision=0.02, min_rounds=2, max_rounds=12,
                                    max_seconds=args.seconds)
        self.stats0 = npcompile.inspect(self.original)["stats"]

    def latency(self, model: onnx.ModelProto) -> tuple[float, float, float]:
        """Measured latency as a fraction of the original's, with its 95 % interval."""
        c = compare(self.base, self.runner(model, self.feeds), self.stable)
        return 1 / c["speedup"], 1 / c["speedup_high"], 1 / c["speedup_low"]

    def row(self, label: str, model: onnx.ModelProto, seconds: float) -> dict[str, Any]:
        stats = npcompile.inspect(model)["stats"]
        frac, low, high = self.latency(model)
        row = {"plan": label, "latency": frac, "low": low, "high": high,
               "flops": stats["flops"] / self.stats0["flops"], "params": stats["params"] / self.stats0["params"],
               "acc": self.test.evaluate(model), "seconds": seconds, "model": model}
        if self.args.finetune:
            tuned = npcompile.compile(model, None, train=str(self.work / "train.npz"), epochs=self.args.finetune,
                                      **self.common).model
            row["acc_tuned"] = self.test.evaluate(tuned)
        return row

    def plan(self, target: float, cache: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        res = npcompile.compile(self.original, None, target_latency=target, eval=str(self.work / "val.npz"),
                                latency_cache=cache, latency_max_seconds=self.args.seconds, **self.common)
        return self.row(f"target-latency {target}", res.model, time.perf_counter() - t0)

    def uniform(self, ratio: float, round_to: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        res = npcompile.compile(self.original, None, ratio=ratio, round_to=round_to, **self.common)
        return self.row(f"ratio {ratio:.2f} round-to {round_to}", res.model, time.perf_counter() - t0)


def show(r: dict[str, Any], finetune: int) -> str:
    tuned = f" {r['acc_tuned']:8.2f}" if finetune else ""
    return (f"  {r['plan']:34s} {r['latency']:.3f} ({r['low']:.3f}-{r['high']:.3f}) {r['flops']:6.3f} "
            f"{r['params']:6.3f} {r['acc']:7.2f}{tuned}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder of train.py's model.onnx, val/eval/train.npz")
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ratio-step", type=float, default=0.05)
    ap.add_argument("--seconds", type=float, default=15.0, help="cap of one latency comparison")
    ap.add_argument("--finetune", type=int, default=0, help="epochs of fine-tuning for both (0: none)")
    args = ap.parse_args(argv)
    for f in ("model.onnx", "val.npz", "eval.npz") + (("train.npz",) if args.finetune else ()):
        if not (args.work / f).exists():
            print(f"missing {args.work / f}: run examples/binary_search_vgg/train.py --out {args.work}",
                  file=sys.stderr)
            return 2
    load, other = machine_load(), OtherWork()
    print(f"machine: {load['cores']} cores, load {load['load1']} at the start; {args.threads} thread(s), batch 1")
    b = Bench(args)
    lanes = cpu_vector_width()[0]
    print(f"original: test accuracy {b.test.evaluate(b.original):.2f} %")
    head = f"  {'plan':34s} {'latency (95 %)':21s} {'FLOPs':>6s} {'params':>6s} {'test acc':>7s}"
    uniform: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as cache:
        for target in [float(t) for t in args.targets.split(",")]:
            plan = b.plan(target, cache)
            # the least pruned uniform plan at least as fast as the plan (upper ends compared, so a
            # noisy lucky uniform run does not win the comparison)
            ratio = 0.0
            pick, slower = None, None
            while ratio < 0.95 and pick is None:
                ratio = round(ratio + args.ratio_step, 4)
                r = next((u for u in uniform if abs(u["ratio"] - ratio) < 1e-9), None)
                if r is None:
                    r = {**b.uniform(ratio, lanes), "ratio": ratio}
                    uniform.append(r)
                if r["latency"] <= plan["latency"]:
                    pick = r
                else:
                    slower = r
            print(f"\n== target-latency {target}: plan built in {plan['seconds']:.0f} s")
            print(head + (" fine-tuned" if args.finetune else ""))
            print(show(plan, args.finetune))
            key = "acc_tuned" if args.finetune else "acc"
            # uniform latency is a staircase of the ratio: the neighbours on both sides of the plan
            for what, r in (("most pruned uniform plan still slower", slower), ("least pruned as fast", pick)):
                if r is None:
                    print(f"  ({what}: none up to ratio 0.95)")
                    continue
                print(show(r, args.finetune) + f"   <- {what}")
                print(f"    accuracy: plan {plan[key]:.2f} vs {r[key]:.2f} ({plan[key] - r[key]:+.2f} points) at "
                      f"latency {plan['latency']:.3f} vs {r['latency']:.3f}, FLOPs {plan['flops']:.3f} vs "
                      f"{r['flops']:.3f}")
            sys.stdout.flush()
    end, others = machine_load(), other.cores()
    busy = others is not None and others > OtherWork.BUSY_SHARE * end["cores"]
    print(f"\nmachine load {load['load1']}-{end['load1']} (this script's own threads included)"
          + (f"; other processes used {others:.2f} cores on average" if others is not None else "")
          + (" -- busy: timings noisy" if busy else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
