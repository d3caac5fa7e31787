"""Binary-search neuron pruning (Zhang, Qin, Chan, ICONIP 2017) against uniform magnitude pruning
at the same FLOPs, on the narrow VGG-16 that train.py made, both fine-tuned the same way.

Reads model.onnx, train.npz, val.npz and eval.npz from --out (what train.py wrote there) and
writes, under the same folder:
  search/round1/{pruned,finetuned}/...   each npcompile.compile output (model.onnx, report.*)
  uniform/{pruned,finetuned}/...
  results.json, results.md               the figures of the table this script prints

(1) Binary search: for each channel group in topological order, the largest number of its
    lowest-magnitude channels whose removal keeps the validation accuracy (val.npz) within
    --tolerance points of the unpruned model's, then --epochs of fine-tuning on train.npz;
    --rounds repeats search + fine-tuning on the result.
(2) Uniform: the same fraction of every group removed by L1 magnitude (``ratio``), the ratio found
    by bisection so that the FLOPs match (1)'s, then the same fine-tuning (--rounds x --epochs).

Accuracies in the table are on the test images of eval.npz, which neither the search nor the
fine-tuning sees.

Usage: python examples/binary_search_vgg/run.py [--quick] [--out DIR] [--tolerance T] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# see train.py: waiting OpenMP threads sleep rather than spin on a shared machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import onnx  # noqa: E402

import npcompile  # noqa: E402
from npcompile.runtime.data import load_data  # noqa: E402
from npcompile.runtime.evaluate import make_evaluator  # noqa: E402

HERE = Path(__file__).resolve().parent
NEEDED = ("model.onnx", "train.npz", "val.npz", "eval.npz")


class Experiment:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.original = onnx.load(str(self.out / "model.onnx"))
        self.common = {"benchmark": False, "plots": False, "threads": args.threads}
        dataset = load_data(self.out / "eval.npz", self.original, labels="required", what="test data")
        self.test = make_evaluator("accuracy", dataset=dataset, model=self.original, threads=args.threads)
        self.stats0 = npcompile.inspect(self.original)["stats"]

    def say(self, msg: str) -> None:
        print(msg, flush=True)

    def test_accuracy(self, model: onnx.ModelProto) -> float:
        return self.test.evaluate(model)

    def compile(self, model: onnx.ModelProto | Path, outdir: Path, **kw: Any) -> npcompile.CompileResult:
        t0 = time.perf_counter()
        result = npcompile.compile(model if isinstance(model, onnx.ModelProto) else str(model), outdir,
                                   **self.common, **kw)
        s = result.report["summary"]
        took = time.perf_counter() - t0
        self.say(f"  {outdir.relative_to(self.out)}: {s['params_after']:,} params (-{self.removed(s, 'params')}), "
                 f"{s['flops_after'] / 1e6:.2f} MFLOPs (-{self.removed(s, 'flops')}) ({took:.0f} s)")
        return result

    def removed(self, summary: dict[str, Any], key: str) -> str:
        """Share of the original model's ``params`` or ``flops`` that ``summary``'s model lacks."""
        return f"{100 * (1 - summary[key + '_after'] / self.stats0[key]):.1f} %"

    def finetune(self, model: onnx.ModelProto, outdir: Path, epochs: int) -> onnx.ModelProto:
        a = self.args
        # no selection option: the lossless passes (provably zero channels go) and then fine-tuning
        return self.compile(model, outdir, train=str(self.out / "train.npz"), epochs=epochs, lr=a.lr,
                            batch_size=a.batch_size, optimizer=a.optimizer).model

    # -- the two methods -------------------------------------------------------------------------
    def search(self) -> dict[str, Any]:
        a = self.args
        model = self.original
        rounds = []
        for r in range(1, a.rounds + 1):
            self.say(f"binary search, round {r}/{a.rounds}: tolerance {a.tolerance} points on val.npz")
            base = self.out / "search" / f"round{r}"
            res = self.compile(model, base / "pruned", search="binary", tolerance=a.tolerance,
                               search_variant=a.search_variant, eval=str(self.out / "val.npz"))
            pruned = res.model
            acc_pruned = self.test_accuracy(pruned)
            model = self.finetune(pruned, base / "finetuned", a.epochs)
            stats = npcompile.inspect(model)["stats"]
            rounds.append({"round": r, "params": stats["params"], "flops": stats["flops"],
                           "val_before": res.report["accuracy"]["before"],
                           "val_pruned": res.report["accuracy"]["after"],
                           "test_pruned": acc_pruned, "test_finetuned": self.test_accuracy(model)})
            self.say(f"  test accuracy: pruned {acc_pruned:.2f} %, fine-tuned {rounds[-1]['test_finetuned']:.2f} %")
        return {"model": model, "rounds": rounds, "test_pruned": rounds[-1]["test_pruned"],
                "test_finetuned": rounds[-1]["test_finetuned"]}

    def uniform(self, flops_target: float) -> dict[str, Any]:
        """Bisection on the ratio for the FLOPs of ``flops_target`` (kept FLOPs), then fine-tuning."""
        a = self.args
        self.say(f"uniform magnitude pruning: bisection on the ratio for {flops_target / 1e6:.2f} MFLOPs")

        def flops_at(ratio: float) -> float:
            # FLOPs as fine-tuning will see them: its compile first removes the channels that are
            # provably zero (lossless), which the ratio may have left in place
            pruned = npcompile.compile(self.original, None, ratio=ratio, **self.common).model
            return npcompile.compile(pruned, None, **self.common).report["summary"]["flops_after"]

        lo, hi = 0.0, 0.95
        best = (abs(flops_at(0.0) - flops_target), 0.0)
        for _ in range(a.bisect_steps):
            mid = (lo + hi) / 2
            f = flops_at(mid)
            best = min(best, (abs(f - flops_target), mid))
            if f > flops_target:
                lo = mid
            else:
                hi = mid
        ratio = round(best[1], 4)
        base = self.out / "uniform"
        res = self.compile(self.original, base / "pruned", ratio=ratio, eval=str(self.out / "val.npz"))
        acc_pruned = self.test_accuracy(res.model)
        model = self.finetune(res.model, base / "finetuned", a.epochs * a.rounds)
        acc = self.test_accuracy(model)
        self.say(f"  ratio {ratio}: test accuracy pruned {acc_pruned:.2f} %, fine-tuned {acc:.2f} %")
        return {"model": model, "ratio": ratio, "test_pruned": acc_pruned, "test_finetuned": acc}


def widths(model: onnx.ModelProto) -> tuple[list[tuple[str, str, int, bool]], dict[str, Any]]:
    info = npcompile.inspect(model)
    return [(g["name"], g["op"], g["width"], g["prunable"]) for g in info["groups"]], info["stats"]


def table(rows: list[list[str]], header: list[str]) -> str:
    cols = [header, *rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "work", help="train.py's output folder (default: work/ here)")
    ap.add_argument("--quick", action="store_true", help="tiny settings for CI (with train.py --quick)")
    ap.add_argument("--tolerance", type=float, default=1.0, help="accuracy points the search may lose on val.npz")
    ap.add_argument("--rounds", type=int, default=2, help="search + fine-tuning rounds")
    ap.add_argument("--search-variant", default="paper",
                    help="schedule of the search (paper: the paper's in-order form; share: npcompile's default)")
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per round")
    ap.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")
    ap.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--bisect-steps", type=int, default=10, help="bisection steps on the uniform ratio")
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs, args.bisect_steps = 1, 1, 6
    missing = [n for n in NEEDED if not (args.out / n).is_file()]
    if missing:
        print(f"error: {args.out} lacks {', '.join(missing)}; run train.py --out {args.out} first", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    exp = Experiment(args)
    base_acc = exp.test_accuracy(exp.original)
    groups0, stats0 = widths(exp.original)
    print(f"original: {stats0['params']:,} parameters, {stats0['flops'] / 1e6:.2f} MFLOPs, "
          f"test accuracy {base_acc:.2f} % ({exp.test.samples} images)", flush=True)
    search = exp.search()
    groups_s, stats_s = widths(search["model"])
    uniform = exp.uniform(stats_s["flops"])
    groups_u, stats_u = widths(uniform["model"])

    by_name_s = {g[0]: g[2] for g in groups_s}
    by_name_u = {g[0]: g[2] for g in groups_u}
    layer_rows = [[name, op, str(w), str(by_name_s.get(name, "?")), str(by_name_u.get(name, "?"))]
                  for name, op, w, _ in groups0]
    layers = table(layer_rows, ["layer (channel group)", "op", "original", "binary search", "uniform"])

    def row(name: str, stats: dict[str, Any], res: dict[str, Any] | None) -> list[str]:
        pr = 1 - stats["params"] / stats0["params"]
        fr = 1 - stats["flops"] / stats0["flops"]
        pruned = "" if res is None else f"{res['test_pruned']:.2f}"
        acc = base_acc if res is None else res["test_finetuned"]
        return [name, f"{stats['params']:,}", f"{100 * pr:.1f} %", f"{stats['flops'] / 1e6:.2f}M", f"{100 * fr:.1f} %",
                pruned, f"{acc:.2f}", f"{acc - base_acc:+.2f}"]

    label = f"binary search ({args.search_variant}, tolerance {args.tolerance}, {args.rounds} round(s))"
    summary_rows = [row("original", stats0, None),
                    row(label, stats_s, search),
                    row(f"uniform magnitude (ratio {uniform['ratio']})", stats_u, uniform)]
    summary = table(summary_rows, ["model", "params", "params removed", "FLOPs", "FLOPs removed",
                                   "test acc pruned", "test acc fine-tuned", "change (points)"])
    round_rows = [[str(r["round"]), f"{r['params']:,}", f"{100 * (1 - r['params'] / stats0['params']):.1f} %",
                   f"{r['flops'] / 1e6:.2f}M", f"{100 * (1 - r['flops'] / stats0['flops']):.1f} %",
                   f"{r['val_before']:.2f}", f"{r['val_pruned']:.2f}", f"{r['test_pruned']:.2f}",
                   f"{r['test_finetuned']:.2f}"] for r in search["rounds"]]
    rounds = table(round_rows, ["round", "params", "params removed", "FLOPs", "FLOPs removed", "val acc before",
                                "val acc searched", "test acc searched", "test acc fine-tuned"])
    elapsed = time.perf_counter() - t0
    settings = (f"tolerance {args.tolerance} points on val.npz, {args.rounds} round(s) x {args.epochs} "
                f"fine-tuning epoch(s) ({args.optimizer}, lr {args.lr}, batch {args.batch_size}); "
                f"uniform: {args.rounds * args.epochs} epoch(s); run.py took {elapsed:.0f} s")
    text = (f"## Per-layer widths\n\n{layers}\n\n## Binary search rounds (search on val.npz, then fine-tuning)\n\n"
            f"{rounds}\n\n## Results ({settings})\n\n{summary}\n")
    print()
    print(text)
    (args.out / "results.md").write_text(text)
    results = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": elapsed,
        "original": {"params": stats0["params"], "flops": stats0["flops"], "test_accuracy": base_acc,
                     "test_samples": exp.test.samples},
        "widths": [{"group": n, "op": op, "original": w, "search": by_name_s.get(n), "uniform": by_name_u.get(n)}
                   for n, op, w, _ in groups0],
    }
    for key, stats, res in (("search", stats_s, search), ("uniform", stats_u, uniform)):
        results[key] = {"params": stats["params"], "flops": stats["flops"],
                        "param_reduction": 1 - stats["params"] / stats0["params"],
                        "flops_reduction": 1 - stats["flops"] / stats0["flops"],
                        **{k: v for k, v in res.items() if k != "model"}}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out / 'results.md'} and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
