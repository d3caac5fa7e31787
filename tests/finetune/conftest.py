"""Fixtures of the fine-tuning tests: the sklearn digits as a labelled data set and a small CNN
for them, exported to ONNX."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from finetune_kit import digits_cnn, export

from npcompile.runtime.data import Dataset


@pytest.fixture(scope="session")
def digits() -> Dataset:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    d = sklearn_datasets.load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return Dataset({"input": x}, d.target.astype(np.int64), "digits")


@pytest.fixture(scope="session")
def digits_model() -> onnx.ModelProto:
    torch.manual_seed(0)
    return export(digits_cnn(), (1, 1, 8, 8))
