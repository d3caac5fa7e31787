"""Shared by the search tests and benchmarks/search_speed.py: small networks trained for a few
seconds on scikit-learn's 8x8 digits, exported to ONNX, with held-out evaluation data; random
valid removals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from npcompile.pipeline import Context
from npcompile.runtime.data import Dataset


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): images [N, 1, 8, 8] in [0, 1], a fixed 2/3 : 1/3 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    n = (2 * len(y)) // 3
    return x[:n], y[:n], x[n:], y[n:]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 10))


def cnn(width: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * width * 16, 64), nn.ReLU(), nn.Linear(64, 10))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 30, seed: int = 0) -> nn.Module:
    """A few epochs of Adam, on one thread (small batches train faster so, and steadier on a busy
    machine); deterministic for a seed."""
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(yt), generator=g)
            for i in range(0, len(yt), 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def trained_digits_model(kind: str, path: str | os.PathLike, epochs: int = 30, seed: int = 0,
                         width: int = 32) -> tuple[Path, Dataset]:
    """Train ``kind`` (``mlp`` or ``cnn``) on digits, export it to ``path`` (dynamic batch, input
    ``input``), and return the path and the held-out evaluation data (with labels)."""
    x_tr, y_tr, x_te, y_te = digits(seed)
    torch.manual_seed(seed)
    model = mlp() if kind == "mlp" else cnn(width)
    train(model, x_tr, y_tr, epochs, seed)
    path = Path(path)
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(x_te[:2]),), str(path), input_names=["input"],
                          output_names=["output"], opset_version=13, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path, Dataset({"input": x_te}, y_te, "digits-test")


def random_removal(ctx: Context, rng: np.random.Generator, share: float = 0.7) -> dict[int, np.ndarray]:
    """Random channels of a random share of the prunable groups: the same count in every block,
    never a whole group."""
    out: dict[int, np.ndarray] = {}
    for g in ctx.analysis.prunable_groups():
        if rng.random() > share:
            continue
        size = g.size // g.blocks
        if size < 2:
            continue
        k = int(rng.integers(1, size))
        mask = np.zeros((g.blocks, size), bool)
        for b in range(g.blocks):
            mask[b, rng.choice(size, k, replace=False)] = True
        out[g.id] = mask.ravel()
    return out
