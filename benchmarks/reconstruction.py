"""Training-free accuracy recovery on trained networks: magnitude pruning alone against magnitude
pruning followed by least-squares reconstruction, bias compensation and BatchNorm re-estimation.

Trains a LeNet-5 (``tests/zoo.py``'s ``lenet``), a VGG-style CNN with BatchNorm (``zoo.VGG``
16-M-32-32-M-64-64-M, one input channel, 128-unit classifier) and a small ResNet (``zoo.ResNet``,
BasicBlock 1-1-1, width 16, a 3x3 stride-2 stem for one input channel) briefly on Fashion-MNIST
(``apt-get install -y dataset-fashion-mnist``: Adam, one-cycle learning rate, ``--train`` images,
``--epochs``), exports them with the legacy exporter *without* constant folding (so
BatchNormalization stays a node), and compiles each with 30 % and 50 % of its FLOPs to remove
(``magnitude`` + ``budget`` with ``target_flops`` 0.7 and 0.5; the budget steps whole channels, so
the FLOPs column gives what was removed; no fine-tuning). The same selection is then finished by
each pipeline (``npcompile.compile`` with a pipeline file):

| column | passes after ``magnitude`` + ``budget`` |
|---|---|
| magnitude | ``prune`` |
| +BN | ``prune``, ``bn-recalibrate`` |
| +bias | ``bias-compensate`` |
| +bias+BN | ``bias-compensate``, ``bn-recalibrate`` |
| +LS(cons) | ``reconstruct`` with ``scope = "consumers"`` (only the layers reading removed channels) |
| +LS | ``reconstruct`` (default: those and every weight layer after them) |
| +LS+BN | ``reconstruct``, ``bn-recalibrate`` |
| sel+LS | ``reconstruct-select`` (same counts per group), ``reconstruct`` |
| sel+LS+BN | ``reconstruct-select``, ``reconstruct``, ``bn-recalibrate`` |

Calibration data: the last ``--calib`` training images, unlabelled and not used by the training
run; accuracy: the first ``--test`` test images. ``recovered`` is (+LS − magnitude) / (original −
magnitude), the share of the accuracy magnitude pruning lost that the default ``reconstruct``
pass recovers (and the same for the best reconstruction column); the goal is at least 0.5.
``LS time`` is the ``reconstruct`` pass of the +LS column against ``1 pass``: one ONNX Runtime pass
of the calibration images through the original model. ``layer err`` is the mean over refit
layers of the relative squared error of their outputs on the calibration data, with the plain
pruned weights and after the refit (the report's ``reconstruction.layers``).

    python benchmarks/reconstruction.py                     # about 8-10 minutes on 2 busy cores
    python benchmarks/reconstruction.py --cache /tmp/rc     # keeps the trained models for a rerun
    python benchmarks/reconstruction.py --quick             # smaller data and training, ~3 minutes
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

DATA = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
VARIANTS = {
    "magnitude": ["prune"],
    "+BN": ["prune", "bn-recalibrate"],
    "+bias": ["bias-compensate"],
    "+bias+BN": ["bias-compensate", "bn-recalibrate"],
    "+LS(cons)": ["reconstruct:consumers"],
    "+LS": ["reconstruct"],
    "+LS+BN": ["reconstruct", "bn-recalibrate"],
    "sel+LS": ["reconstruct-select", "reconstruct"],
    "sel+LS+BN": ["reconstruct-select", "reconstruct", "bn-recalibrate"],
}
LS_VARIANTS = ("+LS", "+LS+BN", "sel+LS", "sel+LS+BN")


def load_fashion_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def read(name: str, offset: int) -> np.ndarray:
        with gzip.open(DATA / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    def images(name: str) -> np.ndarray:
        raw = read(name, 16)
        return ((raw.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0) - MEAN) / STD

    def labels(name: str) -> np.ndarray:
        return read(name, 8).astype(np.int64)

    if not (DATA / "train-images-idx3-ubyte.gz").exists():
        sys.exit(f"Fashion-MNIST not found in {DATA}: apt-get install -y dataset-fashion-mnist")
    return (images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz"),
            images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))


def build(name: str):
    import torch
    import zoo
    from torch import nn

    torch.manual_seed(0)
    if name == "lenet":
        return zoo.lenet()
    if name == "vgg":
        net = zoo.VGG([16, "M", 32, 32, "M", 64, 64, "M"])
        net.features[0] = nn.Conv2d(1, 16, 3, padding=1)
        net.classifier[1] = nn.Linear(64 * 3 * 3, 128)  # 28 -> 14 -> 7 -> 3
        return net
    net = zoo.ResNet(zoo.BasicBlock, [1, 1, 1], width=16, num_classes=10, small_input=True)
    net.conv1 = nn.Conv2d(1, 16, 3, 2, 1, bias=False)  # 28 -> 14 -> 7 -> 4
    return net


def train(name: str, x: np.ndarray, y: np.ndarray, samples: int, epochs: int,
          cache: Path | None = None) -> tuple[onnx.ModelProto, float]:
    import torch

    from npcompile.graph.model_io import load_model

    key = cache / f"{name}-{samples}-{epochs}.onnx" if cache is not None else None
    if key is not None and key.exists():
        return load_model(str(key)), 0.0
    torch.set_num_threads(2)
    net = build(name)
    xs, ys = torch.from_numpy(x[:samples]), torch.from_numpy(y[:samples])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    steps = epochs * ((len(xs) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=g)
        for i in range(0, len(xs), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xs[idx]), ys[idx])
            loss.backward()
            opt.step()
            sched.step()
    dt = time.perf_counter() - t0
    net.eval()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(net, (xs[:1],), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          do_constant_folding=False)
        model = load_model(str(path))
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(key))
    return model, dt


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    from npcompile.runtime.verify import make_session

    sess = make_session(model)
    name = sess.get_inputs()[0].name
    hits = 0
    for i in range(0, len(x), 1000):
        hits += int((sess.run(None, {name: x[i:i + 1000]})[0].argmax(axis=1) == y[i:i + 1000]).sum())
    return 100.0 * hits / len(x)


def one_pass(model: onnx.ModelProto, x: np.ndarray, batch: int) -> float:
    from npcompile.runtime.verify import make_session

    sess = make_session(model)
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:batch]})
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        sess.run(None, {name: x[i:i + batch]})
    return time.perf_counter() - t0


def toml(target: float, passes: list[str], calib: str, ridge: float, positions: int) -> str:
    lines = ['[[passes]]', 'name = "magnitude"', '', '[[passes]]', 'name = "budget"', f"target_flops = {target}", '']
    for p in passes:
        p, _, scope = p.partition(":")
        lines += ["[[passes]]", f'name = "{p}"']
        if p != "prune":
            lines.append(f'calib = "{calib}"')
        if p in ("reconstruct", "reconstruct-select"):
            lines += [f"ridge = {ridge}", f"positions = {positions}"]
        if scope:
            lines.append(f'scope = "{scope}"')
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="lenet,vgg,resnet")
    ap.add_argument("--removed", default="0.3,0.5", help="fractions of FLOPs removed (default 0.3,0.5)")
    ap.add_argument("--calib", type=int, default=2048, help="calibration images (default 2048)")
    ap.add_argument("--test", type=int, default=10000, help="test images (default 10000)")
    ap.add_argument("--train", type=int, default=20000, help="training images (default 20000)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--ridge", type=float, default=1e-3)
    ap.add_argument("--positions", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="fewer images and one epoch")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--cache", help="keep the trained models in this folder and reuse them")
    args = ap.parse_args(argv)
    if args.quick:
        args.calib, args.test, args.train, args.epochs = 1024, 3000, 12000, 1

    import npcompile

    xtr, ytr, xte, yte = load_fashion_mnist()
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for net in args.nets.split(","):
            model, train_s = train(net, xtr, ytr, args.train, args.epochs, Path(args.cache) if args.cache else None)
            calib_x = xtr[-args.calib:]  # unlabelled training images the training run did not see
            test_x, test_y = xte[:args.test], yte[:args.test]
            calib = Path(tmp) / f"{net}-calib.npz"
            np.savez(calib, input=calib_x)
            base = accuracy(model, test_x, test_y)
            pass_s = one_pass(model, calib_x, 256)
            print(f"{net}: trained in {train_s:.0f} s, accuracy {base:.2f} %, one calibration pass "
                  f"({args.calib} images) {pass_s * 1000:.0f} ms", flush=True)
            for removed in (float(r) for r in args.removed.split(",")):
                row = {"net": net, "removed": removed, "original": base, "one_pass_s": pass_s}
                for label, passes in VARIANTS.items():
                    spec = Path(tmp) / "p.toml"
                    spec.write_text(toml(round(1 - removed, 6), passes, str(calib), args.ridge, args.positions))
                    t0 = time.perf_counter()
                    res = npcompile.compile(model, None, pipeline=str(spec), benchmark=False, plots=False)
                    dt = time.perf_counter() - t0
                    row[label] = accuracy(res.model, test_x, test_y)
                    row[f"{label} flops_removed"] = res.report["summary"]["flops_reduction"]
                    rec = res.report.get("reconstruction", {})
                    if label == "+LS":
                        run = rec["runs"][0]
                        row["ls_s"] = run["seconds"]
                        row["ls_waves"] = run["waves"]
                        layers = [r for r in rec["layers"] if "error_before" in r]
                        row["layer_error_before"] = float(np.mean([r["error_before"] for r in layers]))
                        row["layer_error_after"] = float(np.mean([r["error_after"] for r in layers]))
                    row[f"{label} compile_s"] = dt
                lost = base - row["magnitude"]
                best = max(row[v] for v in LS_VARIANTS)
                row["recovered"] = (row["+LS"] - row["magnitude"]) / lost if lost > 0 else float("nan")
                row["recovered_best"] = (best - row["magnitude"]) / lost if lost > 0 else float("nan")
                rows.append(row)
                print(f"  {removed:.0%} FLOPs removed: " + ", ".join(f"{k} {row[k]:.2f}" for k in VARIANTS), flush=True)
    print()
    head = ["net", "FLOPs", "orig"] + list(VARIANTS) + ["recovered +LS / best", "LS time", "1 pass", "ratio",
                                                        "layer err before/after"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["net"], f"-{r['+LS flops_removed']:.0%}", f"{r['original']:.2f}"]
        cells += [f"{r[k]:.2f}" for k in VARIANTS]
        cells += [f"{r['recovered']:.2f} / {r['recovered_best']:.2f}", f"{r['ls_s']:.2f} s",
                  f"{r['one_pass_s']:.3f} s", f"{r['ls_s'] / r['one_pass_s']:.0f}x",
                  f"{r['layer_error_before']:.3f} / {r['layer_error_after']:.3f}"]
        print("| " + " | ".join(cells) + " |")
    met = all(r["recovered"] >= 0.5 for r in rows if r["original"] - r["magnitude"] > 0.5)
    print(f"\ngoal (the default reconstruct pass, +LS, recovers >= half of the accuracy magnitude pruning loses, "
          f"where it loses > 0.5 points): {'met' if met else 'NOT met'}; total {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
