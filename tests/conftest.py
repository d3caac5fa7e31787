"""Shared test setup: make ``tests/`` importable (``zoo`` model builders) from every test folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="module")
def lenet():
    """The shipped LeNet-5 example (examples/lenet_mnist/model.onnx), loaded."""
    from npcompile.graph.model_io import load_model

    return load_model(TESTS.parent / "examples" / "lenet_mnist" / "model.onnx")
