"""Execution backends: sensitivity analysis and binary search on 1 process, N local workers, Ray.

On the VGG-style network of ``examples/binary_search_vgg`` (its architecture; random weights with
randomized BatchNorm statistics, so channels differ, and ``--samples`` random 32x32 images, the
example's padded Fashion-MNIST size, scored by top-1 agreement with the original model: a probe
costs what a real evaluation set of that size costs), this script runs, in one process and one run:

1. the ``sensitivity`` pass (every group at several levels, each group's sweep independent) and
2. the ``binary-search`` pass (with W workers, W levels of a group probed at once),

on the in-process backend, on ``--workers`` local worker processes and on a local Ray cluster
(``ray.init(num_cpus=W)``) with W workers; it prints wall time, probes, time per probe and the
task overhead per probe, checks that every backend decided the same (tables, plans and the pruned
model's bytes), and projects the wall time for 8 and 64 workers::

    T(W) = probes x t_probe / W + probes x overhead      (sensitivity: all probes independent)
    T(W) = rounds(W) x (t_probe + overhead)               (binary search: one round at a time)

where ``t_probe`` is the in-process time per probe and ``overhead`` the per-probe cost measured on
the backend at W workers (fitted from that one measured point, so the projection is not yet checked
against a second measured worker count). It is a measurement script, not a test: nothing is
asserted. Needs torch (and ray for the Ray row).

Usage: python benchmarks/distributed.py [--samples 2000] [--workers 2] [--no-ray]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from npcompile.execution import make_backend  # noqa: E402
from npcompile.graph.model_io import load_model  # noqa: E402
from npcompile.graph.shapes import probe_shapes  # noqa: E402
from npcompile.passes.magnitude import MagnitudePass  # noqa: E402
from npcompile.passes.prune import PrunePass  # noqa: E402
from npcompile.passes.search import BinarySearchPass, SensitivityPass  # noqa: E402
from npcompile.pipeline import Context  # noqa: E402
from npcompile.runtime.data import Dataset  # noqa: E402
from npcompile.runtime.evaluate import FidelityEvaluator  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75)


def vgg_model(tmp: Path) -> Path:
    """The example's VGG-style network exported to ONNX (random weights, randomized BN)."""
    import torch

    spec = importlib.util.spec_from_file_location("vgg_train", ROOT / "examples" / "binary_search_vgg" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.VGG().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.2, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    path = tmp / "vgg.onnx"
    torch.onnx.export(net, torch.zeros(1, 1, 32, 32), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def run_backend(model, ev: FidelityEvaluator, workers: int, ray: str | None) -> dict[str, Any]:
    """Both passes on one backend: wall times, probes and everything decided."""
    out: dict[str, Any] = {}
    with make_backend(workers, ray) as backend:
        for name, make in (("sensitivity", lambda: SensitivityPass(evaluator=ev, fractions=FRACTIONS)),
                           ("binary-search", lambda: BinarySearchPass(tolerance=1.0, evaluator=ev))):
            ctx = Context(model, probe_shapes(model))
            ctx.backend = backend
            MagnitudePass().run(ctx)
            t0 = time.perf_counter()
            data = make().run(ctx).data
            wall = time.perf_counter() - t0
            entry: dict[str, Any] = {"wall": wall, "data": data,
                                     "removal": {int(k): np.flatnonzero(v).tolist() for k, v in ctx.removal.items()}}
            entry["probes"] = int(data["evaluations"])
            entry["rounds"] = data.get("rounds")
            if name == "binary-search":
                PrunePass().run(ctx)
                entry["model"] = ctx.model.SerializeToString()
            out[name] = entry
    return out


def decisions(r: dict[str, Any]) -> tuple:
    s, b = r["sensitivity"], r["binary-search"]
    return (repr(s["data"]["table"]), repr(b["removal"]), b["model"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000, help="evaluation images per probe")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="ONNX Runtime threads per evaluation (1: the in-process row uses one core, each worker one)")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(str(vgg_model(Path(tmp))))
        x = np.random.default_rng(0).standard_normal((args.samples, 1, 32, 32)).astype(np.float32)
        ev = FidelityEvaluator.from_model(Dataset({"input": x}, None, "random"), model, "top1", batch_size=250,
                                         threads=args.threads)
        t0 = time.perf_counter()
        ev.evaluate(model)
        plain = time.perf_counter() - t0
        rows: list[tuple[str, int, dict[str, Any]]] = [("in-process", 1, run_backend(model, ev, 0, None))]
        rows.append((f"{args.workers} local workers", args.workers, run_backend(model, ev, args.workers, None)))
        if not args.no_ray and importlib.util.find_spec("ray") is not None:
            import ray

            ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            try:
                rows.append((f"Ray, {args.workers} workers", args.workers,
                             run_backend(model, ev, args.workers, "auto")))
            finally:
                ray.shutdown()
    base = rows[0][2]
    print(f"VGG-style net, {args.samples} evaluation images per probe, {args.threads} ORT thread(s) per "
          f"evaluation; one plain evaluation {plain * 1e3:.0f} ms")
    for phase in ("sensitivity", "binary-search"):
        t_probe = base[phase]["wall"] / max(1, base[phase]["probes"])
        print(f"\n{phase}: in-process time per probe t_probe = {t_probe * 1e3:.1f} ms")
        print(f"{'backend':<22}{'wall s':>8}{'probes':>8}{'s/probe':>9}{'overhead ms':>13}"
              f"{'rounds':>7}{'same':>6}{'T(8) s':>9}{'T(64) s':>9}")
        for label, w, r in rows:
            e = r[phase]
            p = max(1, e["probes"])
            if phase == "sensitivity":
                over = max(0.0, (e["wall"] - p * t_probe / w) / p) if w > 1 else 0.0
                proj = [p * t_probe / n + p * over for n in (8, 64)]
            else:
                # one round at a time (W levels of a group at once): rounds x (t_probe + overhead);
                # with W workers a group of n levels takes ~log_(W+1) n rounds instead of log2 n
                rounds = max(1, int(e["rounds"] or p))
                over = max(0.0, e["wall"] / rounds - t_probe) if w > 1 else 0.0
                seq = max(1, int(base[phase]["rounds"] or base[phase]["probes"]))
                proj = [seq * math.log(2) / math.log(n + 1) * (t_probe + over) for n in (8, 64)]
            same = decisions(r) == decisions(base)
            projected = f"{proj[0]:>9.2f}{proj[1]:>9.2f}" if w > 1 else f"{'-':>9}{'-':>9}"
            print(f"{label:<22}{e['wall']:>8.2f}{e['probes']:>8}{e['wall'] / p:>9.3f}{over * 1e3:>13.1f}"
                  f"{str(e['rounds']):>7}{'yes' if same else 'NO':>6}{projected}")
    print("\nspeedup over in-process: " + ", ".join(
        f"{label} sensitivity {base['sensitivity']['wall'] / r['sensitivity']['wall']:.2f}x, "
        f"search {base['binary-search']['wall'] / r['binary-search']['wall']:.2f}x" for label, _, r in rows[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
