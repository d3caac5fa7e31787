"""Fine-tuning throughput: the ONNX graph run by ``GraphModule`` against the same network in PyTorch.

Prints, in one run, the training throughput (samples/s, CPU) of:

1. **native**: a LeNet-5-like CNN written directly in PyTorch (``nn.Sequential`` of Conv2d, ReLU,
   MaxPool2d, Linear), trained with Adam;
2. **graph**: the same network exported to ONNX and run by :class:`npcompile.finetune.graph_module.GraphModule`,
   trained with the same optimizer, batch size, batches and starting weights;
3. **pass**: the whole ``finetune`` pass on the same ONNX model and data (its own shuffling and
   batching from NumPy arrays, reported by the pass itself; the ONNX Runtime checks excluded).

Native and graph run in interleaved rounds (native, graph, native, graph, ...) so that a noisy CPU
hits both alike; the figure per loop is the median over rounds. The goal is graph ≥ 0.8 × native.
It is a measurement script, not a test: nothing is asserted. Needs the torch extra.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from npcompile.finetune.graph_module import GraphModule  # noqa: E402
from npcompile.passes.finetune import FinetunePass  # noqa: E402
from npcompile.pipeline import Context  # noqa: E402
from npcompile.runtime.data import Dataset  # noqa: E402

GOAL = 0.8


def lenet() -> nn.Module:
    """LeNet-5-like CNN for 1x28x28 inputs (the shape of examples/lenet_mnist)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def export(module: nn.Module) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(1, 1, 28, 28),), buf, dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def train_steps(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> float:
    """Train over ``batches`` with Adam; returns seconds."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.functional.cross_entropy
    model.train()
    t0 = time.perf_counter()
    for x, y in batches:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2048, help="samples per round (one epoch)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    reference = lenet()
    proto = export(reference)
    rng = np.random.default_rng(0)
    x = rng.random((args.samples, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, args.samples).astype(np.int64)
    batches = [(torch.from_numpy(x[i:i + args.batch_size]), torch.from_numpy(y[i:i + args.batch_size]))
               for i in range(0, args.samples, args.batch_size)]

    print(f"fine-tuning throughput, LeNet-5-like CNN ({sum(p.numel() for p in reference.parameters())} "
          f"parameters), Adam lr {args.lr}, batch {args.batch_size}, {args.samples} samples per round, "
          f"{args.rounds} rounds")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          f", Python {platform.python_version()}")

    # warm-up both (first-call allocations, oneDNN primitive caches)
    native = lenet()
    native.load_state_dict(reference.state_dict())
    graph = GraphModule(proto)
    train_steps(native, batches[:4], args.lr)
    train_steps(graph, batches[:4], args.lr)

    times: dict[str, list[float]] = {"native": [], "graph": []}
    for _ in range(args.rounds):
        native = lenet()
        native.load_state_dict(reference.state_dict())
        times["native"].append(train_steps(native, batches, args.lr))
        graph = GraphModule(proto)
        times["graph"].append(train_steps(graph, batches, args.lr))

    sps = {k: args.samples / statistics.median(v) for k, v in times.items()}
    for k, label in (("native", "PyTorch nn.Sequential"), ("graph", "GraphModule (ONNX graph)")):
        spread = ", ".join(f"{args.samples / t:.0f}" for t in times[k])
        print(f"  {label:<26} {sps[k]:8.0f} samples/s   (rounds: {spread})")
    ratio = sps["graph"] / sps["native"]
    print(f"  graph / native             {ratio:8.2f} x   (goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'})")

    data = Dataset({"input": x}, y, "synthetic")
    ctx = Context(proto, {"input": (1, 1, 28, 28)})
    result = FinetunePass(data, epochs=2, lr=args.lr, batch_size=args.batch_size).run(ctx)
    per_epoch = ", ".join(f"{e['samples_per_s']:.0f}" for e in result.data["epochs"])
    print(f"  finetune pass (end to end) {result.data['samples_per_s']:8.0f} samples/s   (epochs: {per_epoch}; "
          f"shuffle, batching from NumPy, keep-zero masks, deterministic algorithms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
