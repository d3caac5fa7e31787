"""The schedules of ``--search binary`` (npcompile.search.variants) on one trained model: parameters
and FLOPs removed, accuracy change before and after fine-tuning, evaluations (against the paper's
sum of log2(width) and the documented bound) and wall time.

Reads model.onnx, val.npz (what the search evaluates), eval.npz (test accuracy only) and
train.npz (fine-tuning) from --work, as examples/binary_search_vgg/train.py writes them; the
figures in benchmarks/README.md come from that example trained without its sparsity term
(``train.py --sparsity 0``).

Usage: python benchmarks/search_variants.py --work DIR [--tolerance T] [--variants a,b] [--epochs E]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import npcompile  # noqa: E402
from npcompile.runtime.data import load_data  # noqa: E402
from npcompile.runtime.evaluate import make_evaluator  # noqa: E402
from npcompile.search.variants import VARIANTS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tolerance", type=float, default=2.0, help="points the search may lose on val.npz")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--val-size", type=int, default=1000, help="val.npz images the search evaluates")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs after the search (0: none)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    work = args.work
    original = onnx.load(str(work / "model.onnx"))
    val = load_data(work / "val.npz", original, labels="required")
    val_search = work / "val_search.npz"  # the first --val-size images of val.npz: what the search evaluates
    np.savez(val_search, **{k: v[:args.val_size] for k, v in val.inputs.items()}, labels=val.labels[:args.val_size])
    test = make_evaluator("accuracy", dataset=load_data(work / "eval.npz", original, labels="required"),
                          model=original, threads=args.threads)
    common = {"benchmark": False, "plots": False, "threads": args.threads}
    base_test = test.evaluate(original)
    stats0 = npcompile.inspect(original)["stats"]
    print(f"original: {stats0['params']:,} params, {stats0['flops'] / 1e6:.2f} MFLOPs, test {base_test:.2f} %, "
          f"search on {min(len(val), args.val_size)} val images, tolerance {args.tolerance}", flush=True)
    rows = []
    for name in args.variants.split(","):
        t0 = time.perf_counter()
        res = npcompile.compile(original, None, search="binary", search_variant=name, tolerance=args.tolerance,
                                eval=str(val_search), **common)
        took = time.perf_counter() - t0
        data = res.report["binary-search"]
        pruned = res.model
        test_pruned = test.evaluate(pruned)
        tuned = pruned
        if args.epochs:
            tuned = npcompile.compile(pruned, None, train=str(work / "train.npz"), epochs=args.epochs, lr=args.lr,
                                      **common).model
        stats = npcompile.inspect(tuned)["stats"]
        row = {"variant": name, "params_removed": 1 - stats["params"] / stats0["params"],
               "flops_removed": 1 - stats["flops"] / stats0["flops"], "val_before": data["baseline"],
               "val_after": data["final"], "test_before": base_test, "test_pruned": test_pruned,
               "test_finetuned": test.evaluate(tuned), "evaluations": data["evaluations"],
               "bound": data["evaluation_bound"], "log2_sum": data["log2_width_sum"], "search_seconds": took}
        rows.append(row)
        print(f"{name:13s} params -{100 * row['params_removed']:5.1f} %  FLOPs -{100 * row['flops_removed']:5.1f} %  "
              f"val {row['val_before']:.2f} -> {row['val_after']:.2f}  test {base_test:.2f} -> pruned "
              f"{test_pruned:.2f} ({test_pruned - base_test:+.2f}) -> fine-tuned {row['test_finetuned']:.2f} "
              f"({row['test_finetuned'] - base_test:+.2f})  evaluations {row['evaluations']} (bound {row['bound']}, "
              f"sum log2 {row['log2_sum']:.0f})  {took:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print()
    print("| variant | params removed | FLOPs removed | test acc pruned (change) | after fine-tuning (change) | "
          "evaluations | bound | Σ log2(width) | search time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {100 * r['params_removed']:.1f} % | {100 * r['flops_removed']:.1f} % | "
              f"{r['test_pruned']:.2f} ({r['test_pruned'] - base_test:+.2f}) | {r['test_finetuned']:.2f} "
              f"({r['test_finetuned'] - base_test:+.2f}) | {r['evaluations']} | {r['bound']} | {r['log2_sum']:.0f} | "
              f"{r['search_seconds']:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
