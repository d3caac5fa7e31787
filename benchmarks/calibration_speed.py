"""Calibration time against plain ONNX Runtime inference over the same data.

For each model, in one run:

- **plain**: one ONNX Runtime session of the model (the settings calibration uses), run over the
  data set in batches, outputs discarded;
- **calibration**: what the ``apoz`` / ``mean-abs`` and ``maxout`` analyses run: one session of
  a copy exposing the tensors they need, over the same batches, every batch folded into the
  running statistics (zeros, |x| sums per channel; maxout win counts).

Both loops exclude building the session (reported separately). Repeats are interleaved so drift of
a noisy CPU hits both alike; the best of ``--repeat`` is compared. Goal: calibration at most 1.5×
plain inference. Models: the shipped LeNet-5 with its ``calib.npz``; a VGG-style and a ResNet
from ``tests/zoo.py`` on 32×32 inputs; a half-width ResNet-50 on 96×96; a three-layer
convolutional maxout network on 32×32 and Goodfellow et al.'s MNIST maxout MLP (2 × 240 units of 5).

It is a measurement script, not a test: nothing is asserted. Needs the torch extra.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from npcompile.graph.model_io import load_model  # noqa: E402
from npcompile.graph.shapes import probe_shapes  # noqa: E402
from npcompile.importance.activation import tensor_rank  # noqa: E402
from npcompile.pipeline import Context  # noqa: E402
from npcompile.runtime.calibrate import Calibrator, SlotStats, WinCounts, group_inputs, nonnegative  # noqa: E402
from npcompile.runtime.data import Dataset, load_data  # noqa: E402
from npcompile.runtime.verify import make_session  # noqa: E402

GOAL = 1.5


def maxout_net():
    import torch
    from torch import nn

    class Maxout(nn.Module):
        def __init__(self, cin: int, units: int, k: int) -> None:
            super().__init__()
            self.conv, self.units, self.k = nn.Conv2d(cin, units * k, 3, padding=1), units, k

        def forward(self, x):
            h = self.conv(x)
            n, _, hh, ww = h.shape
            return h.view(n, self.units, self.k, hh, ww).amax(2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(Maxout(3, 32, 4), nn.MaxPool2d(2), Maxout(32, 64, 4), nn.MaxPool2d(2),
                                      Maxout(64, 64, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    return Net().eval()


def maxout_mlp():
    """Goodfellow et al.'s permutation-invariant MNIST maxout MLP: 2 x (240 units of 5), then 10."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(784, 1200), nn.Linear(240, 1200), nn.Linear(240, 10)

        def forward(self, x):
            n = x.shape[0]
            h = self.fc1(x).view(n, 240, 5).amax(-1)
            h = self.fc2(h).view(n, 240, 5).amax(-1)
            return self.out(h)

    torch.manual_seed(0)
    return Net().eval()


