"""Train a small Vision Transformer (Hugging Face ``ViTForImageClassification`` built from a config,
no download) on Fashion-MNIST on the CPU and export it to ONNX.

Writes, into --out (default: a ``work/`` folder next to this script):
  model.onnx  the trained model (opset 14, legacy exporter, input "input" [N,1,28,28] float32 in
              [0,1], output "logits" [N,10], dynamic batch)
  train.npz   --finetune-size training images (a part of those the model was trained on) for
              fine-tuning after pruning, keys "input" (float32 [N,1,28,28]) and "labels" (int64 [N])
  calib.npz   --calib-size training images, same keys: what activation scores (mean-abs, for
              --prune-hidden) are measured on
  eval.npz    --eval-size test images, same keys: the accuracies run.py reports
All subsets are balanced over the 10 classes (seed 0).

The model: 28x28 images cut into 7x7 patches (16 patches + a class token = 17 tokens), hidden width
96, 4 encoder blocks of 6 heads (head_dim 16) and an MLP of 384 GELU neurons, pre-norm, a linear
classifier on the class token: 459k parameters, 447k of them in the encoder blocks.

Data: the Debian package dataset-fashion-mnist (``apt-get install -y dataset-fashion-mnist``),
idx files under /usr/share/datasets/fashion-mnist/ (or --data DIR, or $FASHION_MNIST_DIR).

Usage: python examples/vit_fashion/train.py [--quick] [--epochs N] [--out DIR]
Requires: torch, transformers, onnx, numpy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# OpenMP threads that sleep instead of spinning when they wait (a shared small machine)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch  # noqa: E402
from torch import nn  # noqa: E402

# the Fashion-MNIST helpers the examples share (examples/fashion_mnist.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fashion_mnist import (  # noqa: E402
    DATA_DIR,
    DataMissing,
    accuracy,
    balanced_order,
    load_fashion_mnist,
)

SEED = 0
HERE = Path(__file__).resolve().parent
#: the ViT configuration (transformers.ViTConfig keywords)
CONFIG = {"image_size": 28, "patch_size": 7, "num_channels": 1, "hidden_size": 96, "num_hidden_layers": 4,
          "num_attention_heads": 6, "intermediate_size": 384, "num_labels": 10,
          "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
QUICK_CONFIG = {**CONFIG, "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 96}


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,1,28,28] in [0,1]."""
    return (images.astype(np.float32) / 255.0)[:, None]


class ViT(nn.Module):
    """``ViTForImageClassification`` with a plain ``input`` -> ``logits`` signature."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        self.model = ViTForImageClassification(ViTConfig(**config, attn_implementation="eager"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "work", help="output folder (default: work/ here)")
    ap.add_argument("--data", default=None, help=f"folder of the Fashion-MNIST idx .gz files (default {DATA_DIR})")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-size", type=int, default=30000, help="training images used to train the model")
    ap.add_argument("--finetune-size", type=int, default=20000, help="training images written to train.npz")
    ap.add_argument("--calib-size", type=int, default=1000, help="training images written to calib.npz")
    ap.add_argument("--eval-size", type=int, default=10000, help="test images written to eval.npz")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a small shared CPU)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny settings for CI (a 2-block ViT of width 48, 2000 images, 2 epochs)")
    args = ap.parse_args(argv)
    config = CONFIG
    if args.quick:
        config = QUICK_CONFIG
        args.epochs, args.train_size = 2, 2000
        args.finetune_size, args.calib_size, args.eval_size = 500, 200, 500

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
    tr = order[:args.train_size]
    ft = order[:args.finetune_size]
    ca = order[:args.calib_size]
    te = balanced_order(yte_all, rng)[:args.eval_size]
    xtr, ytr = to_input(xtr_u8[tr]), ytr_all[tr]
    xte, yte = to_input(xte_u8[te]), yte_all[te]
    print(f"Fashion-MNIST: train {xtr.shape} (of {len(ytr_all)}), eval {xte.shape} (of {len(yte_all)} test)")

    model = ViT(config)
    n_params = sum(p.numel() for p in model.parameters())
    n_enc = sum(p.numel() for p in model.model.vit.layers.parameters())
    print(f"ViT: {n_params:,} parameters, {n_enc:,} in the {config['num_hidden_layers']} encoder blocks")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * -(-len(xtr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
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
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {total / len(perm):.4f}  "
              f"eval acc {accuracy(model, xte, yte):.2f} %  ({time.time() - t0:.0f} s)", flush=True)
    acc = accuracy(model, xte, yte)
    print(f"training time {time.time() - t0:.1f} s; eval accuracy {acc:.2f} % on {len(yte)} test images")

    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    torch.onnx.export(model.eval(), torch.from_numpy(xte[:1]), str(args.out / "model.onnx"), dynamo=False,
                      opset_version=14, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    np.savez(args.out / "train.npz", input=to_input(xtr_u8[ft]), labels=ytr_all[ft])
    np.savez(args.out / "calib.npz", input=to_input(xtr_u8[ca]), labels=ytr_all[ca])
    np.savez(args.out / "eval.npz", input=xte, labels=yte)
    for name in ("model.onnx", "train.npz", "calib.npz", "eval.npz"):
        p = args.out / name
        print(f"wrote {p} ({p.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
