"""Fashion-MNIST for the examples that train on it (binary_search_vgg, maxout_vgg_verification,
vit_fashion): where the idx files are, reading a split, a class-balanced order, and top-1 accuracy
of a torch classifier. The examples' ``train.py`` scripts import it from the folder above them.

Data: the Debian package ``dataset-fashion-mnist`` (idx files under
``/usr/share/datasets/fashion-mnist/``), or ``--data DIR`` / ``$FASHION_MNIST_DIR``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DATA_DIR", "INSTALL", "FILES", "CLASSES", "DataMissing", "data_dir", "load_fashion_mnist",
           "balanced_order", "accuracy"]

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL = "apt-get install -y dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DataMissing(RuntimeError):
    """The Fashion-MNIST files are not there."""


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding the Fashion-MNIST idx files (``--data``, ``$FASHION_MNIST_DIR`` or the
    Debian package's); :class:`DataMissing` naming the install command when a file is missing."""
    root = Path(path or os.environ.get("FASHION_MNIST_DIR") or DATA_DIR)
    missing = [f for pair in FILES.values() for f in pair if not (root / f).is_file()]
    if missing:
        raise DataMissing(f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}); install it with "
                          f"`{INSTALL}` (Debian/Ubuntu, as root) or pass --data DIR holding the idx .gz files")
    return root


def load_fashion_mnist(split: str, path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 [N,28,28]) and labels (int64 [N]) of the ``train`` or ``test`` split."""
    root = data_dir(path)
    img_file, lab_file = FILES[split]
    with gzip.open(root / img_file) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / lab_file) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    if len(images) != len(labels):
        raise DataMissing(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels


def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """All indices in a random order in which every prefix holds (nearly) as many of each class."""
    rank = np.empty(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[rng.permutation(idx)] = np.arange(len(idx))
    return np.lexsort((rng.random(len(labels)), rank))


def accuracy(model: Any, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy (%) of the torch classifier ``model`` on float32 inputs ``x``, labels ``y``."""
    import torch  # the scripts set their OpenMP policy before torch is first imported

    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            hits += int((model(torch.from_numpy(x[i:i + batch])).argmax(1).numpy() == y[i:i + batch]).sum())
    return 100.0 * hits / len(x)
