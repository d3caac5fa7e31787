"""Fine-tuning throughput: the ONNX graph run by ``GraphModule`` against the same network in PyTorch.

Prints, in one run, the training throughput (samples/s, CPU) of:

1. **native**: a LeNet-5-like CNN written directly in PyTorch (``nn.Sequential`` of Conv2d, ReLU,
   MaxPool2d, Linear), trained with Adam;
2. **graph**: the same network exported to ONNX and run by :func:`npcompile.finetune.to_torch` (a ``GraphModule``),
   trained with the same optimizer, batch size, batches and starting weights;
3. **pass**: the whole ``finetune`` pass on the same ONNX model and data (its own shuffling and
   batching from NumPy arrays, reported by the pass itself; the ONNX Runtime checks excluded).

Then (``--bert``, the default; ``--no-bert`` skips it) the same native / graph comparison for a
tiny ``transformers`` BERT classifier (2 layers, hidden 64, 4 heads, eager attention, sequence 32,
random weights, nothing downloaded) exported by the TorchScript exporter, trained with
cross-entropy on random token ids (the last quarter of each sequence padded).

Native and graph run in interleaved rounds (native, graph, native, graph, ...) so that a noisy CPU
hits both alike; the figure per loop is the median over rounds, in samples per wall-clock second
and per second of the process's CPU time (the steadier figure on a shared machine, with
``--threads 1``). The goal is graph ≥ 0.8 × native.
It is a measurement script, not a test: nothing is asserted. Needs the torch extra (and
``transformers`` for the BERT row).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from npcompile.finetune import to_torch  # noqa: E402
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


Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]


def train_steps(model: nn.Module, batches: list[Batch], lr: float) -> tuple[float, float]:
    """Train over ``batches`` ((inputs...), labels) with Adam; returns (wall, process CPU) seconds."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.functional.cross_entropy
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    for xs, y in batches:
        loss = loss_fn(model(*xs), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, time.process_time() - c0


class TinyBert(nn.Module):
    """A tiny ``transformers`` BERT sequence classifier returning logits."""

    def __init__(self) -> None:
        super().__init__()
        import transformers

        cfg = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=64, num_labels=10,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                      attn_implementation="eager")
        self.bert = transformers.BertForSequenceClassification(cfg)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).logits


def export_bert(module: nn.Module, seq: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    ids, mask = torch.zeros(2, seq, dtype=torch.long), torch.ones(2, seq, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (ids, mask), buf, dynamo=False, opset_version=17,
                          input_names=["ids", "mask"], output_names=["logits"],
                          dynamic_axes={"ids": {0: "batch"}, "mask": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def compare(label: str, make_native: Callable[[], nn.Module], proto: onnx.ModelProto, batches: list[Batch],
            samples: int, rounds: int, lr: float) -> float:
    """Interleaved native / graph rounds from the same starting weights; prints and returns the ratio."""
    reference = make_native()
    state = reference.state_dict()

    def native() -> nn.Module:
        m = make_native()
        m.load_state_dict(state)
        return m

    train_steps(native(), batches[:4], lr)  # warm-up both (first-call allocations, oneDNN caches)
    train_steps(to_torch(proto), batches[:4], lr)
    times: dict[str, list[tuple[float, float]]] = {"native": [], "graph": []}
    for _ in range(rounds):
        times["native"].append(train_steps(native(), batches, lr))
        times["graph"].append(train_steps(to_torch(proto), batches, lr))
    wall = {k: samples / statistics.median(t for t, _ in v) for k, v in times.items()}
    cpu = {k: samples / statistics.median(c for _, c in v) for k, v in times.items()}
    print(f"{label} ({sum(p.numel() for p in reference.parameters())} parameters)")
    for k, name in (("native", "PyTorch module"), ("graph", "GraphModule (ONNX graph)")):
        spread = ", ".join(f"{samples / t:.0f}" for t, _ in times[k])
        print(f"  {name:<26} {wall[k]:8.0f} samples/s   {cpu[k]:8.0f} per CPU-s   (rounds: {spread})")
    ratio = wall["graph"] / wall["native"]
    cpu_ratio = cpu["graph"] / cpu["native"]
    print(f"  graph / native             {ratio:8.2f} x   {cpu_ratio:8.2f} x      (goal >= {GOAL}: "
          f"{'met' if ratio >= GOAL else 'NOT met'})")
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2048, help="samples per round (one epoch)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--bert", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure a tiny transformers BERT (needs transformers)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    proto = export(lenet())
    rng = np.random.default_rng(0)
    x = rng.random((args.samples, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, args.samples).astype(np.int64)
    batches = [((torch.from_numpy(x[i:i + args.batch_size]),), torch.from_numpy(y[i:i + args.batch_size]))
               for i in range(0, args.samples, args.batch_size)]

    print(f"fine-tuning throughput, Adam lr {args.lr}, batch {args.batch_size}, {args.samples} samples per round, "
          f"{args.rounds} rounds")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          f", Python {platform.python_version()}")
    torch.manual_seed(0)
    compare("LeNet-5-like CNN", lenet, proto, batches, args.samples, args.rounds, args.lr)

    if args.bert:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        seq, n = 32, args.samples // 4
        torch.manual_seed(0)
        bert_proto = export_bert(TinyBert(), seq)
        ids = rng.integers(0, 1000, (n, seq)).astype(np.int64)
        mask = np.ones((n, seq), np.int64)
        mask[:, 3 * seq // 4:] = 0
        labels = rng.integers(0, 10, n).astype(np.int64)
        bb = [((torch.from_numpy(ids[i:i + args.batch_size]), torch.from_numpy(mask[i:i + args.batch_size])),
               torch.from_numpy(labels[i:i + args.batch_size])) for i in range(0, n, args.batch_size)]
        torch.manual_seed(0)
        compare(f"tiny BERT classifier (transformers, eager attention, sequence {seq}, {n} samples per round)",
                TinyBert, bert_proto, bb, n, args.rounds, args.lr)

    data = Dataset({"input": x}, y, "synthetic")
    ctx = Context(proto, {"input": (1, 1, 28, 28)})
    result = FinetunePass(data, epochs=2, lr=args.lr, batch_size=args.batch_size).run(ctx)
    per_epoch = ", ".join(f"{e['samples_per_s']:.0f}" for e in result.data["epochs"])
    print(f"LeNet finetune pass (end to end) {result.data['samples_per_s']:8.0f} samples/s   (epochs: {per_epoch}; "
          f"shuffle, batching from NumPy, keep-zero masks, deterministic algorithms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
