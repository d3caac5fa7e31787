"""Small maxout networks for the calibration tests, in every form PyTorch users write maxout.

``FCMaxout``: two fully connected maxout layers and a classifier; ``ConvMaxout``: a convolutional
maxout layer, a second convolution and a fully connected head behind a Flatten. ``mode`` picks
how the maximum is written (see ``FC_MODES`` / ``CONV_MODES``). :func:`plant_losers` gives one
neuron of every unit a bias so low that it never wins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
import zoo
from torch import nn

from npcompile.graph.model_io import load_model

FC_MODES = ["amax", "max0", "values", "keepdim", "pool", "maximum"]
CONV_MODES = ["amax", "max0", "values", "pool", "pool_last"]


def maxout(h: torch.Tensor, units: int, k: int, mode: str) -> torch.Tensor:
    """Maximum over runs of ``k`` channels of ``h`` (channels on axis 1), written as ``mode``."""
    n, rest = h.shape[0], h.shape[2:]
    v = h.view(n, units, k, *rest)
    if mode == "amax":
        return v.amax(2)
    if mode == "max0":
        return v.max(2)[0]
    if mode == "values":
        return torch.max(v, dim=2).values
    if mode == "keepdim":
        return v.amax(2, keepdim=True).squeeze(2)
    if mode == "maximum":
        out = v[:, :, 0]
        for j in range(1, k):
            out = torch.maximum(out, v[:, :, j])
        return out
    if mode == "pool":  # max_pool over the channel axis, put on a spatial position
        if not rest:
            return F.max_pool1d(h.unsqueeze(1), k).squeeze(1)
        return F.max_pool3d(h.unsqueeze(1), (k, 1, 1)).squeeze(1)
    if mode == "pool_last":  # channels last, then a 1-D max_pool over them
        hh, ww = rest
        t = h.permute(0, 2, 3, 1).reshape(n, hh * ww, units * k)
        return F.max_pool1d(t, k).reshape(n, hh, ww, units).permute(0, 3, 1, 2)
    raise ValueError(mode)


class FCMaxout(nn.Module):
    def __init__(self, mode: str, d_in: int = 10, units: tuple[int, int] = (4, 3), k: tuple[int, int] = (3, 2),
                 classes: int = 3) -> None:
        super().__init__()
        self.mode, self.units, self.k = mode, units, k
        self.fc1 = nn.Linear(d_in, units[0] * k[0])
        self.fc2 = nn.Linear(units[0], units[1] * k[1])
        self.out = nn.Linear(units[1], classes)
        self.producers = [self.fc1, self.fc2]
        self.consumers = [self.fc2, self.out]

    def pre(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The inputs of the maxout layers (their neurons)."""
        h1 = self.fc1(x)
        h2 = self.fc2(maxout(h1, self.units[0], self.k[0], self.mode))
        return [h1, h2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = maxout(self.fc1(x), self.units[0], self.k[0], self.mode)
        h = maxout(self.fc2(h), self.units[1], self.k[1], self.mode)
        return self.out(h)


class ConvMaxout(nn.Module):
    def __init__(self, mode: str, units: int = 4, k: int = 3, hw: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.mode, self.units, self.k = mode, (units,), (k,)
        self.conv = nn.Conv2d(3, units * k, 3, padding=1)
        self.conv2 = nn.Conv2d(units, 5, 3, padding=1)
        self.fc = nn.Linear(5 * hw * hw, classes)
        self.producers = [self.conv]
        self.consumers = [self.conv2]

    def pre(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.conv(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = maxout(self.conv(x), self.units[0], self.k[0], self.mode)
        return self.fc(torch.flatten(torch.relu(self.conv2(h)), 1))


SHAPES = {FCMaxout: (2, 10), ConvMaxout: (2, 3, 6, 6)}


def build(kind: str, mode: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return (FCMaxout if kind == "fc" else ConvMaxout)(mode).eval()


def export(net: nn.Module, dynamo: bool, tmp: Path) -> onnx.ModelProto:
    path = tmp / f"{type(net).__name__}_{net.mode}_{int(dynamo)}.onnx"
    zoo.export(net, SHAPES[type(net)], path, dynamo=dynamo)
    return load_model(path)


def data(net: nn.Module, n: int, seed: int = 1) -> np.ndarray:
    shape = SHAPES[type(net)]
    return np.random.default_rng(seed).standard_normal((n, *shape[1:])).astype(np.float32)


def plant_losers(net: nn.Module, seed: int = 2, per_unit: int = 1) -> list[np.ndarray]:
    """Give ``per_unit`` neurons of every unit of every maxout layer a bias of -1e4 (they never
    win); returns the planted masks per layer (over its ``units * k`` neurons)."""
    rng = np.random.default_rng(seed)
    masks = []
    with torch.no_grad():
        for layer, units, k in zip(net.producers, net.units, net.k, strict=True):
            mask = np.zeros((units, k), bool)
            for u in range(units):
                mask[u, rng.choice(k, per_unit, replace=False)] = True
            layer.bias[torch.from_numpy(mask.ravel())] = -1e4
            masks.append(mask.ravel())
    return masks


def silence_unit(net: nn.Module, layer: int, unit: int) -> None:
    """Make unit ``unit`` of maxout layer ``layer`` irrelevant: its neurons output ~0 and the next
    layer ignores it (removing the unit cannot change the output)."""
    k = net.k[layer]
    with torch.no_grad():
        prod, cons = net.producers[layer], net.consumers[layer]
        rows = slice(unit * k, (unit + 1) * k)
        prod.weight[rows] *= 1e-3
        prod.bias[rows] = torch.where(prod.bias[rows] < -1, prod.bias[rows], torch.zeros_like(prod.bias[rows]))
        cons.weight[:, unit] = 0
