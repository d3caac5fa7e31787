"""Prune the ViT that train.py made (attention heads + MLP neurons, optionally the hidden width)
with npcompile, fine-tune it, and print parameters, test accuracy, FLOPs and ONNX Runtime latency
before and after.

Reads model.onnx, train.npz, calib.npz and eval.npz from --work (what train.py wrote there) and
writes, under the same folder, one npcompile output per row (out/<row>/model.onnx, report.*),
and results.json with the figures of the table.

Rows:
  heads + MLP       ``npcompile.compile(model, ratio=0.5, train="train.npz", epochs=3, ...)``:
                    removes half of the heads of every attention block and of the MLP neurons of
                    every block (L1 magnitude; a head's score is the norm of its query, key, value
                    and output weights), then fine-tunes the ONNX graph on train.npz
  + hidden width    ``ratio=0.4`` with ``prune_hidden=True``: the residual stream (patch embedding,
                    class token, position embeddings, every LayerNorm, every projection's input,
                    the classifier's input) is one more group, scored by mean |activation| on
                    calib.npz (``criterion="mean-abs"``)

"encoder" parameters are those of the nodes of the encoder blocks (``/model/vit/layers.*``): the
attention and MLP projections and the blocks' LayerNorms. Accuracies are on eval.npz (the test
split), which neither the pruning nor the fine-tuning sees. Latency: ONNX Runtime on the CPU, one
thread, batch 1 and batch 64, the median of --runs timed runs.

Usage: python examples/vit_fashion/run.py [--quick] [--work DIR] [--threads N] [--runs N]
Train first: python examples/vit_fashion/train.py [--quick] --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import npcompile  # noqa: E402

HERE = Path(__file__).resolve().parent
NEEDED = ("model.onnx", "train.npz", "calib.npz", "eval.npz")
ENCODER = "/model/vit/layers."

#: (label, output folder, compile keywords); "ratio" is the total fraction removed after all steps
ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("heads + MLP", "heads_mlp", {"ratio": 0.5, "epochs": 3}),
    ("heads + MLP + hidden width", "heads_mlp_hidden",
     {"ratio": 0.4, "epochs": 3, "prune_hidden": True, "criterion": "mean-abs", "round_to": 8}),
]
QUICK_ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("heads + MLP", "heads_mlp", {"ratio": 0.5, "epochs": 2}),
    ("heads + MLP + hidden width", "heads_mlp_hidden",
     {"ratio": 0.4, "epochs": 2, "prune_hidden": True, "criterion": "mean-abs"}),
]


def encoder_params(model: onnx.ModelProto, prefix: str = ENCODER) -> int:
    """Parameters (float initializers, each counted once) read by the nodes whose name starts with
    ``prefix``: the encoder blocks of a legacy-exported Hugging Face ViT."""
    inits = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    used = {i for n in model.graph.node if n.name.startswith(prefix) for i in n.input if i in inits}
    return sum(int(np.prod(inits[i].dims)) for i in used)


def heads_per_block(report: dict) -> list[tuple[int, int]]:
    """(heads before, heads after) of every attention block, from the report's head groups."""
    return [(g["width_before"], g["width_after"]) for g in report["groups"] if g["op"] == "Heads"]


