"""Compile time and latency against FLOPs on a BERT-base-sized graph (12 layers, hidden 768, 12
heads, MLP 3072; ``transformers.BertConfig()`` defaults, random weights, nothing downloaded),
exported by the legacy TorchScript exporter (opset 14, dynamic batch and sequence).

Prints, in one run:

1. **Compile time.** ``python -m npcompile bert.onnx --input-shape input_ids:1x128 --no-benchmark``
   (the lossless default, and ``--ratio 0.3``) against ``onnx.load`` +
   ``onnx.checker.check_model(full_check=True)`` + ``onnx.save`` of the same model, both as fresh
   subprocesses (interpreter start-up and imports included), best of ``--repeat``; and npcompile's
   own timings (load, passes, verify, build) of the ``--ratio 0.3`` run.
2. **Latency against FLOPs.** ``--ratio 0.3`` and ``0.5`` (heads and MLP neurons of every block):
   the FLOPs and parameter reduction, and the ONNX Runtime CPU latency (batch 1, sequence 128,
   ``--threads`` threads) of the original and the pruned models measured here, interleaved in
   rounds so that drift of a noisy CPU hits all models alike; the latency reduction divided by the
   FLOPs reduction (the goal: >= 0.9).

It also reads ``/proc/stat`` to tell how much CPU other processes took while it measured.
A measurement script, not a test: nothing is asserted. Needs torch and transformers
(``pip install -e '.[dev]'``). ``python benchmarks/bert_base.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from compile_speed import BackgroundLoad, cpu_model, print_background  # noqa: E402

import npcompile  # noqa: E402
from npcompile.runtime.verify import make_session  # noqa: E402

RATIOS = (0.3, 0.5)
GOAL_COMPILE_X = 3.0
GOAL_LAT_VS_FLOPS = 0.9
SEQ = 128
SHAPE = f"input_ids:1x{SEQ}"
BASELINE_SNIPPET = ("import sys, onnx; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); "
                    "onnx.save(m, sys.argv[2])")


def build_bert(workdir: Path) -> tuple[Path, float]:
    """Export a random-weight BERT-base (``BertModel``, eager attention) to ``workdir/bert.onnx``."""
    import torch
    from transformers import BertConfig, BertModel

    class Wrapped(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids).last_hidden_state

    path = workdir / "bert.onnx"
    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = BertConfig(attn_implementation="eager")
    model = Wrapped(BertModel(cfg)).eval()
    x = torch.randint(0, cfg.vocab_size, (1, SEQ))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=14, input_names=["input_ids"],
                          output_names=["output"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}})
    return path, time.perf_counter() - t0


def _timed_run(cmd: list[str], what: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{what} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    return time.perf_counter() - t0


def compile_time(model: Path, workdir: Path, repeat: int) -> dict[str, Any]:
    """Best-of-``repeat`` subprocess timings of npcompile (lossless, --ratio 0.3) and the baseline."""
    runs: dict[str, list[float]] = {"lossless": [], "ratio 0.3": [], "baseline": []}
    background = []
    for i in range(repeat):
        with BackgroundLoad() as bg:
            runs["baseline"].append(_timed_run([sys.executable, "-c", BASELINE_SNIPPET, str(model),
                                                str(workdir / f"copy-{i}.onnx")], "load + check + save"))
            runs["lossless"].append(_timed_run([sys.executable, "-m", "npcompile", str(model), "--input-shape", SHAPE,
                                                "--no-benchmark", "--no-plots", "-q", "-o",
                                                str(workdir / f"lossless-{i}")], "npcompile (lossless)"))
            runs["ratio 0.3"].append(_timed_run([sys.executable, "-m", "npcompile", str(model), "--input-shape",
                                                 SHAPE, "--ratio", "0.3", "--no-benchmark", "--no-plots", "-q",
                                                 "-o", str(workdir / f"ratio-{i}")], "npcompile (--ratio 0.3)"))
        background.append(bg.fraction)
    report = json.loads((workdir / f"ratio-{int(np.argmin(runs['ratio 0.3']))}" / "report.json").read_text())
    return {"repeat": repeat, "seconds": runs, "best": {k: min(v) for k, v in runs.items()},
            "background_cpu": background, "timings": report["timings"],
            "passes": {p["name"]: p["seconds"] for p in report["passes"]}}


def print_compile(ct: dict[str, Any]) -> None:
    best = ct["best"]
    print(f"\n== Compile time (BERT-base, {SHAPE}, --no-benchmark; subprocesses, best of {ct['repeat']}) ==")
    print(f"  load + check_model(full_check=True) + save: {best['baseline']:6.2f} s")
    for k in ("lossless", "ratio 0.3"):
        x = best[k] / best["baseline"]
        met = "met" if x <= GOAL_COMPILE_X else "NOT met"
        print(f"  npcompile, {k:9s}:                    {best[k]:6.2f} s  {x:5.2f}x   "
              f"goal <= {GOAL_COMPILE_X:g}x: {met}")
    t = ct["timings"]
    print("  --ratio 0.3 breakdown (npcompile's report): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
          + "; passes: " + ", ".join(f"{k} {v:.2f} s" for k, v in ct["passes"].items()))
    for f in ct["background_cpu"]:
        print_background(f, "compile timings")


def latency_vs_flops(model: Path, workdir: Path, threads: int, rounds: int, runs: int) -> dict[str, Any]:
    """Compile at every ratio, then time the original and the pruned models in interleaved rounds."""
    models: dict[str, Any] = {"original": str(model)}
    stats: dict[str, dict[str, Any]] = {}
    for r in RATIOS:
        res = npcompile.compile(str(model), workdir / f"lat-{r}", ratio=r, benchmark=False, plots=False,
                                input_shapes={"input_ids": (1, SEQ)}, threads=threads)
        s = res.report["summary"]
        heads = [(g["width_before"], g["width_after"]) for g in res.report["groups"] if g["op"] == "Heads"]
        mlp = [(g["width_before"], g["width_after"]) for g in res.report["groups"]
               if g["op"] in ("MatMul", "Gemm") and "intermediate" in g["name"]]
        stats[str(r)] = {"flops_reduction": s["flops_reduction"], "param_reduction": s["param_reduction"],
                         "heads": heads, "mlp": mlp}
        models[str(r)] = str(workdir / f"lat-{r}" / "model.onnx")
    x = {"input_ids": np.random.default_rng(0).integers(0, 30522, (1, SEQ)).astype(np.int64)}
    sessions = {k: make_session(v, threads) for k, v in models.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    with BackgroundLoad() as bg:
        for s in sessions.values():
            for _ in range(3):
                s.run(None, x)
        for _ in range(rounds):
            for k, s in sessions.items():
                for _ in range(runs):
                    t0 = time.perf_counter()
                    s.run(None, x)
                    times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["original"])
    for r in RATIOS:
        st = stats[str(r)]
        st["latency_ms"] = 1000 * statistics.median(times[str(r)])
        st["latency_reduction"] = 1.0 - statistics.median(times[str(r)]) / base
        st["latency_vs_flops"] = st["latency_reduction"] / st["flops_reduction"]
    return {"threads": threads, "rounds": rounds, "runs": runs, "original_ms": 1000 * base, "ratios": stats,
            "background_cpu": bg.fraction}


def print_latency(lat: dict[str, Any]) -> None:
    print(f"\n== ONNX Runtime latency against FLOPs (CPU, batch 1, sequence {SEQ}, {lat['threads']} thread(s), "
          f"median of {lat['rounds']} x {lat['runs']} interleaved runs) ==")
    print(f"  original: {lat['original_ms']:.1f} ms")
    print(f"  {'ratio':>5} {'params':>8} {'FLOPs':>8} {'latency':>10} {'latency':>8} {'lat/FLOPs':>9}  "
          "heads / MLP per block")
    for r, st in lat["ratios"].items():
        met = "met" if st["latency_vs_flops"] >= GOAL_LAT_VS_FLOPS else "NOT met"
        heads = sorted({b for _, b in st["heads"]})
        mlp = sorted({b for _, b in st["mlp"]})
        print(f"  {r:>5} {-100 * st['param_reduction']:7.1f}% {-100 * st['flops_reduction']:7.1f}% "
              f"{st['latency_ms']:8.1f}ms {-100 * st['latency_reduction']:7.1f}% {st['latency_vs_flops']:9.2f}  "
              f"heads {heads} of 12, MLP {mlp} of 3072   goal >= {GOAL_LAT_VS_FLOPS:g}: {met}")
    print_background(lat["background_cpu"], "latency timings")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="folder for the model and outputs (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=2, help="compile-time repetitions (best of)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the latency runs")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=4, help="timed runs per model and round")
    ap.add_argument("--skip-compile-time", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="npcompile-bert-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = work / "bert.onnx"
        if not model.exists():
            model, export_s = build_bert(work)
            print(f"exported BERT-base to {model} ({model.stat().st_size / 2**20:.0f} MiB) in {export_s:.0f} s")
        m = onnx.load(str(model), load_external_data=False)
        print(f"{sum(int(np.prod(t.dims)) for t in m.graph.initializer):,} parameters, {len(m.graph.node)} nodes; "
              f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"onnx {onnx.__version__}, {datetime.date.today()}")
        del m
        out: dict[str, Any] = {}
        if not args.skip_compile_time:
            out["compile_time"] = compile_time(model, work, args.repeat)
            print_compile(out["compile_time"])
        if not args.skip_latency:
            out["latency"] = latency_vs_flops(model, work, args.threads, args.rounds, args.runs)
            print_latency(out["latency"])
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
