"""Fixtures of the search tests: a small MLP trained on the 8x8 digits (a few seconds, once)."""

from __future__ import annotations

import onnx
import pytest
import searchkit

from npcompile.graph.model_io import load_model
from npcompile.runtime.data import Dataset


@pytest.fixture(scope="session")
def digits_mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, Dataset]:
    path, data = searchkit.trained_digits_model("mlp", tmp_path_factory.mktemp("digits") / "mlp.onnx", epochs=30)
    return load_model(path), data