def latency_ms(model: onnx.ModelProto, batch: int, runs: int, threads: int) -> float:
    """Median ONNX Runtime (CPU) latency of one batch of ``batch`` images, in milliseconds."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
    for _ in range(max(3, runs // 10)):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "work", help="folder train.py wrote (default: work/ here)")
    ap.add_argument("--quick", action="store_true",
                    help="the CI form (train.py --quick models): 2 fine-tuning epochs, 20 timed runs")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime and PyTorch threads (default 1)")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per latency measurement")
    ap.add_argument("--rows", default=None, help="comma-separated row folders to run (default: all)")
    args = ap.parse_args(argv)
    missing = [f for f in NEEDED if not (args.work / f).is_file()]
    if missing:
        print(f"run.py: {', '.join(missing)} missing in {args.work}; run train.py --out {args.work}"
              f"{' --quick' if args.quick else ''} first", file=sys.stderr)
        return 2
    rows = QUICK_ROWS if args.quick else ROWS
    if args.rows:
        wanted = args.rows.split(",")
        rows = [r for r in rows if r[1] in wanted]
    if args.quick:
        args.runs = min(args.runs, 20)
    work = args.work
    original = onnx.load(str(work / "model.onnx"))
    enc0, stats0 = encoder_params(original), npcompile.inspect(original)["stats"]
    lat0 = {b: latency_ms(original, b, args.runs if b == 1 else max(10, args.runs // 10), args.threads)
            for b in (1, 64)}
    results: list[dict[str, Any]] = []
    for label, folder, kw in rows:
        t0 = time.perf_counter()
        data = {"train": str(work / "train.npz"), "eval": str(work / "eval.npz")}
        if kw.get("criterion") == "mean-abs" or kw.get("prune_hidden"):
            data["calib"] = str(work / "calib.npz")
        print(f"[{label}] npcompile.compile(model.onnx, {', '.join(f'{k}={v!r}' for k, v in kw.items())}, "
              f"train=train.npz, eval=eval.npz{', calib=calib.npz' if 'calib' in data else ''})", flush=True)
        result = npcompile.compile(str(work / "model.onnx"), work / "out" / folder, benchmark=False, plots=False,
                                   threads=args.threads, **data, **kw)
        seconds = time.perf_counter() - t0
        report = result.report
        pruned = result.model
        s, acc = report["summary"], report["accuracy"]
        row = {"pruning": label, "options": kw, "model": str(work / "out" / folder / "model.onnx"),
               "encoder_params_before": enc0, "encoder_params_after": encoder_params(pruned),
               "params_before": s["params_before"], "params_after": s["params_after"],
               "flops_before": s["flops_before"], "flops_after": s["flops_after"],
               "acc_before": acc["before"], "acc_after": acc["after"],
               "heads": heads_per_block(report), "seconds": seconds,
               "latency_before_ms": lat0, "latency_after_ms": {
                   b: latency_ms(pruned, b, args.runs if b == 1 else max(10, args.runs // 10), args.threads)
                   for b in (1, 64)}}
        results.append(row)
        print(f"  done in {seconds:.0f} s: encoder {row['encoder_params_before']:,} -> "
              f"{row['encoder_params_after']:,}, accuracy {row['acc_before']:.2f} -> {row['acc_after']:.2f} %",
              flush=True)
    print_table(results, stats0, enc0)
    with open(work / "results.json", "w") as f:
        json.dump(results, f, indent=2, default=str)
    return 0


def _pct(before: float, after: float) -> str:
    return f"{100.0 * (1.0 - after / before):5.1f} %"


def print_table(rows: list[dict[str, Any]], stats0: dict, enc0: int) -> None:
    """The before/after table of every row."""
    head = (f"{'pruning':28s} {'encoder params':>22s} {'removed':>8s} {'test accuracy':>17s} {'change':>7s} "
            f"{'MFLOPs':>15s} {'removed':>8s} {'ORT ms, batch 1':>16s} {'batch 64':>15s} {'time':>6s}")
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        l0, l1 = r["latency_before_ms"], r["latency_after_ms"]
        enc = f"{r['encoder_params_before']:,} -> {r['encoder_params_after']:,}"
        acc = f"{r['acc_before']:.2f} -> {r['acc_after']:.2f} %"
        flops = f"{r['flops_before'] / 1e6:.1f} -> {r['flops_after'] / 1e6:.1f}"
        lat1 = f"{l0[1]:.3f} -> {l1[1]:.3f}"
        lat64 = f"{l0[64]:.1f} -> {l1[64]:.1f}"
        print(f"{r['pruning']:28s} {enc:>22s} {_pct(r['encoder_params_before'], r['encoder_params_after']):>8s} "
              f"{acc:>17s} {r['acc_after'] - r['acc_before']:+7.2f} {flops:>15s} "
              f"{_pct(r['flops_before'], r['flops_after']):>8s} {lat1:>16s} {lat64:>15s} {r['seconds']:5.0f}s")
    for r in rows:
        heads = ", ".join(f"{a}->{b}" for a, b in r["heads"])
        print(f"heads per block, {r['pruning']}: {heads}")
    print(f"\nencoder: parameters of the {enc0:,} in the encoder blocks (of {stats0['params']:,} in the model); "
          "change: test-accuracy points; MFLOPs: per image (a multiply-add is 2 FLOPs); ORT ms: median "
          "ONNX Runtime CPU latency; time: npcompile wall clock (pruning + fine-tuning)")


if __name__ == "__main__":
    sys.exit(main())
