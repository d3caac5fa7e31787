"""Maxout relevance pruning of the maxout VGG (pair verification), then weight sparsity, with the
npcompile command line; prints the paper-style table.

Reads model.onnx, train.npz, calib.npz, pairs.npz from --work (what train.py wrote) and runs, in
that folder:

  neurons    maxout relevance pruning in --steps steps (one neuron leaves every maxout unit per
             step, k = 4 -> 4 - steps), each step fine-tuned on train.npz (the training classes'
             logits, cross-entropy):
               npcompile model.onnx --criterion maxout --calib calib.npz --train train.npz
                 --eval pairs.npz --evaluator verification --steps S --epochs E -o out/neurons
  +sparsity  on the result, global magnitude sparsity of --sparsity of the weights left, reached in
             --sparsity-steps steps, each fine-tuned (zeros held at zero):
               npcompile out/neurons/model.onnx --sparsity X --sparsity-steps N --sparsity-scope global
                 --train train.npz --eval pairs.npz --evaluator verification --epochs E -o out/sparse

Verification accuracy: the test pairs of pairs.npz (held-out classes) at the threshold chosen on
its validation pairs, from the cosine similarity of the "embedding" output; EER of the test pairs
beside it (npcompile.runtime.verification). Pruning never looks at the pairs: they only measure.

Usage: python examples/maxout_vgg_verification/run.py [--quick] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent
NEEDED = ("model.onnx", "train.npz", "calib.npz", "pairs.npz")


def npcompile(args: list[str], cwd: Path) -> tuple[dict, float, str]:
    """Run ``python -m npcompile ARGS`` in ``cwd``; report.json, seconds and the command shown."""
    cmd = [sys.executable, "-m", "npcompile", *args]
    shown = "npcompile " + " ".join(args)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"run.py: npcompile exited {r.returncode}: {shown}")
    out = args[args.index("-o") + 1]
    return json.loads((cwd / out / "report.json").read_text()), dt, shown


def verification(model_path: Path, pairs: Path) -> dict[str, float]:
    """Test accuracy, EER, threshold of a model on the pairs file."""
    from npcompile.runtime.verification import VerificationEvaluator

    model = onnx.load(str(model_path))
    return VerificationEvaluator.from_file(pairs, model).metrics(model)


def maxout_shape(report: dict) -> str:
    """units x k of the maxout layers, before -> after (the first conv and the first fc)."""
    units = [g for g in report["groups"] if g["op"] == "Maxout"]
    by_name = {g["name"]: g for g in report["groups"]}
    parts = []
    for u in units:
        n = by_name.get(u["name"].removesuffix(":units"))
        if n is None:
            continue
        parts.append((n["width_before"] // u["width_before"], n["width_after"] // max(u["width_after"], 1)))
    ks = sorted({p for p in parts})
    return ", ".join(f"k {a}->{b}" for a, b in ks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="train.py's output folder (default: work/ here)")
    ap.add_argument("--quick", action="store_true", help="the --quick model (work-quick/), 1 epoch per step")
    ap.add_argument("--steps", type=int, default=3, help="maxout pruning steps (k 4 -> 4 - steps)")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per step")
    ap.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate")
    ap.add_argument("--sparsity", type=float, default=0.5, help="global weight sparsity of what neurons leave")
    ap.add_argument("--sparsity-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    work = args.work or HERE / ("work-quick" if args.quick else "work")
    if args.quick:
        args.epochs = 1
    missing = [n for n in NEEDED if not (work / n).is_file()]
    if missing:
        print(f"error: {work} lacks {', '.join(missing)}; run train.py --out {work} first", file=sys.stderr)
        return 2
    ft = ["--train", "train.npz", "--epochs", str(args.epochs), "--lr", str(args.lr)]
    common = ["--eval", "pairs.npz", "--evaluator", "verification", "--threads", str(args.threads),
              "--no-plots", "--no-benchmark"]
    base = verification(work / "model.onnx", work / "pairs.npz")
    rows = []

    def row(name: str, out: str, rep: dict, dt: float, cmd: str, first: dict) -> None:
        m = verification(work / out / "model.onnx", work / "pairs.npz")
        s, s0 = rep["summary"], first["summary"]
        rows.append({"pruning": name, "command": cmd, "seconds": dt, "maxout": maxout_shape(first),
                     "params_before": s0["params_before"], "params_after": s["params_after"],
                     "nonzero_after": s["nonzero_params_after"], "flops_before": s0["flops_before"],
                     "flops_after": s["flops_after"],
                     "accuracy_before": base["accuracy"], "accuracy_after": m["accuracy"],
                     "eer_before": base["eer"], "eer_after": m["eer"]})

    rep_n, dt_n, cmd_n = npcompile(["model.onnx", "--criterion", "maxout", "--calib", "calib.npz", *ft,
                                    "--steps", str(args.steps), *common, "-o", "out/neurons"], work)
    row("maxout neurons", "out/neurons", rep_n, dt_n, cmd_n, rep_n)
    rep_s, dt_s, cmd_s = npcompile(["out/neurons/model.onnx", "--sparsity", str(args.sparsity), "--sparsity-steps",
                                    str(args.sparsity_steps), "--sparsity-scope", "global", *ft, *common,
                                    "-o", "out/sparse"], work)
    row("  + weight sparsity", "out/sparse", rep_s, dt_n + dt_s, cmd_s, rep_n)

    print(f"maxout VGG, pair verification on held-out Fashion-MNIST classes ({work})")
    head = (f"{'pruning':22s} {'maxout':>10s} {'params':>19s} {'removed':>8s} {'non-zero':>9s} {'FLOPs':>8s} "
            f"{'verification acc':>18s} {'change':>7s} {'EER':>15s} {'time':>6s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        removed = 1 - r["params_after"] / r["params_before"]
        nonzero = 1 - r["nonzero_after"] / r["params_before"]
        flops = 1 - r["flops_after"] / r["flops_before"]
        print(f"{r['pruning']:22s} {r['maxout']:>10s} {r['params_before']:>8,} -> {r['params_after']:>7,} "
              f"{100 * removed:7.1f}% {100 * nonzero:8.1f}% {100 * flops:7.1f}% "
              f"{r['accuracy_before']:6.2f} -> {r['accuracy_after']:6.2f} % "
              f"{r['accuracy_after'] - r['accuracy_before']:+7.2f} "
              f"{r['eer_before']:5.2f} -> {r['eer_after']:5.2f} % {r['seconds']:5.0f}s")
    print("(removed: dense parameters; non-zero: non-zero parameters removed; FLOPs: dense FLOPs removed; "
          "change: verification-accuracy points; time: npcompile wall clock, the sparse row including the "
          "neurons row it starts from)")
    for r in rows:
        print(f"  {r['pruning'].strip()}: {r['command']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
