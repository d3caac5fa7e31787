"""Passes and the pipeline that runs them.

A pass is a small class with a ``name``, a ``kind`` (``analysis``, ``select``, ``rewrite``) and
``run(ctx) -> PassResult``. The pipeline runs passes in order, times them, drops cached analyses
when a pass rewrites the model, and re-raises a failure naming the pass and those before it.
Passes are found by name in a registry filled by the built-in package (``npcompile.passes``),
by the entry-point group ``npcompile.passes``, or by an explicit ``module:Class`` path.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from npcompile.channels.analysis import AnalysisOptions, ChannelAnalysis, analyze
from npcompile.errors import NpcompileError, PassError, UserError
from npcompile.graph.model_io import to_graph, to_model
from npcompile.graph.shapes import static_shapes
from npcompile.pipeline.loading import import_class

__all__ = ["Context", "Pass", "PassResult", "Pipeline", "register_pass", "get_pass", "available_passes"]

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    """What a pass did: ``changed`` says honestly whether the model changed."""

    changed: bool = False
    summary: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Context:
    """State shared by the passes of one compilation.

    ``model`` is the current model; ``graph`` and ``analysis`` are built from it on demand and
    dropped whenever a rewrite pass sets a new model. ``scores`` (group id -> score per channel)
    is what analysis passes produce; ``removal`` (group id -> mask) is what selection produces.
    """

    def __init__(self, model: onnx.ModelProto, probe: dict[str, tuple[int, ...]], seed: int = 0) -> None:
        self.original = model
        self.probe = probe
        self.seed = seed
        self.notes: list[str] = []
        self.results: dict[str, Any] = {}
        self._model = model
        self._graph: gs.Graph | None = None
        self._analysis: ChannelAnalysis | None = None
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self.scores: dict[int, np.ndarray] = {}
        self.removal: dict[int, np.ndarray] = {}
        self.criterion: str | None = None
        #: one entry per applied removal: group name -> removed channel indices
        self.applied: list[dict[str, list[int]]] = []
        #: extra report sections passes contribute (e.g. "accuracy", "search", "sensitivity")
        self.report_extras: dict[str, Any] = {}
        #: how far channel analysis goes (``hidden``: the hidden width of transformers)
        self.analysis_options = AnalysisOptions()
        #: values a pass computes once and reuses in later steps (e.g. the original model's
        #: outputs on the training data, for distillation); kept across model changes
        self.cache: dict[Any, Any] = {}
        #: where passes that evaluate many probes run them (:mod:`npcompile.execution`; None: here)
        self.backend: Any = None

    @property
    def model(self) -> onnx.ModelProto:
        return self._model

    def set_graph(self, graph: gs.Graph) -> None:
        """Replace the model by an edited graph (a rewrite pass calls this)."""
        self._model = to_model(graph, self.original)
        self._graph = None
        self._analysis = None
        self._shapes = None
        self.scores, self.removal = {}, {}

    def set_model(self, model: onnx.ModelProto) -> None:
        """Replace the model by a new ``ModelProto`` (a rewrite pass that edits the protobuf, such
        as fine-tuning, calls this); drops cached graph, analysis, shapes, scores and removal."""
        self._model = model
        self._graph = None
        self._analysis = None
        self._shapes = None
        self.scores, self.removal = {}, {}

    def set_analysis_options(self, options: AnalysisOptions) -> None:
        """Analyse with ``options`` from now on (drops the cached analysis, scores and removal)."""
        self.analysis_options = options
        self._analysis = None
        self.scores, self.removal = {}, {}

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self._shapes is None:
            self._shapes = static_shapes(self._model, self.probe)
        return self._shapes

    @property
    def graph(self) -> gs.Graph:
        if self._graph is None:
            self._graph = to_graph(self._model)
            self._graph.toposort()
        return self._graph

    @property
    def analysis(self) -> ChannelAnalysis:
        if self._analysis is None:
            self._analysis = analyze(self.graph, self.shapes, self.analysis_options)
        return self._analysis


class Pass:
    """Base class of passes. Subclasses set ``name``, ``kind`` and ``description``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "analysis"
    description: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: Context) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({opts})"


_PASSES: dict[str, type[Pass]] = {}
_PLUGINS_LOADED = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: register a pass under its ``name`` (twice is an error)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _PASSES and _PASSES[cls.name] is not cls:
        raise ValueError(f"a pass named {cls.name!r} is already registered")
    _PASSES[cls.name] = cls
    return cls


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    importlib.import_module("npcompile.passes")
    for ep in metadata.entry_points(group="npcompile.passes"):
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Pass) and obj.name not in _PASSES:
                register_pass(obj)
        except Exception as e:  # a broken plugin is reported, not fatal
            log.warning("could not load pass plugin %s: %s", ep.name, e)


def available_passes() -> dict[str, type[Pass]]:
    _load_plugins()
    return dict(sorted(_PASSES.items()))


def get_pass(spec: str) -> type[Pass]:
    """A pass class by registered name or ``module:Class``."""
    _load_plugins()
    if spec in _PASSES:
        return _PASSES[spec]
    if ":" in spec:
        return import_class(spec, Pass, "pass")
    raise UserError(f"unknown pass {spec!r}; available: {', '.join(sorted(_PASSES))}")


class Pipeline:
    """An ordered list of passes."""

    def __init__(self, passes: list[Pass]) -> None:
        self.passes = passes

    def run(self, ctx: Context) -> list[dict[str, Any]]:
        """Run every pass; returns one record per pass (name, seconds, changed, summary)."""
        records: list[dict[str, Any]] = []
        done: list[str] = []
        for p in self.passes:
            t0 = time.perf_counter()
            try:
                result = p.run(ctx)
            except NpcompileError as e:  # npcompile's own: one line, its exit code
                raise PassError(f"pass {p.name} failed{_after(done)}: {e}", exit_code=e.exit_code) from e
            except Exception as e:  # anything else is a bug (or a plugin's): keep its kind and traceback
                e.add_note(f"pass {p.name} failed{_after(done)}")
                raise
            dt = time.perf_counter() - t0
            log.info("pass %s: %s (%.3f s)", p.name, result.summary or "done", dt)
            ctx.results[p.name] = result
            records.append({"name": p.name, "kind": p.kind, "seconds": dt, "changed": result.changed,
                            "summary": result.summary, "options": _jsonable(p.options)})
            done.append(p.name)
        return records


def _after(done: list[str]) -> str:
    return f" (after {', '.join(done)})" if done else ""


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v))
            for k, v in options.items()}