def build_models(workdir: Path, samples: int) -> list[tuple[str, onnx.ModelProto, Dataset]]:
    import torch
    import zoo

    rng = np.random.default_rng(0)
    lenet = load_model(ROOT / "examples/lenet_mnist/model.onnx")
    out = [("lenet (calib.npz)", lenet, load_data(ROOT / "examples/lenet_mnist/calib.npz", lenet, labels="ignore"))]
    for name in ("vgg", "resnet_basic"):
        torch.manual_seed(0)
        builder, shape = zoo.ZOO[name]
        path = workdir / f"{name}.onnx"
        zoo.export(zoo.randomize_bn(builder(), 0), shape, path, dynamo=False)
        x = rng.standard_normal((samples, *shape[1:])).astype(np.float32)
        out.append((f"{name} 32x32", load_model(path), Dataset({"input": x})))
    torch.manual_seed(0)
    path = workdir / "resnet50.onnx"
    zoo.export(zoo.randomize_bn(zoo.resnet50(width=32), 0), (1, 3, 96, 96), path, dynamo=False)
    x = rng.standard_normal((max(samples // 8, 16), 3, 96, 96)).astype(np.float32)
    out.append(("resnet50/2 96x96", load_model(path), Dataset({"input": x})))
    path = workdir / "maxout.onnx"
    zoo.export(maxout_net(), (2, 3, 32, 32), path, dynamo=False)
    x = rng.standard_normal((samples, 3, 32, 32)).astype(np.float32)
    out.append(("conv maxout 32x32", load_model(path), Dataset({"input": x})))
    path = workdir / "maxout_mlp.onnx"
    zoo.export(maxout_mlp(), (2, 784), path, dynamo=False)
    x = rng.standard_normal((samples * 4, 784)).astype(np.float32)
    out.append(("maxout MLP 784", load_model(path), Dataset({"input": x})))
    return out


def analyses(model: onnx.ModelProto) -> dict[str, list]:
    """The accumulators each calibration analysis builds (as its pass does)."""
    analysis = Context(model, probe_shapes(model)).analysis
    out: dict[str, list] = {}
    for crit in ("apoz", "mean-abs"):
        accs: dict[str, SlotStats] = {}
        for g in analysis.prunable_groups():
            for name, dim in group_inputs(analysis, g):
                accs.setdefault(name, SlotStats(name, dim.axis, dim.layout, zeros=crit == "apoz",
                                                abs_sum=crit != "apoz", shape=analysis.shapes.get(name),
                                                 nonnegative=nonnegative(analysis, name)))
        out[crit] = list(accs.values())
    if analysis.links:
        out["maxout"] = [WinCounts(lk.tensor, lk.axis, lk.k, lk.n_units, lk.split, tensor_rank(analysis, lk.tensor))
                         for lk in analysis.links]
    return out


def measure(model: onnx.ModelProto, data: Dataset, batch: int, repeat: int, threads: int, accs: list) -> dict:
    t0 = time.perf_counter()
    plain = make_session(model, threads=threads)
    plain_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    cal = Calibrator(model, (), batch, accumulators=accs, threads=threads, progress=False)
    cal_build = time.perf_counter() - t0
    names = [i.name for i in plain.get_inputs()]
    tensors = {t for a in accs for t in a.tensors}

    def run_plain() -> None:
        for feeds, _ in data.batches(batch):
            plain.run(None, {k: feeds[k] for k in names})

    def run_cal() -> None:
        cal.run(data)

    run_plain(), run_cal()  # warm-up
    tp, tc = [], []
    for _ in range(repeat):
        for fn, times in ((run_plain, tp), (run_cal, tc)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"tensors": len(tensors), "plain_s": min(tp), "calib_s": min(tc),
            "ratio": min(tc) / min(tp), "plain_build_s": plain_build, "calib_build_s": cal_build}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1024, help="random samples for the zoo models (default 1024)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    args = ap.parse_args()
    import onnxruntime as ort

    print(f"calibration vs plain ONNX Runtime inference — batch {args.batch_size}, best of {args.repeat}, "
          f"threads {args.threads or 'all'}; {platform.machine()}, onnxruntime {ort.__version__}, "
          f"numpy {np.__version__}")
    print(f"{'model':<20} {'analysis':<9} {'samples':>7} {'tensors':>7} {'plain s':>9} {'calib s':>9} "
          f"{'ratio':>6}  {'goal':>4}  session build plain/calib s")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, data in build_models(Path(tmp), args.samples):
            for crit, accs in analyses(model).items():
                r = measure(model, data, args.batch_size, args.repeat, args.threads, accs)
                worst = max(worst, r["ratio"])
                print(f"{name:<20} {crit:<9} {len(data):>7} {r['tensors']:>7} {r['plain_s']:>9.4f} "
                      f"{r['calib_s']:>9.4f} {r['ratio']:>5.2f}x  {'ok' if r['ratio'] <= GOAL else 'MISS':>4}  "
                      f"{r['plain_build_s']:.3f}/{r['calib_build_s']:.3f}")
    print(f"worst ratio {worst:.2f}x (goal <= {GOAL}x)")


if __name__ == "__main__":
    main()
