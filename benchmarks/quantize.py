"""Quantization after pruning on the shipped examples: size, accuracy and ONNX Runtime CPU latency.

For LeNet-5 on MNIST (``examples/lenet_mnist``: ``model.onnx``, ``calib.npz``, ``eval.npz``) and
the VGG-style Fashion-MNIST net (``examples/binary_search_vgg``: run its ``train.py`` first, which
writes ``work/model.onnx``, ``train.npz``, ``val.npz`` and ``eval.npz``), in one run:

1. **pruned float**: ``npcompile.compile(model, ratio=--ratio, reconstruct=True, calib=...)``
   (magnitude, then least-squares reconstruction of the layers after the removed channels on the
   calibration images: recovery without training; ``--no-reconstruct`` for plain deletion);
2. that model quantized by the ``quantize`` pass (``npcompile.pipeline``), each variant from the
   same pruned model: ``int8`` (static QDQ, per-channel symmetric int8 weights, uint8 activations,
   MinMax calibration), ``int8 per-tensor`` (the same with one scale per weight tensor, what ONNX
   Runtime's CPU kernels run fastest), ``int8 percentile`` (per-channel, Percentile 99.999
   calibration), ``int8-dynamic`` and ``fp16``.

Calibration: LeNet's ``calib.npz`` (256 training images), VGG's first ``--calib`` images of
``val.npz`` (held-out training images). Accuracy: ``eval.npz`` (test images: 1,000 / 2,000).

Per row: the file size (``SerializeToString``) and its ratio to the pruned float file (goal for
int8: at most 0.3), test accuracy and its change against the pruned float model in points (goal:
within 0.5), and ONNX Runtime CPU latency (one session per model, all graph optimizations,
``--threads`` intra-op threads, p50 of ``--rounds`` rounds of ``--runs`` runs, the models'
order rotating every round, batch 1 and 32) with the speedup over the pruned float model (goal
for int8 at batch 32, on a CPU with VNNI or AMX: at least 2x). It prints the CPU features ONNX
Runtime can use (``npcompile.targets.ort.cpu_features``).

    python examples/binary_search_vgg/train.py       # once: the VGG model and its data (~6 min)
    python benchmarks/quantize.py                     # ~2-3 minutes on 2 busy cores
    python benchmarks/quantize.py --only lenet --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "examples" / "lenet_mnist"
VGG = ROOT / "examples" / "binary_search_vgg" / "work"

#: variant -> quantize pass options (None: the pruned float model itself)
VARIANTS: dict[str, dict | None] = {
    "pruned float": None,
    "int8": {"scheme": "int8"},
    "int8 per-tensor": {"scheme": "int8", "per_channel": False},
    "int8 percentile": {"scheme": "int8", "method": "percentile"},
    "int8-dynamic": {"scheme": "int8-dynamic"},
    "fp16": {"scheme": "fp16"},
}


def _pruned(name: str, model: Path, calib: Path, ratio: float, reconstruct: bool, threads: int) -> onnx.ModelProto:
    import npcompile

    kw = {"reconstruct": True, "calib": str(calib)} if reconstruct else {}
    return npcompile.compile(str(model), None, ratio=ratio, threads=threads, benchmark=False, **kw).model


def _quantized(model: onnx.ModelProto, options: dict, calib) -> tuple[onnx.ModelProto, dict]:
    from npcompile.graph.shapes import probe_shapes
    from npcompile.passes.quantize import QuantizePass
    from npcompile.pipeline import Context, Pipeline

    ctx = Context(model, probe_shapes(model))
    p = QuantizePass(calib=calib if options["scheme"] == "int8" else None, **options)
    Pipeline([p]).run(ctx)
    return ctx.model, ctx.results["quantize"].data


def _accuracy(model: onnx.ModelProto, dataset) -> float:
    from npcompile.runtime.verify import make_session

    session = make_session(model, 0)
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    hits = 0
    for feeds, labels in dataset.batches(256):
        out = session.run(None, {k: v.astype(types[k]) for k, v in feeds.items()})[0]
        hits += int((out.argmax(1) == labels).sum())
    return 100.0 * hits / len(dataset)


def _latencies(models: dict[str, onnx.ModelProto], x: np.ndarray, batch: int, threads: int, rounds: int,
               runs: int) -> dict[str, float]:
    from npcompile.runtime.verify import make_session

    sessions = {k: make_session(m, threads) for k, m in models.items()}
    feeds = {k: {m.graph.input[0].name: x[:batch].astype(onnx.helper.tensor_dtype_to_np_dtype(
        m.graph.input[0].type.tensor_type.elem_type))} for k, m in models.items()}
    samples: dict[str, list[float]] = {k: [] for k in models}
    names = list(models)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            s, f = sessions[k], feeds[k]
            for _ in range(2):
                s.run(None, f)
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, f)
                samples[k].append(time.perf_counter() - t0)
    return {k: float(np.percentile(v, 50)) * 1e3 for k, v in samples.items()}


def bench(name: str, model_path: Path, calib_path: Path, eval_path: Path, args: argparse.Namespace,
          reconstruct: bool, calib_take: int | None) -> dict:
    from npcompile.runtime.data import load_data

    original = onnx.load(model_path)
    calib = load_data(calib_path, original, labels="ignore", what="calibration data")
    if calib_take:
        calib = calib.take(calib_take)
    test = load_data(eval_path, original, labels="required", what="evaluation data")
    with tempfile.TemporaryDirectory() as tmp:
        calib_file = Path(tmp) / "calib.npz"
        np.savez(calib_file, **calib.inputs)
        t0 = time.perf_counter()
        pruned = _pruned(name, model_path, calib_file, args.ratio, reconstruct, args.threads)
    prune_s = time.perf_counter() - t0
    models: dict[str, onnx.ModelProto] = {}
    records: dict[str, dict] = {}
    for variant, options in VARIANTS.items():
        if options is None:
            models[variant] = pruned
            continue
        t0 = time.perf_counter()
        models[variant], records[variant] = _quantized(pruned, options, calib)
        records[variant]["bench_seconds"] = time.perf_counter() - t0
    x = test.inputs[original.graph.input[0].name]
    lat = {b: _latencies(models, x, b, args.threads, args.rounds, args.runs) for b in (1, 32)}
    base_size = len(pruned.SerializeToString())
    base_acc = _accuracy(pruned, test)
    rows = []
    for variant, model in models.items():
        size = len(model.SerializeToString())
        acc = base_acc if variant == "pruned float" else _accuracy(model, test)
        rows.append({"variant": variant, "bytes": size, "size_ratio": size / base_size, "accuracy": acc,
                     "accuracy_change": acc - base_acc,
                     **{f"p50_ms_b{b}": lat[b][variant] for b in lat},
                     **{f"speedup_b{b}": lat[b]["pruned float"] / lat[b][variant] for b in lat},
                     "quantized_nodes": records.get(variant, {}).get("nodes", {}).get("quantized"),
                     "float_nodes": records.get(variant, {}).get("nodes", {}).get("float")})
    return {"name": name, "original_bytes": len(original.SerializeToString()), "original_accuracy":
            _accuracy(original, test), "ratio": args.ratio, "reconstruct": reconstruct, "prune_seconds": prune_s,
            "test_images": len(test), "calib_images": len(calib), "rows": rows}


def _print(result: dict) -> None:
    print(f"\n## {result['name']}: original {result['original_bytes'] / 1e3:.1f} kB, "
          f"{result['original_accuracy']:.2f} % on {result['test_images']} test images; pruned with --ratio "
          f"{result['ratio']}{' + reconstruct' if result['reconstruct'] else ''}; calibration: "
          f"{result['calib_images']} images\n")
    print("| model | size kB | size / pruned | test acc % | change (points) | batch 1 ms | speedup | "
          "batch 32 ms | speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(f"| {r['variant']} | {r['bytes'] / 1e3:.1f} | {r['size_ratio']:.3f} | {r['accuracy']:.2f} | "
              f"{r['accuracy_change']:+.2f} | {r['p50_ms_b1']:.3f} | {r['speedup_b1']:.2f}x | "
              f"{r['p50_ms_b32']:.3f} | {r['speedup_b32']:.2f}x |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.3, help="channels to prune per group (default 0.3)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--calib", type=int, default=512, help="VGG calibration images from val.npz")
    ap.add_argument("--only", choices=("lenet", "vgg"), default=None)
    ap.add_argument("--no-reconstruct", action="store_true", help="prune without least-squares recovery")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    import onnxruntime

    from npcompile.targets.ort import cpu_features

    feats = cpu_features()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; ONNX Runtime "
          f"{onnxruntime.__version__} can use: {', '.join(feats['features']) or 'no SIMD extensions found'}; "
          f"int8 kernels: {feats['int8']}; {args.threads} thread(s)")
    results = []
    if args.only in (None, "lenet"):
        results.append(bench("LeNet-5 (MNIST)", LENET / "model.onnx", LENET / "calib.npz", LENET / "eval.npz", args,
                             reconstruct=not args.no_reconstruct, calib_take=None))
        _print(results[-1])
    if args.only in (None, "vgg"):
        if not (VGG / "model.onnx").is_file():
            print(f"\n(VGG skipped: {VGG / 'model.onnx'} is missing; run python examples/binary_search_vgg/train.py)")
        else:
            results.append(bench("VGG-16 narrow (Fashion-MNIST)", VGG / "model.onnx", VGG / "val.npz",
                                 VGG / "eval.npz", args, reconstruct=not args.no_reconstruct, calib_take=args.calib))
            _print(results[-1])
    if args.json:
        args.json.write_text(json.dumps({"cpu": feats, "threads": args.threads, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
