"""Fine-tuning on the graph: retrain the current model with PyTorch, without its training code.

The model is run by :class:`npcompile.finetune.graph_module.GraphModule` (one torch function per ONNX op,
its floating-point weights as parameters), trained on labelled data with cross-entropy, and the
trained weights are written back into the ONNX model (same names, dtypes and structure).

- **Loss.** ``cross_entropy`` treats the chosen output as logits; when that output comes straight
  from a ``Softmax`` (``LogSoftmax``) node, the cross-entropy of those probabilities
  (log-probabilities) is used instead, so classifiers exported with their softmax train
  correctly. ``nll`` always takes the output as log-probabilities.
- **Distillation from the original model** (``distill``, default 0: off): the loss becomes
  ``(1 - distill) * cross_entropy(labels) + distill * T² * KL(teacher_T || student_T)`` with the
  *original* (unpruned) model as teacher and both distributions softened by temperature
  ``T = temperature`` (default 2). The teacher's outputs are computed once with ONNX Runtime
  (kept in ``Context.cache`` for the later steps of a schedule) or, above
  :data:`TEACHER_CACHE_BYTES`, per batch. Off by default: on the maxout LeNet-5 example,
  ``distill=0.5`` lost 0.2 points more than the labels alone after maxout neuron pruning (3 models
  x 2 seeds), but did better after 92 % weight sparsity (-0.07 against -0.20 points, 3 models),
  where the pruned network is far from the original.
- **Zeros stay zeros** (``keep_zeros=True``, the default): every weight that is exactly zero
  before training is held at zero (a mask per parameter), so dead channels stay dead and
  magnitude-sparsified weights stay sparse.
- **BatchNormalization** keeps the graph's running statistics (``freeze_bn_stats=True``, the
  default); ``False`` trains with batch statistics and writes the updated statistics back.
- **How long.** ``epochs=None`` (the default) trains for enough epochs to make at least
  :data:`AUTO_MIN_STEPS` optimizer steps, between 1 and :data:`AUTO_MAX_EPOCHS` epochs: one epoch of
  a small dataset is too few steps to recover a pruned network, and large datasets need only one or
  two passes for recovery. ``steps`` sets the number of optimizer steps instead.
- **Learning-rate schedule.** ``schedule="cosine"`` (the default) decays the learning rate from
  ``lr`` to zero over the run (half a cosine); recovery ends in a low-loss basin instead of where
  the last large step left it. ``"constant"`` keeps ``lr``.
- **Threads.** ``threads`` > 0 sets PyTorch's intra-op threads for the run (restored afterwards);
  0 leaves PyTorch's setting.
- **Determinism.** Given ``seed`` (default: the compilation's seed), the shuffle, the torch RNG
  and deterministic algorithms are fixed: the same data, options and thread count give a
  byte-identical model. The global torch RNG state is restored afterwards.
- **Checks.** Before training, the torch graph must reproduce ONNX Runtime's outputs on a few
  training samples (otherwise the pass refuses to train an op whose semantics differ); after
  training, the written-back model is run in ONNX Runtime and the difference is reported.

``PassResult.data`` holds one record per epoch (mean loss, accuracy, samples, steps, seconds,
samples/s, learning rate at its end) and totals. A progress bar is shown only when stderr is a
terminal; otherwise each epoch is logged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from npcompile.errors import OPT, OptionError, UserError
from npcompile.pipeline import Context, Pass, PassOptions, PassResult, option, register_pass
from npcompile.report.progress import progress
from npcompile.runtime.data import Dataset, load_data
from npcompile.runtime.stream import batches, fetch

__all__ = ["FinetunePass", "OPTIMIZERS", "LOSSES", "SCHEDULES", "auto_epochs"]

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
#: teacher outputs larger than this are computed per batch instead of once
TEACHER_CACHE_BYTES = 512 * 2**20
#: with ``epochs=None``: train at least this many optimizer steps ...
AUTO_MIN_STEPS = 3000
#: ... in at most this many epochs (and at least one)
AUTO_MAX_EPOCHS = 10
LOSSES = ("cross_entropy", "nll")
#: samples the torch graph is checked on against ONNX Runtime before training
CHECK_SAMPLES = 8
CHECK_RTOL = 1e-3


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise UserError("fine-tuning needs PyTorch: pip install 'npcompile[torch]'") from None
    return torch


@register_pass
class FinetunePass(Pass):
    """Train the current model on labelled data (``train``: a :class:`Dataset` or an ``.npz``
    path) and write the trained weights back into it."""

    name = "finetune"
    kind = "rewrite"
    description = "retrain the model's weights with PyTorch on labelled data (needs --train and torch)"
    produces = frozenset({"model"})
    exact = False
    #: options naming a data file, loaded by pipeline files (option -> labels mode of load_data)
    data_options: ClassVar[dict[str, str]] = {"train": "required"}

    @dataclass(frozen=True)
    class Options(PassOptions):
        train: Dataset | str | Path | None = option(None, record=False)
        epochs: int | None = None
        lr: float = 1e-3
        optimizer: str = "adam"
        batch_size: int = 64
        seed: int | None = None
        momentum: float = 0.9
        weight_decay: float = 0.0
        loss: str = "cross_entropy"
        steps: int | None = None
        keep_zeros: bool = True
        freeze_bn_stats: bool = True
        output: int | str = 0
        schedule: str = "cosine"
        threads: int = 0
        distill: float = 0.0
        temperature: float = 2.0
        verify: bool = option(True, record=False)

        def __post_init__(self) -> None:
            optimizer = self.optimizer.lower()
            loss = self.loss.lower().replace("-", "_")
            schedule = self.schedule.lower()
            epochs, steps, threads = self.epochs, self.steps, self.threads
            distill, temperature, batch_size, lr = self.distill, self.temperature, self.batch_size, self.lr
            weight_decay, momentum = self.weight_decay, self.momentum
            if optimizer not in OPTIMIZERS:
                raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
            if loss not in LOSSES:
                raise UserError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
            if schedule not in SCHEDULES:
                raise UserError(f"learning-rate schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
            if epochs is not None and int(epochs) < 1:
                raise UserError(f"epochs must be >= 1, got {epochs}")
            if int(threads) < 0:
                raise UserError(f"threads must be >= 0, got {threads}")
            if not 0.0 <= float(distill) <= 1.0:
                raise UserError(f"distillation weight must be in [0, 1], got {distill}")
            if not (float(temperature) > 0 and math.isfinite(float(temperature))):
                raise UserError(f"distillation temperature must be > 0, got {temperature}")
            if steps is not None and int(steps) < 1:
                raise UserError(f"steps must be >= 1, got {steps}")
            if int(batch_size) < 1:
                raise UserError(f"batch size must be >= 1, got {batch_size}")
            if not (float(lr) > 0 and math.isfinite(float(lr))):
                raise UserError(f"learning rate must be > 0, got {lr}")
            if float(weight_decay) < 0 or not 0 <= float(momentum) < 1:
                raise UserError("weight decay must be >= 0 and momentum in [0, 1)")
            self._set(epochs=None if epochs is None else int(epochs), lr=float(lr), optimizer=optimizer,
                      batch_size=int(batch_size), momentum=float(momentum), weight_decay=float(weight_decay),
                      loss=loss, steps=None if steps is None else int(steps), keep_zeros=bool(self.keep_zeros),
                      freeze_bn_stats=bool(self.freeze_bn_stats), schedule=schedule, threads=int(threads),
                      distill=float(distill), temperature=float(temperature))

    # ------------------------------------------------------------------------------------------

    def _data(self, model: onnx.ModelProto) -> Dataset:
        if self.train is None:
            raise OptionError(f"fine-tuning needs labelled training data ({OPT:train} DATA.npz)")
        data = self.train
        if not isinstance(data, Dataset):
            data = load_data(data, model, labels="required", what="training data")
        if data.labels is None:
            raise UserError(f"training data {data.source or ''} has no 'labels' array".replace("  ", " "))
        return data

    def _output_index(self, names: list[str]) -> int:
        if isinstance(self.output, str):
            if self.output not in names:
                raise UserError(f"fine-tuning output {self.output!r} is not a model output ({names})")
            return names.index(self.output)
        if not 0 <= int(self.output) < len(names):
            raise UserError(f"fine-tuning output index {self.output} out of range ({len(names)} outputs)")
        return int(self.output)

    def run(self, ctx: Context) -> PassResult:
        torch = _torch()
        from npcompile.finetune.graph_module import GraphModule

        model = ctx.model
        data = self._data(model)
        seed = ctx.seed if self.seed is None else int(self.seed)
        gm = GraphModule(model, freeze_bn_stats=self.freeze_bn_stats)
        missing = [n for n in gm.input_names if n not in data.inputs]
        if missing:
            raise UserError(f"training data lacks model input(s) {missing}")
        out_idx = self._output_index(gm.output_names)
        producer = {o: n.op_type for n in model.graph.node for o in n.output}.get(gm.output_names[out_idx])
        params = [p for _, p in gm.named_onnx_parameters()]
        if not params:
            raise UserError("nothing to fine-tune: the model has no floating-point weights")

        n = len(data)
        labels = np.asarray(data.labels, dtype=np.int64)
        steps_per_epoch = math.ceil(n / self.batch_size)
        epochs_planned = self.epochs if self.epochs is not None else auto_epochs(steps_per_epoch)
        total_steps = epochs_planned * steps_per_epoch
        if self.steps is not None:
            total_steps = self.steps
        deterministic = torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        threads_before = torch.get_num_threads()
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            torch.use_deterministic_algorithms(True, warn_only=True)
            try:
                check_before = self._check(gm, model, data, out_idx) if self.verify else None
                masks = []
                if self.keep_zeros:
                    masks = [(p, p.detach() != 0) for p in params if bool((p.detach() == 0).any())]
                kept = sum(int((~m).sum()) for _, m in masks)
                opt = self._make_optimizer(torch, params)
                teacher = (_Teacher(ctx, data, gm.output_names[out_idx], self.threads)
                           if self.distill > 0 else None)
                epochs = self._train(torch, gm, data, labels, out_idx, producer, opt, masks, seed,
                                     total_steps, steps_per_epoch, teacher)
            finally:
                torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
                torch.set_num_threads(threads_before)
        trained = gm.write_back(model)
        after = self._check(gm, trained, data, out_idx) if self.verify else None
        ctx.set_model(trained)

        samples = sum(e["samples"] for e in epochs)
        seconds = sum(e["seconds"] for e in epochs)
        result = {
            "epochs": epochs,
            "steps": sum(e["steps"] for e in epochs),
            "samples": samples,
            "seconds": seconds,
            "samples_per_s": samples / seconds if seconds > 0 else float("inf"),
            "optimizer": self.optimizer,
            "lr": self.lr,
            "schedule": self.schedule,
            "epochs_requested": "auto" if self.epochs is None else self.epochs,
            "threads": self.threads or threads_before,
            "batch_size": self.batch_size,
            "seed": seed,
            "loss_function": self.loss,
            "distill": self.distill,
            "temperature": self.temperature,
            "teacher_accuracy": teacher.accuracy(labels) if teacher is not None else None,
            "parameters": int(sum(p.numel() for p in params)),
            "tensors": len(params),
            "kept_zeros": kept,
            "train_samples": n,
            "check_before_max_abs_diff": check_before,
            "ort_max_abs_diff": after,
        }
        report = {k: v for k, v in result.items() if k != "epochs"} | {"loss_per_epoch": [e["loss"] for e in epochs]}
        first, last = epochs[0]["loss"], epochs[-1]["loss"]
        return PassResult(True, f"fine-tuned {result['steps']} steps ({len(epochs)} epoch(s)) on {n} samples: "
                                f"loss {first:.4f} -> {last:.4f}, {result['samples_per_s']:.0f} samples/s", result,
                          report=report)

    # ------------------------------------------------------------------------------------------

    def _make_optimizer(self, torch: Any, params: list) -> Any:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def _loss_fn(self, torch: Any, producer: str | None) -> Any:
        F = torch.nn.functional
        if self.loss == "nll" or producer == "LogSoftmax":
            return F.nll_loss
        if producer == "Softmax":
            tiny = torch.finfo(torch.float32).tiny
            return lambda p, y: F.nll_loss(torch.log(p.clamp_min(tiny)), y)
        return F.cross_entropy

    def _train(self, torch: Any, gm: Any, data: Dataset, labels: np.ndarray, out_idx: int, producer: str | None,
               opt: Any, masks: list, seed: int, total_steps: int, steps_per_epoch: int,
               teacher: _Teacher | None) -> list[dict[str, Any]]:
        loss_fn = self._loss_fn(torch, producer)
        F = torch.nn.functional
        alpha, T = self.distill, self.temperature
        scheduler = None
        if self.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))
        rng = np.random.default_rng(seed)
        n = len(data)
        n_out = len(gm.output_names)
        gm.train()
        records: list[dict[str, Any]] = []
        done = 0
        with progress("fine-tuning", total=total_steps) as tick:
            epoch = 0
            while done < total_steps:
                epoch += 1
                order = rng.permutation(n)
                loss_sum, correct, seen, steps = 0.0, 0, 0, 0
                t0 = time.perf_counter()
                for start in range(0, n, self.batch_size):
                    if done >= total_steps:
                        break
                    idx = order[start:start + self.batch_size]
                    feeds = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in data.inputs.items()
                             if k in gm.input_names}
                    y = torch.from_numpy(labels[idx])
                    out = gm(**feeds)
                    if n_out > 1:
                        out = out[out_idx]
                    if start == 0 and epoch == 1:
                        _check_labels(out, labels)
                    loss = loss_fn(out, y)
                    if teacher is not None:
                        log_pt = F.log_softmax(torch.from_numpy(teacher(idx)) / T, dim=1)
                        log_ps = F.log_softmax(_as_logits(torch, out, producer) / T, dim=1)
                        kd = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * (T * T)
                        loss = (1.0 - alpha) * loss + alpha * kd
                    if not torch.isfinite(loss):
                        raise OptionError(f"fine-tuning diverged (loss {loss.item()}) at step {done + 1}; "
                                          f"lower the learning rate ({OPT:lr})")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if scheduler is not None:
                        scheduler.step()
                    if masks:
                        with torch.no_grad():
                            for p, m in masks:
                                p.mul_(m)
                    b = len(idx)
                    loss_sum += float(loss.detach()) * b
                    if out.ndim >= 2:
                        correct += int((out.detach().argmax(1) == y).sum())
                    seen += b
                    steps += 1
                    done += 1
                    tick(1, f"epoch {epoch} loss {loss_sum / seen:.4f}")
                dt = time.perf_counter() - t0
                rec = {"epoch": epoch, "loss": loss_sum / seen, "accuracy": correct / seen, "samples": seen,
                       "steps": steps, "seconds": dt, "samples_per_s": seen / dt if dt > 0 else float("inf"),
                       "lr_end": float(opt.param_groups[0]["lr"])}
                records.append(rec)
                log.info("finetune epoch %d: loss %.4f, accuracy %.2f%%, %d steps, %.0f samples/s", epoch,
                         rec["loss"], 100 * rec["accuracy"], steps, rec["samples_per_s"])
        gm.eval()
        return records

    def _check(self, gm: Any, model: onnx.ModelProto, data: Dataset, out_idx: int) -> float:
        """Max |torch - ONNX Runtime| on the first samples; refuses to go on when they disagree."""
        torch = _torch()
        from npcompile.runtime.verify import make_session

        k = min(CHECK_SAMPLES, len(data))
        feeds = {name: np.ascontiguousarray(v[:k]) for name, v in data.inputs.items() if name in gm.input_names}
        sess = make_session(model)
        ref = sess.run([gm.output_names[out_idx]], feeds)[0]
        was_training = gm.training
        gm.eval()
        with torch.no_grad():
            got = gm(**{name: torch.from_numpy(v) for name, v in feeds.items()})
        gm.train(was_training)
        got = (got[out_idx] if isinstance(got, tuple) else got).numpy()
        if got.shape != ref.shape:
            raise RuntimeError(f"the torch graph's output shape {list(got.shape)} differs from ONNX Runtime's "
                               f"{list(ref.shape)}")
        diff = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
        scale = max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)
        if not diff <= CHECK_RTOL * scale:
            raise RuntimeError(f"the torch graph differs from ONNX Runtime by {diff:.3g} (max |output| "
                               f"{scale:.3g}); refusing to fine-tune a different function")
        return diff


def _as_logits(torch: Any, out: Any, producer: str | None) -> Any:
    """Scores whose softmax is the model's distribution: probabilities from a ``Softmax`` node are
    turned into log-probabilities; anything else already is (up to a constant per sample)."""
    if producer == "Softmax":
        return torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))
    return out


class _Teacher:
    """The original model's output on the training samples, as scores (see :func:`_as_logits`).

    Computed once with ONNX Runtime and kept in ``ctx.cache`` (later steps of a schedule reuse it),
    or per batch when all of it would exceed :data:`TEACHER_CACHE_BYTES`.
    """

    BATCH = 256

    def __init__(self, ctx: Context, data: Dataset, output: str, threads: int) -> None:
        from npcompile.runtime.verify import make_session

        model = ctx.original
        self.output = output
        self.producer = {o: n.op_type for n in model.graph.node for o in n.output}.get(output)
        self.inputs = {k: v for k, v in data.inputs.items()
                       if k in {i.name for i in model.graph.input}}
        key = ("finetune-teacher", data.source or id(data), len(data), output)
        self.all: np.ndarray | None = ctx.cache.get(key)
        if self.all is not None:
            return
        self.session = make_session(model, threads=threads)
        first = self._run(np.arange(min(1, len(data))))
        if first.nbytes * len(data) <= TEACHER_CACHE_BYTES:
            self.all = np.concatenate([self._scores(b.feeds)
                                       for b in batches(Dataset(self.inputs), self.BATCH, contiguous=True)])
            ctx.cache[key] = self.all
            self.session = None

    def _run(self, idx: np.ndarray) -> np.ndarray:
        return self._scores({k: np.ascontiguousarray(v[idx]) for k, v in self.inputs.items()})

    def _scores(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = fetch(self.session, [self.output], feeds)[self.output]
        out = out.astype(np.float32, copy=False)
        if self.producer == "Softmax":
            out = np.log(np.maximum(out, np.finfo(np.float32).tiny))
        return out

    def accuracy(self, labels: np.ndarray) -> float | None:
        """Top-1 accuracy of the teacher on the training labels (None when computed per batch)."""
        if self.all is None or self.all.ndim < 2 or len(self.all) == 0:
            return None
        acc = float(np.mean(self.all.argmax(1) == labels.reshape(len(labels), *self.all.shape[2:])))
        if acc < 2.0 / self.all.shape[1]:
            log.warning("the original model scores %.1f %% on the training labels: distilling from it "
                        "(distill > 0) pulls towards a poor model", 100 * acc)
        return acc

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        if self.all is not None:
            return np.ascontiguousarray(self.all[idx])
        return self._run(idx)


def auto_epochs(steps_per_epoch: int) -> int:
    """Epochs trained with ``epochs=None``: enough for :data:`AUTO_MIN_STEPS` steps, within
    ``[1, AUTO_MAX_EPOCHS]``."""
    return max(1, min(AUTO_MAX_EPOCHS, math.ceil(AUTO_MIN_STEPS / max(1, steps_per_epoch))))


def _check_labels(out: Any, labels: np.ndarray) -> None:
    if out.ndim < 2 or out.shape[0] == 0:
        raise UserError(f"fine-tuning needs a class-score output [batch, classes, ...], the model gives "
                        f"{list(out.shape)}")
    classes = int(out.shape[1])
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        raise UserError(f"training labels range over [{lo}, {hi}] but the model has {classes} classes")
