"""How good the per-layer latency model is, and whether ``--target-latency`` plans beat uniform
``--ratio`` plans at the same FLOPs (issue 18).

For ResNet-50 (torchvision's definition, random weights, BatchNorm statistics randomized) and the
VGG-style network of ``examples/binary_search_vgg`` (random weights), on ONNX Runtime's CPU provider
at each thread count and batch size asked for, it prints:

1. the time to build the latency model (isolated layers timed, calibration on the whole graph);
2. its prediction error for whole pruned models: ``|predicted - measured| / measured`` for uniform
   plans (``--ratio`` 0.3 and 0.5 at ``--round-to`` 1 and the target's default) and for the
   ``--target-latency`` plans (goal: median <= 10 %);
3. latency reduction / FLOPs reduction of each ``--target-latency`` plan against a uniform plan at
   the same FLOPs (``--ratio`` found by bisection, the target's default rounding; goal >= 1.0),
   and by the latency model that of each group's steps alone and of every group at its narrowest
   (what the layers that do not shrink, and per-call overhead, leave);
4. the machine's load while it measured, and the cores other processes used then (a busy machine
   makes every figure noisier; "busy" marks a comparison during which others used over a quarter).

Every measured latency is the original and the pruned model in interleaved rounds
(:func:`npcompile.runtime.timing.compare`). A measurement script, not a test: nothing is asserted.
Needs the torch extra. ``--quick``: ResNet-50 at batch 1 only, a coarser grid.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples" / "binary_search_vgg"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from npcompile.channels.cost import CostModel  # noqa: E402
from npcompile.channels.masked import prune_copy  # noqa: E402
from npcompile.channels.select import select_ratio  # noqa: E402
from npcompile.graph.shapes import probe_shapes  # noqa: E402
from npcompile.importance.magnitude import group_magnitude  # noqa: E402
from npcompile.passes.latency import LatencyBudgetPass, predict_ms  # noqa: E402
from npcompile.pipeline import Context  # noqa: E402
from npcompile.runtime.latency_model import weight_axes  # noqa: E402
from npcompile.runtime.timing import StableOptions, compare, machine_load  # noqa: E402
from npcompile.runtime.verify import probe_inputs  # noqa: E402
from npcompile.search.levels import lowest_mask  # noqa: E402
from npcompile.targets.ort import cpu_vector_width  # noqa: E402

GOAL_ERROR = 0.10
GOAL_RATIO = 1.0


def _encoder_class() -> type:
    import torch
    from torch import nn

    class Encoder(nn.Module):
        """A 4-layer transformer encoder (d 256, 8 heads, MLP 1024) over 128 tokens of 64 features."""

        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Linear(64, 256)
            layer = nn.TransformerEncoderLayer(256, 8, 1024, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
            self.head = nn.Linear(256, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.enc(self.emb(x)).mean(1))

    return Encoder


def Encoder() -> Any:  # noqa: N802 - a model constructor, like the others
    return _encoder_class()()


def export(name: str, batch: int, workdir: Path) -> Path:
    """The model as ONNX at a static batch size."""
    import torch
    import zoo

    torch.manual_seed(0)
    if name == "resnet50":
        model, shape = zoo.randomize_bn(zoo.resnet50()), (batch, 3, 224, 224)
    elif name == "encoder":
        model, shape = Encoder(), (batch, 128, 64)
        torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel does not export
    else:
        from train import VGG

        model, shape = zoo.randomize_bn(VGG()), (batch, 1, 32, 32)
    path = workdir / f"{name}.onnx"  # a dynamic batch dimension: the batch is the probe's
    zoo.export(model.eval(), shape, path, dynamo=False, opset=17 if name == "encoder" else None)
    return path


def fresh(path: Path, batch: int) -> Context:
    model = onnx.load(str(path))
    dims = [d.dim_value or batch for d in model.graph.input[0].type.tensor_type.shape.dim]
    ctx = Context(model, probe_shapes(model, {model.graph.input[0].name: tuple([batch, *dims[1:]])}))
    ctx.scores = {g.id: group_magnitude(ctx.analysis, g, 1) for g in ctx.analysis.prunable_groups()}
    return ctx


def uniform_at_flops(ctx: Context, cm: CostModel, flops: float, round_to: int) -> tuple[dict, float]:
    """The uniform ratio (steps of 0.01) whose FLOPs are closest to ``flops``: rounding makes the
    FLOPs a staircase of the ratio, so a bisection would stop at a jump."""
    best: tuple[float, dict, float] | None = None
    for r in np.arange(0.0, 0.96, 0.01):
        removal = select_ratio(ctx.analysis.groups, ctx.scores, float(r), round_to)
        gap = abs(cm.cost(removal).flops - flops)
        if best is None or gap < best[0]:
            best = (gap, removal, float(r))
    return best[1], best[2]


def step_ratios(ctx: Context, lb: LatencyBudgetPass, model: Any, cm: CostModel, step: int) -> dict[str, Any]:
    """By the latency model: latency reduction / FLOPs reduction of every plannable width of every
    group alone (``steps``: (ratio, group, width), best first), and of the floor, every group at
    its narrowest plannable width (what the layers that do not shrink leave)."""
    groups = [g for g in ctx.analysis.prunable_groups() if g.id in ctx.scores]
    axes = weight_axes(ctx.analysis)
    steps, _ = lb.steps(ctx, groups, model, axes, step)

    def ratio(rem: dict) -> tuple[float, float, float]:
        flops = cm.cost(rem).flops / cm.base.flops
        lat = predict_ms(ctx, model, axes, rem) / model.t_full
        return (1 - lat) / max(1 - flops, 1e-9), lat, flops

    out = []
    for g in groups:
        for w in steps[g.id][1:]:
            r, _, flops = ratio({g.id: lowest_mask(g, ctx.scores[g.id], g.size // g.blocks - w)})
            if flops < 1 - 1e-3:
                out.append((r, g.name, w * g.blocks))
    floor = {g.id: lowest_mask(g, ctx.scores[g.id], g.size // g.blocks - steps[g.id][-1])
             for g in groups if len(steps[g.id]) > 1}
    r, lat, flops = ratio(floor)
    return {"steps": sorted(out, reverse=True), "floor": {"ratio": r, "latency": lat, "flops": flops}}


def one_config(name: str, path: Path, batch: int, threads: int, levels: int, targets: list[float], seconds: float,
               cache: Path) -> dict[str, Any]:
    ctx = fresh(path, batch)
    feeds = probe_inputs(ctx.model, ctx.probe, batch=None, seed=0)
    lb = LatencyBudgetPass(0.5, threads=threads, cache=str(cache), levels=levels, max_seconds=seconds)
    groups = ctx.analysis.prunable_groups()
    t0 = time.perf_counter()
    model, where = lb._model(ctx, feeds, groups)
    build_s = time.perf_counter() - t0
    axes = weight_axes(ctx.analysis)
    cm = CostModel(ctx.analysis, ctx.shapes)
    stable = StableOptions(runs=10, warmup=3, precision=0.02, max_rounds=10, max_seconds=seconds)
    original = lb.runner(ctx.model, feeds)
    lanes = cpu_vector_width()[0]

    def measure(removal: dict) -> dict[str, Any]:
        pruned = prune_copy(ctx.model, ctx.analysis, removal, ctx.probe)
        cmp = compare(original, lb.runner(pruned, feeds), stable)
        frac = 1 / cmp["speedup"]
        pred = predict_ms(ctx, model, axes, removal) / model.t_full
        flops = cm.cost(removal).flops / cm.base.flops
        return {"measured": frac, "low": 1 / cmp["speedup_high"], "high": 1 / cmp["speedup_low"],
                "predicted": pred, "flops": flops, "error": abs(pred - frac) / frac, "busy": cmp["load"]["busy"],
                "others": cmp["load"].get("others"),
                "lat_vs_flops": (1 - frac) / (1 - flops) if flops < 1 else None}

    rows = []
    for ratio in (0.3, 0.5):
        for rt in (1, lanes):
            rows.append({"plan": f"ratio {ratio} round-to {rt}",
                         **measure(select_ratio(ctx.analysis.groups, ctx.scores, ratio, rt))})
    pairs = []
    for target in targets:
        c = fresh(path, batch)
        p = LatencyBudgetPass(target, threads=threads, cache=str(cache), levels=levels, max_seconds=seconds)
        p.run(c)
        plan = measure(c.removal)
        plan["plan"] = f"target-latency {target}"
        rows.append(plan)
        uni_removal, r = uniform_at_flops(ctx, cm, plan["flops"] * cm.base.flops, lanes)
        uni = {"plan": f"uniform ratio {r:.3f} round-to {lanes} (same FLOPs)", **measure(uni_removal)}
        rows.append(uni)
        pairs.append({"target": target, "plan": plan, "uniform": uni})
    return {"model": name, "threads": threads, "build_s": build_s, "reused": where["reused"],
            "layers": model.info.get("layers"), "timed": model.info.get("timed_subgraphs"), "kappa": model.kappa,
            "t_full_ms": model.t_full, "rows": rows, "pairs": pairs,
            "steps": step_ratios(ctx, lb, model, cm, where["step"])}


def print_config(res: dict[str, Any], batch: int) -> None:
    print(f"\n== {res['model']} batch {batch}, {res['threads']} thread(s): whole model {res['t_full_ms']:.2f} ms; "
          f"latency model {res['build_s']:.1f} s ({res['layers']} layers, {res['timed']} subgraphs timed, "
          f"calibration {res['kappa']:.2f}{', cached' if res['reused'] else ''})")
    print(f"  {'plan':44s} {'FLOPs kept':>10s} {'predicted':>9s} {'measured (95 % interval)':>25s} "
          f"{'error':>6s} {'lat/FLOPs':>9s}")
    for r in res["rows"]:
        lvf = f"{r['lat_vs_flops']:.2f}" if r["lat_vs_flops"] is not None else "n/a"
        print(f"  {r['plan']:44s} {r['flops']:10.3f} {r['predicted']:9.3f} "
              f"{r['measured']:8.3f} ({r['low']:.3f}-{r['high']:.3f}) {100 * r['error']:5.1f}% {lvf:>9s}"
              f"{' busy' if r['busy'] else ''}")
    if res["steps"]["steps"]:
        (top, name, width), fl = res["steps"]["steps"][0], res["steps"]["floor"]
        print(f"  latency model, latency/FLOPs reduction: one group's step alone best {top:.2f} ({name} to {width}), "
              f"median {statistics.median(r for r, _, _ in res['steps']['steps']):.2f} over "
              f"{len(res['steps']['steps'])}; every group at its narrowest {fl['ratio']:.2f} "
              f"(latency {fl['latency']:.3f}, FLOPs {fl['flops']:.3f})")
    for p in res["pairs"]:
        a, b = p["plan"]["lat_vs_flops"], p["uniform"]["lat_vs_flops"]
        if a is not None and b is not None:
            print(f"  target-latency {p['target']}: latency/FLOPs reduction {a:.2f} vs uniform {b:.2f} "
                  f"(goal >= {GOAL_RATIO:.1f}; measured latency {p['plan']['measured']:.3f} vs "
                  f"{p['uniform']['measured']:.3f} at FLOPs {p['plan']['flops']:.3f} vs {p['uniform']['flops']:.3f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,vgg",
                    help="resnet50, vgg, encoder (a 4-layer transformer encoder; comma-separated)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--targets", default="0.5,0.7", help="--target-latency fractions to plan")
    ap.add_argument("--levels", type=int, default=8, help="grid points per layer axis")
    ap.add_argument("--seconds", type=float, default=20.0, help="cap of one latency comparison")
    ap.add_argument("--quick", action="store_true", help="ResNet-50 at batch 1 only, 4 grid levels, one target")
    args = ap.parse_args(argv)
    models = args.models.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    levels = args.levels
    if args.quick:
        levels, targets = 4, targets[:1]
    load = [machine_load()]
    print(f"machine: {load[0]['cores']} cores, load {load[0]['load1']} at the start")
    errors, aligned, ratios, uni_ratios, best_ratios, all_rows = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in models:
            for batch in batches:
                if args.quick and name == "resnet50" and batch != 1:
                    continue
                path = work / f"{name}.onnx"
                if not path.exists():
                    export(name, batch, work)
                for t in threads:
                    res = one_config(name, path, batch, t, levels, targets, args.seconds, work / "cache")
                    load.append(machine_load())
                    print_config(res, batch)
                    errors += [r["error"] for r in res["rows"]]
                    all_rows += res["rows"]
                    aligned += [r["error"] for r in res["rows"] if not r["plan"].endswith("round-to 1")]
                    best_ratios.append(res["steps"]["floor"]["ratio"])
                    for p in res["pairs"]:
                        if p["plan"]["lat_vs_flops"] is not None:
                            ratios.append(p["plan"]["lat_vs_flops"])
                            uni_ratios.append(p["uniform"]["lat_vs_flops"])
                    sys.stdout.flush()
    print("\n== summary")
    if errors:
        print(f"  prediction error |predicted - measured| / measured: median {100 * statistics.median(errors):.1f} % "
              f"over {len(errors)} pruned models (goal <= {100 * GOAL_ERROR:.0f} %), max {100 * max(errors):.1f} %")
    if aligned:
        print(f"  ... of plans at widths the latency budget may take (not round-to 1): median "
              f"{100 * statistics.median(aligned):.1f} % over {len(aligned)}")
    if ratios:
        print(f"  latency/FLOPs reduction: target-latency plans median {statistics.median(ratios):.2f}, uniform at "
              f"the same FLOPs {statistics.median(uni_ratios):.2f} (goal >= {GOAL_RATIO:.1f})")
    if best_ratios:
        print(f"  ... by the latency model, every group at its narrowest plannable width: median "
              f"{statistics.median(best_ratios):.2f}, max {max(best_ratios):.2f} (the layers that do not shrink)")
    loads = [x["load1"] for x in load if x["load1"] is not None]
    if loads:
        others = [r["others"] for r in all_rows if r.get("others") is not None]
        busy = any(r["busy"] for r in all_rows)
        print(f"  machine load {min(loads):.2f}-{max(loads):.2f} on {load[0]['cores']} cores (this script's own "
              f"threads included)" + (f"; other processes used at most {max(others):.2f} cores while it measured"
                                      if others else "")
              + (" -- busy: other work was running; the timings are noisy" if busy else ""))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
