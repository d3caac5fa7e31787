"""The one data stream (:mod:`npcompile.runtime.stream`): batch boundaries, padding and fetching."""

from __future__ import annotations

import numpy as np

from npcompile.runtime.data import Dataset
from npcompile.runtime.stream import TensorStream, batches, fetch


class _Session:
    """Doubles ``x`` into ``y``; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def run(self, names, feeds):
        self.calls.append((list(names), sorted(feeds)))
        return [feeds["x"] * 2 for _ in names]


def test_batches_keep_the_dataset_boundaries_and_pad_only_when_asked() -> None:
    data = Dataset({"x": np.arange(10, dtype=np.float32).reshape(10, 1)}, np.arange(10))
    got = list(batches(data, 4))
    assert [(b.first, b.size, len(b.feeds["x"])) for b in got] == [(0, 4, 4), (4, 4, 4), (8, 2, 2)]
    assert got[2].labels.tolist() == [8, 9]
    padded = list(batches(data, 4, pad_to=4, contiguous=True))[-1]
    assert padded.size == 2 and padded.feeds["x"].ravel().tolist() == [8, 9, 9, 9]


def test_fetch_hands_inputs_through_and_feeds_only_the_session_inputs() -> None:
    s = _Session()
    feeds = {"x": np.ones((2, 1), np.float32), "extra": np.zeros(2)}
    got = fetch(s, ["y", "x", "y"], feeds, inputs=["x"])
    assert list(got) == ["y", "x"] and got["x"] is feeds["x"]
    assert s.calls == [(["y"], ["x"])]
    assert fetch(s, ["x"], feeds, inputs=["x"]) == {"x": feeds["x"]} and len(s.calls) == 1


def test_tensor_stream_runs_every_batch() -> None:
    data = Dataset({"x": np.arange(5, dtype=np.float32).reshape(5, 1)})
    ts = TensorStream(_Session(), ["x"])
    out = [(b.first, v["y"].ravel().tolist()) for b, v in ts.each(data, 2, ["y"])]
    assert out == [(0, [0, 2]), (2, [4, 6]), (4, [8])]
    assert ts.seconds >= 0
