"""Execution backends: sensitivity analysis and binary search on 1 process, local workers, Ray.

On the VGG-style network of ``examples/binary_search_vgg`` (its architecture; random weights with
BatchNorm statistics randomized by ``tests/zoo.randomize_bn``, so channels differ, and
``--samples`` random 32x32 images, the example's padded Fashion-MNIST size, scored by top-1
agreement with the original model: a probe costs what a real evaluation set of that size costs),
this script runs, in one run:

1. the ``sensitivity`` pass (every group at several levels, each group's sweep independent) and
2. the ``binary-search`` pass (with W workers, the W most likely nodes of a group's decision tree
   probed at once),

in-process, on 1 and on ``--workers`` local worker processes, and on a local Ray cluster
(``ray.init(num_cpus=W)``) with W workers. It prints wall time, probes and rounds, checks that
every backend decided the same (tables, plans and the pruned model's bytes), and checks a model of
the wall time against every measured point before projecting it to 8 and 64 workers::

    sensitivity:    T(W) = ceil(P / W) x (t_probe + o)
    binary search:  T(W) = rounds(W) x (t_probe + o)

``t_probe`` is the in-process time per probe (same ONNX Runtime threads as one worker), ``P`` the
probes, ``o`` the backend's dispatch cost per task, measured on its own with no-op tasks (not
fitted from the runs it predicts), and ``rounds(W)`` the rounds the search takes with W workers,
computed from the sequential search's outcome (``npcompile.execution.bisect.rounds_for``; for the
measured W it must equal the measured rounds). The projection assumes a core per worker, as on a
cluster; on this 2-core machine the driver and the workers share two cores with whatever else
runs, which the check against the measured points shows. Nothing is asserted: it is a measurement
script. Needs torch (and ray for the Ray row).

Usage: python benchmarks/distributed.py [--samples 1000] [--workers 2] [--no-ray]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import zoo  # noqa: E402

import npcompile.passes.search as search_pass  # noqa: E402
from npcompile.execution import make_backend  # noqa: E402
from npcompile.execution.backend import Backend  # noqa: E402
from npcompile.execution.bisect import rounds_for  # noqa: E402
from npcompile.execution.local import LocalProcesses  # noqa: E402
from npcompile.graph.model_io import load_model  # noqa: E402
from npcompile.graph.shapes import probe_shapes  # noqa: E402
from npcompile.passes.magnitude import MagnitudePass  # noqa: E402
from npcompile.passes.prune import PrunePass  # noqa: E402
from npcompile.passes.search import BinarySearchPass, SensitivityPass  # noqa: E402
from npcompile.pipeline import Context  # noqa: E402
from npcompile.runtime.data import Dataset  # noqa: E402
from npcompile.runtime.evaluate import FidelityEvaluator  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75)
OUTCOMES: list[tuple[int, int]] = []  # (levels, chosen level) of each group's search, in order


def _recording(search: Any) -> Any:
    def wrapped(n: int, *args: Any, **kwargs: Any) -> Any:
        found = search(n, *args, **kwargs)
        OUTCOMES.append((n, found.level))
        return found

    return wrapped


search_pass.search_levels = _recording(search_pass.search_levels)


def vgg_model(tmp: Path) -> Path:
    """The example's VGG-style network exported to ONNX (random weights, randomized BN)."""
    import torch

    spec = importlib.util.spec_from_file_location("vgg_train", ROOT / "examples" / "binary_search_vgg" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = zoo.randomize_bn(mod.VGG().eval())
    path = tmp / "vgg.onnx"
    torch.onnx.export(net, torch.zeros(1, 1, 32, 32), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def dispatch_cost(backend: Backend, tasks: int) -> float:
    """Seconds of backend overhead per task: ``tasks`` no-op tasks (after a warm-up round that starts
    the workers), divided into rounds of ``workers`` at once."""
    backend.map(abs, [0] * backend.workers)
    t0 = time.perf_counter()
    for _ in range(max(1, tasks // backend.workers)):
        backend.map(abs, list(range(backend.workers)))
    return (time.perf_counter() - t0) / max(1, tasks // backend.workers)


def run_backend(model: Any, ev: FidelityEvaluator, backend: Backend, threads: int) -> dict[str, Any]:
    """Both passes on one backend: wall times, probes, rounds and everything decided."""
    out: dict[str, Any] = {"overhead": dispatch_cost(backend, 40) if backend.remote else 0.0}
    for name, make in (("sensitivity", lambda: SensitivityPass(evaluator=ev, fractions=FRACTIONS, threads=threads)),
                       ("binary-search", lambda: BinarySearchPass(tolerance=1.0, evaluator=ev, threads=threads))):
        ctx = Context(model, probe_shapes(model))
        ctx.backend = backend
        MagnitudePass().run(ctx)
        OUTCOMES.clear()
        t0 = time.perf_counter()
        data = make().run(ctx).data
        wall = time.perf_counter() - t0
        entry: dict[str, Any] = {"wall": wall, "data": data, "outcomes": list(OUTCOMES),
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


def predict(phase: str, entry: dict[str, Any], base: dict[str, Any], workers: int, t_probe: float,
            overhead: float) -> tuple[float, int]:
    """The modelled wall time at ``workers`` (and the rounds it assumes)."""
    if phase == "sensitivity":
        rounds = math.ceil(base["probes"] / workers)
    else:
        rounds, _ = rounds_for(base["outcomes"], workers)
    return rounds * (t_probe + overhead), rounds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000, help="evaluation images per probe")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="ONNX Runtime threads per evaluation, in-process and in each worker (1: one core each)")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(str(vgg_model(Path(tmp))))
        x = np.random.default_rng(0).standard_normal((args.samples, 1, 32, 32)).astype(np.float32)
        ev = FidelityEvaluator.from_model(Dataset({"input": x}, None, "random"), model, "top1", batch_size=250,
                                         threads=args.threads)
        t0 = time.perf_counter()
        ev.evaluate(model)
        plain = time.perf_counter() - t0
        rows: list[tuple[str, int, dict[str, Any]]] = []
        with make_backend(0, None) as b:
            rows.append(("in-process", 1, run_backend(model, ev, b, args.threads)))
        with LocalProcesses(1) as b:
            rows.append(("1 local worker", 1, run_backend(model, ev, b, args.threads)))
        with make_backend(args.workers, None) as b:
            rows.append((f"{args.workers} local workers", args.workers, run_backend(model, ev, b, args.threads)))
        if not args.no_ray and importlib.util.find_spec("ray") is not None:
            import ray

            ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            try:
                with make_backend(args.workers, "auto") as b:
                    rows.append((f"Ray, {args.workers} workers", args.workers, run_backend(model, ev, b, args.threads)))
            finally:
                ray.shutdown()
    base = rows[0][2]
    print(f"VGG-style net, {args.samples} evaluation images per probe, {args.threads} ORT thread(s) per "
          f"evaluation; one plain evaluation {plain * 1e3:.0f} ms; {os.cpu_count()} cores, load average "
          f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    for phase in ("sensitivity", "binary-search"):
        t_probe = base[phase]["wall"] / max(1, base[phase]["probes"])
        print(f"\n{phase}: in-process t_probe = {t_probe * 1e3:.1f} ms, {base[phase]['probes']} probes")
        print(f"{'backend':<20}{'o ms':>7}{'wall s':>8}{'probes':>8}{'rounds':>8}{'model s':>9}{'meas/model':>11}"
              f"{'same':>6}{'T(8) s':>8}{'T(64) s':>9}")
        for label, w, r in rows:
            e = r[phase]
            o = r["overhead"]
            model_s, model_rounds = predict(phase, e, base[phase], w, t_probe, o)
            if phase == "binary-search" and e["rounds"] is not None and model_rounds != e["rounds"]:
                print(f"  (rounds_for predicted {model_rounds} rounds, the search took {e['rounds']})")
            proj = [predict(phase, e, base[phase], n, t_probe, o)[0] for n in (8, 64)] if r is not base else None
            same = decisions(r) == decisions(base)
            projected = f"{proj[0]:>8.2f}{proj[1]:>9.2f}" if proj else f"{'-':>8}{'-':>9}"
            print(f"{label:<20}{o * 1e3:>7.1f}{e['wall']:>8.2f}{e['probes']:>8}{str(e['rounds']):>8}"
                  f"{model_s:>9.2f}{e['wall'] / model_s:>11.2f}{'yes' if same else 'NO':>6}{projected}")
    print("\nspeedup over in-process: " + ", ".join(
        f"{label} sensitivity {base['sensitivity']['wall'] / r['sensitivity']['wall']:.2f}x, "
        f"search {base['binary-search']['wall'] / r['binary-search']['wall']:.2f}x" for label, _, r in rows[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
