"""Train a maxout VGG-style network for pair verification on Fashion-MNIST and export it to ONNX.

The structure of paper A's second experiment (Moya Rueda et al., GCPR 2017: a maxout VGG-16
trained for face verification on LFW) on offline data: the network is trained to classify the
*training* classes (as VGG-Face is trained on identities), its 64-d maxout embedding is compared
between two images by cosine similarity, and it is judged on pairs of images of classes it never
saw (held out, as LFW holds out identities).

Writes, into --out (default: ``work/`` next to this script, ``work-quick/`` with --quick):
  model.onnx  input "input" [N,1,28,28] float32 in [0,1]; outputs "logits" [N,6] (the training
              classes; what fine-tuning trains) and "embedding" [N,64] (what verification compares);
              dynamic batch; BatchNorm folded into the convolutions
  train.npz   training images of the 6 training classes, "input" and "labels" (0..5): fine-tuning
  calib.npz   "input": the first --calib-size of them: maxout relevance
  pairs.npz   verification pairs of the 4 held-out classes (test-split images), the format of
              npcompile's verification evaluator: "input" (the images), "pairs" [P,2], "same" [P],
              "split" [P] (0: validation pairs, which choose the threshold; 1: test pairs, scored).
              Validation and test pairs use disjoint images; half the pairs of each are "same".

Classes: training 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 5 Sandal, 7 Sneaker; held out
(pairs only) 4 Coat, 6 Shirt, 8 Bag, 9 Ankle boot.

Network (k = 4 neurons per maxout unit everywhere, BatchNorm before each maxout):
  conv 1->8x4, conv 8->8x4, pool | conv 8->16x4, conv 16->16x4, pool | conv 16->32x4, pool
  | Linear 288->128x4 maxout | Linear 128->64x4 maxout = embedding | Linear 64->6 = logits

Usage: python examples/maxout_vgg_verification/train.py [--quick] [--epochs N] [--out DIR]
Requires: torch, onnx, numpy; Fashion-MNIST (apt-get install -y dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

# the Fashion-MNIST helpers the examples share (examples/fashion_mnist.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fashion_mnist import DATA_DIR, DataMissing, load_fashion_mnist  # noqa: E402

SEED = 0
HERE = Path(__file__).resolve().parent
TRAIN_CLASSES = (0, 1, 2, 3, 5, 7)
HELD_OUT = (4, 6, 8, 9)
K = 4
#: maxout units of the conv layers ("M": 2x2 max-pool)
CFG = (8, 8, "M", 16, 16, "M", 32, "M")
FC_UNITS, EMBED_UNITS = 128, 64


class Maxout(nn.Module):
    """Maxout over the channel axis: ``units * k`` channels -> ``units`` (the max of each run of k)."""

    def __init__(self, units: int, k: int = K) -> None:
        super().__init__()
        self.units, self.k = units, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            n, _, h, w = x.shape
            return x.view(n, self.units, self.k, h, w).amax(2)
        return x.view(x.shape[0], self.units, self.k).amax(-1)


class MaxoutVGG(nn.Module):
    def __init__(self, classes: int = len(TRAIN_CLASSES), cfg=CFG, k: int = K) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v * k, 3, padding=1, bias=False), nn.BatchNorm2d(v * k), Maxout(v, k)]
                c = v
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(c * 3 * 3, FC_UNITS * k), Maxout(FC_UNITS, k), nn.Dropout(0.3),
                                nn.Linear(FC_UNITS, EMBED_UNITS * k), Maxout(EMBED_UNITS, k))
        self.head = nn.Linear(EMBED_UNITS, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.fc(self.features(x))
        return self.head(emb), emb


def make_pairs(labels: np.ndarray, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` pairs of distinct images, half same-class (classes in turn), half different."""
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    classes = sorted(by_class)
    out, same = [], []
    for i in range(n_pairs):
        if i % 2 == 0:
            c = classes[(i // 2) % len(classes)]
            a, b = rng.choice(by_class[c], 2, replace=False)
        else:
            c1, c2 = rng.choice(classes, 2, replace=False)
            a, b = rng.choice(by_class[c1]), rng.choice(by_class[c2])
        out.append((a, b))
        same.append(i % 2 == 0)
    return np.array(out, np.int64), np.array(same, np.int64)


def verification_accuracy(model: MaxoutVGG, x: np.ndarray, pairs: np.ndarray, same: np.ndarray,
                          split: np.ndarray) -> float:
    """Test-pair accuracy (percent) at the best threshold of the validation pairs (training log only)."""
    from npcompile.runtime.verification import Pairs, verification_metrics

    model.eval()
    with torch.no_grad():
        emb = torch.cat([model(torch.from_numpy(x[i:i + 1000]))[1] for i in range(0, len(x), 1000)]).numpy()
    return verification_metrics(emb, Pairs(pairs, same, split))["accuracy"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: work/ or work-quick/ here)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FASHION_MNIST_DIR") or DATA_DIR))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train-per-class", type=int, default=2500, help="training images per training class")
    ap.add_argument("--finetune-per-class", type=int, default=1000, help="of those, written to train.npz")
    ap.add_argument("--calib-size", type=int, default=3000)
    ap.add_argument("--pairs", type=int, default=3000, help="validation pairs and test pairs (each)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny settings for CI (a minute)")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.train_per_class, args.finetune_per_class = 2, 200, 100
        args.calib_size, args.pairs = 300, 300
    out = args.out or HERE / ("work-quick" if args.quick else "work")
    try:
        xtr_u8, ytr_all = load_fashion_mnist("train", args.data)
        xte_u8, yte_all = load_fashion_mnist("test", args.data)
    except DataMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(SEED)
    # float32 [N,1,28,28] in [0,1]
    xtr_all, xte_all = ((x.astype(np.float32) / 255.0)[:, None] for x in (xtr_u8, xte_u8))

    # training classes: the first --train-per-class images of each (in a seeded order), labels 0..5
    order = rng.permutation(len(ytr_all))
    idx = np.concatenate([order[ytr_all[order] == c][:args.train_per_class] for c in TRAIN_CLASSES])
    idx = rng.permutation(idx)
    remap = {c: i for i, c in enumerate(TRAIN_CLASSES)}
    xtr, ytr = xtr_all[idx], np.array([remap[c] for c in ytr_all[idx]], np.int64)
    ft = np.concatenate([np.flatnonzero(ytr == i)[:args.finetune_per_class] for i in range(len(TRAIN_CLASSES))])
    ft = np.sort(ft)

    # held-out classes, test split: two disjoint halves of the images, validation and test pairs
    held = np.flatnonzero(np.isin(yte_all, HELD_OUT))
    held = rng.permutation(held)
    halves = held[: len(held) // 2], held[len(held) // 2:]
    per_half = min(len(halves[0]), max(2 * args.pairs // 3, 200))
    images, pair_list, same_list, split_list = [], [], [], []
    offset = 0
    for part, h in enumerate(halves):
        h = np.sort(h[:per_half])
        p, s = make_pairs(yte_all[h], args.pairs, rng)
        images.append(xte_all[h])
        pair_list.append(p + offset)
        same_list.append(s)
        split_list.append(np.full(len(s), part, np.int64))
        offset += len(h)
    px, pp, ps, psplit = (np.concatenate(images), np.concatenate(pair_list), np.concatenate(same_list),
                          np.concatenate(split_list))
    print(f"Fashion-MNIST: train {xtr.shape} ({len(TRAIN_CLASSES)} classes); pairs: {len(pp)} over {len(px)} "
          f"held-out images (classes {HELD_OUT})")

    model = MaxoutVGG()
    print(f"maxout VGG: {sum(p.numel() for p in model.parameters()):,} parameters, k = {K}")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * -(-len(xtr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            b = perm[i:i + args.batch_size]
            xb = xt[b]
            flip = torch.rand(len(b), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            opt.zero_grad()
            loss = loss_fn(model(xb)[0], yt[b])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        acc = verification_accuracy(model, px, pp, ps, psplit)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {total / len(perm):.4f}  verification {acc:.2f} %  "
              f"({time.time() - t0:.0f} s)", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    torch.onnx.export(model.eval(), torch.from_numpy(xtr[:1]), str(out / "model.onnx"), dynamo=False,
                      opset_version=13, input_names=["input"], output_names=["logits", "embedding"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}})
    np.savez(out / "train.npz", input=xtr[ft], labels=ytr[ft])
    np.savez(out / "calib.npz", input=xtr[:args.calib_size])
    np.savez(out / "pairs.npz", input=px, pairs=pp, same=ps, split=psplit)
    for name in ("model.onnx", "train.npz", "calib.npz", "pairs.npz"):
        print(f"wrote {out / name} ({(out / name).stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
