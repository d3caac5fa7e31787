"""Shared by the execution tests: a zoo network with data, and the selection passes run on a
given backend (sensitivity, binary search, budget), with everything they decided."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import zoo  # noqa: E402

from npcompile.execution import Backend  # noqa: E402
from npcompile.graph.model_io import load_model  # noqa: E402
from npcompile.graph.shapes import probe_shapes  # noqa: E402
from npcompile.passes.magnitude import MagnitudePass  # noqa: E402
from npcompile.passes.prune import PrunePass  # noqa: E402
from npcompile.passes.search import BinarySearchPass, BudgetPass, SensitivityPass  # noqa: E402
from npcompile.pipeline import Context  # noqa: E402
from npcompile.runtime.data import Dataset  # noqa: E402
from npcompile.runtime.evaluate import FidelityEvaluator  # noqa: E402


@dataclass
class Case:
    path: Path
    model: onnx.ModelProto
    data: Dataset
    npz: Path


def zoo_case(tmp: Path, name: str = "resnet_basic", samples: int = 48) -> Case:
    """The zoo network ``name`` (random BatchNorm statistics, so channels differ) and ``samples``
    random inputs, also written as ``eval.npz``."""
    import torch

    torch.manual_seed(0)
    builder, shape = zoo.ZOO[name]
    path = tmp / f"{name}.onnx"
    zoo.export(zoo.randomize_bn(builder()), shape, path, dynamo=False)
    x = np.random.default_rng(0).standard_normal((samples, *shape[1:])).astype(np.float32)
    np.savez(tmp / "eval.npz", input=x)
    return Case(path, load_model(str(path)), Dataset({"input": x}, None, "random"), tmp / "eval.npz")


def evaluator(case: Case, kind: str = "top1") -> FidelityEvaluator:
    return FidelityEvaluator.from_model(case.data, case.model, kind, batch_size=8)


def run_passes(case: Case, backend: Backend | None, ev: Any = None) -> dict[str, Any]:
    """Sensitivity, binary search and budget on ``backend``: their tables and plans, and the
    really pruned model of the binary search (serialized)."""
    ev = ev if ev is not None else evaluator(case)
    out: dict[str, Any] = {}
    for name, make in (("sensitivity", lambda: SensitivityPass(evaluator=ev, fractions=(0.25, 0.5))),
                       ("binary-search", lambda: BinarySearchPass(tolerance=2.0, evaluator=ev)),
                       ("budget", lambda: BudgetPass(target_flops=0.7, evaluator=ev, fractions=(0.25, 0.5)))):
        ctx = Context(case.model, probe_shapes(case.model))
        ctx.backend = backend
        MagnitudePass().run(ctx)
        data = make().run(ctx).data
        removal = {int(k): np.flatnonzero(v).tolist() for k, v in ctx.removal.items()}
        out[name] = {"data": data, "removal": removal}
        if name == "binary-search":
            PrunePass().run(ctx)
            out["model"] = ctx.model.SerializeToString()
    return out


def decisions(result: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on the backend."""
    return {"sensitivity": result["sensitivity"]["data"]["table"],
            "baseline": result["sensitivity"]["data"]["baseline"],
            "search": [(p["group"], p["removed"], p["metric"], p["accepted"])
                       for p in result["binary-search"]["data"]["probes"] if p["on_path"]],
            "search_removal": result["binary-search"]["removal"], "final": result["binary-search"]["data"]["final"],
            "budget_removal": result["budget"]["removal"], "model": result["model"]}
