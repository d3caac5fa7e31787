"""Train a narrow VGG-16 (13 conv layers, BatchNorm) on Fashion-MNIST and export it to ONNX.

Writes, into --out (default: a ``work/`` folder next to this script):
  model.onnx  the trained model (opset 13, input "input" [N,1,32,32] float32 in [0,1],
              output "logits" [N,10], dynamic batch; BatchNorm folded into the convolutions)
  train.npz   --finetune-size training images (a part of those the model was trained on) for
              fine-tuning after pruning, keys "input" (float32 [N,1,32,32]) and "labels" (int64 [N])
  val.npz     --val-size held-out training images (never trained on), same keys: what the
              binary search evaluates, so that the test images only measure the result
  eval.npz    --eval-size test images, same keys: the accuracies run.py reports
All subsets are balanced over the 10 classes (seed 0).

Data: the Debian package dataset-fashion-mnist (``apt-get install -y dataset-fashion-mnist``),
idx files under /usr/share/datasets/fashion-mnist/ (or --data DIR). The 28x28 images are
zero-padded to 32x32 so that the five 2x2 max-pools of VGG-16 give 1x1 at the end, as on CIFAR-10.

Training adds a group-lasso proximal step on each channel's BatchNorm (scale, shift) after every
update (--sparsity; "network slimming"), so that channels the data does not need go to zero.

Usage: python examples/binary_search_vgg/train.py [--quick] [--epochs N] [--sparsity S] [--out DIR]
Requires: torch, onnx, numpy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# OpenMP threads that sleep instead of spinning when they wait: on a shared 2-core machine spinning
# threads fight other processes for the cores and training gets several times slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

# the Fashion-MNIST helpers the examples share (examples/fashion_mnist.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fashion_mnist import (  # noqa: E402
    DATA_DIR,
    DataMissing,
    accuracy,
    balanced_order,
    data_dir,  # noqa: F401  (the example's test calls train.data_dir())
    load_fashion_mnist,
)

SEED = 0
HERE = Path(__file__).resolve().parent
#: VGG-16's 13 convolutions ("M": 2x2 max-pool) at a quarter of the original widths (64-128-256-512-512)
CFG = (16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128, "M")


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,1,32,32] in [0,1] (2 pixels of zero padding on each side)."""
    x = images.astype(np.float32) / 255.0
    return np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None]


class VGG(nn.Module):
    def __init__(self, cfg=CFG, classes: int = 10, hidden: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in, hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(0.5), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def shrink_channels(bns: list[nn.BatchNorm2d], step: float) -> None:
    """Proximal step of a group lasso on every channel's (scale, shift): the pair moves ``step``
    towards 0 and stops there. A channel at 0 outputs exactly 0, and its weights after BatchNorm
    folding are 0 too, so its magnitude ranks it last."""
    with torch.no_grad():
        for bn in bns:
            norm = torch.sqrt(bn.weight**2 + bn.bias**2)
            keep = torch.clamp(1 - step / norm.clamp_min(1e-12), min=0)
            bn.weight.mul_(keep)
            bn.bias.mul_(keep)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "work", help="output folder (default: work/ here)")
    ap.add_argument("--data", default=None, help=f"folder of the Fashion-MNIST idx .gz files (default {DATA_DIR})")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train-size", type=int, default=20000, help="training images used to train the model")
    ap.add_argument("--finetune-size", type=int, default=10000, help="training images written to train.npz")
    ap.add_argument("--eval-size", type=int, default=2000, help="test images written to eval.npz")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--sparsity", type=float, default=0.5,
                    help="group-lasso strength on each channel's BatchNorm (scale, shift) pair, applied as a "
                         "proximal step of lr * sparsity after every update; 0 turns it off")
    ap.add_argument("--val-size", type=int, default=2000,
                    help="held-out training images written to val.npz (what the search evaluates)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny settings for CI (1000 images, 2 epochs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.batch_size, args.train_size = 2, 32, 1000
        args.finetune_size, args.val_size, args.eval_size = 300, 300, 300

    try:
        xtr_u8, ytr_all = load_fashion_mnist("train", args.data)
        xte_u8, yte_all = load_fashion_mnist("test", args.data)
    except DataMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(SEED)
    order = balanced_order(ytr_all, rng)
    if args.val_size + max(args.train_size, args.finetune_size) > len(order):
        ap.error(f"--val-size + --train-size/--finetune-size exceed the {len(order)} training images")
    va = order[:args.val_size]  # held out: never trained on
    tr = order[args.val_size:args.val_size + args.train_size]
    ft = order[args.val_size:args.val_size + args.finetune_size]  # fine-tuning reuses training images
    te = balanced_order(yte_all, rng)[:args.eval_size]
    xtr, ytr = to_input(xtr_u8[tr]), ytr_all[tr]
    xte, yte = to_input(xte_u8[te]), yte_all[te]
    print(f"Fashion-MNIST: train {xtr.shape} (of {len(ytr_all)}), eval {xte.shape} (of {len(yte_all)} test)")

    model = VGG()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"VGG-16 (narrow): {n_params:,} parameters")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps = args.epochs * -(-len(xtr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr_t), generator=gen)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            b = perm[i:i + args.batch_size]
            xb = xtr_t[b]
            if epoch < args.epochs - 1:  # random horizontal flips (clothes are left-right symmetric)
                flip = torch.rand(len(b), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            opt.zero_grad()
            loss = loss_fn(model(xb), ytr_t[b])
            loss.backward()
            opt.step()
            if args.sparsity > 0:
                shrink_channels(bns, opt.param_groups[0]["lr"] * args.sparsity)
            sched.step()
            total += loss.item() * len(b)
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {total / len(perm):.4f}  "
              f"eval acc {accuracy(model, xte, yte):.2f} %  ({time.time() - t0:.0f} s)", flush=True)
    acc = accuracy(model, xte, yte)
    print(f"training time {time.time() - t0:.1f} s; eval accuracy {acc:.2f} % on {len(yte)} test images")

    args.out.mkdir(parents=True, exist_ok=True)
    # dynamo=False (the TorchScript exporter) folds BatchNorm into the convolutions
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    torch.onnx.export(model.eval(), torch.from_numpy(xte[:1]), str(args.out / "model.onnx"), dynamo=False,
                      opset_version=13, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    np.savez(args.out / "train.npz", input=to_input(xtr_u8[ft]), labels=ytr_all[ft])
    np.savez(args.out / "val.npz", input=to_input(xtr_u8[va]), labels=ytr_all[va])
    np.savez(args.out / "eval.npz", input=xte, labels=yte)
    for name in ("model.onnx", "train.npz", "val.npz", "eval.npz"):
        p = args.out / name
        print(f"wrote {p} ({p.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
