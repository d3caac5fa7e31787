"""Passes and the pipeline that runs them.

A pass is a small class with a ``name``, a ``kind`` (``analysis``, ``select``, ``rewrite``) and
``run(ctx) -> PassResult``, and a contract: what it ``requires`` and ``produces`` (products such
as ``scores``, ``removal``, ``model``) and whether it is ``exact`` (never changes the model's
outputs). The pipeline checks every pass's requirements before the first pass runs, runs passes
in order, times them, runs the ONNX checker after every pass that modified the model, merges each
result's report section into ``ctx.report_extras``, tracks whether the compilation is still
lossless (:attr:`Context.lossless`), and re-raises a failure naming the pass and those before it.
Passes are found by name in a registry filled by the built-in package (``npcompile.passes``),
by the entry-point group ``npcompile.passes``, or by an explicit ``module:Class`` path.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from importlib import metadata
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter

from npcompile.channels.analysis import AnalysisOptions, ChannelAnalysis, analyze
from npcompile.errors import NpcompileError, PassError, UserError, VerificationError
from npcompile.graph.model_io import fold_constants, serialized, to_graph, to_model
from npcompile.graph.shapes import static_shapes
from npcompile.pipeline.loading import import_class
from npcompile.pipeline.options import build_options, recorded_options

__all__ = ["Context", "Pass", "PassResult", "Pipeline", "register_pass", "get_pass", "available_passes"]

log = logging.getLogger(__name__)


#: the key in ``Context.products`` for what passes without a ``produces`` declaration made
_ANY = "*"
#: a model over this size cannot be checked in memory (protobuf's limit)
_TWO_GB = 2**31 - 1


@dataclass
class PassResult:
    """What a pass did: ``changed`` says honestly whether the model changed; ``data`` is for
    callers and tests (``ctx.results``). ``report`` is the pass's section of the report: the
    pipeline puts it under the pass's :attr:`Pass.section` (by default its name); ``sections``
    holds further top-level report sections by name (rare: ``latency-budget``'s
    ``latency-model``)."""

    changed: bool = False
    summary: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    sections: dict[str, Any] = field(default_factory=dict)

    def data_section(self) -> PassResult:
        """Make the summary and the data (where there is any) the report section; returns self."""
        self.report = {"summary": self.summary, **self.data} if self.data else None
        return self


class Context:
    """State shared by the passes of one compilation.

    One representation of the current model travels through the pipeline, the one the last
    rewrite set: the onnx-graphsurgeon graph of :meth:`set_graph` or the ``ModelProto`` of
    :meth:`set_model`. The other is made from it on demand, once, and kept until the next change:
    ``model`` exports a graph that was set (:func:`~npcompile.graph.model_io.to_model`), ``graph``
    imports a model that was set (:func:`~npcompile.graph.model_io.to_graph`). A graph that was
    set is returned as it is, settled first (:meth:`_settle`) into what exporting and importing
    it would give. A pass that edits ``ctx.graph`` in place says so with
    ``ctx.set_graph(ctx.graph)``; until then ``model`` stays the export from before the edit.
    ``analysis`` and ``shapes`` are built on demand and dropped on every change. ``scores``
    (group id -> score per channel) is what analysis passes produce; ``removal`` (group id ->
    mask) is what selection produces.
    """

    def __init__(self, model: onnx.ModelProto, probe: dict[str, tuple[int, ...]], seed: int = 0) -> None:
        self.original = model
        self.probe = probe
        self.seed = seed
        self.notes: list[str] = []
        self.results: dict[str, Any] = {}
        #: the current model as a proto; None: not exported yet (``_graph`` is current)
        self._model: onnx.ModelProto | None = model
        #: the current model as a graph; None: not imported yet (``_model`` is current)
        self._graph: gs.Graph | None = None
        #: ``_graph`` is one a pass set and not yet settled (:meth:`_settle`)
        self._unsettled = False
        self._analysis: ChannelAnalysis | None = None
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self.scores: dict[int, np.ndarray] = {}
        self.removal: dict[int, np.ndarray] = {}
        self.criterion: str | None = None
        #: one entry per applied removal: group name -> removed channel indices
        self.applied: list[dict[str, list[int]]] = []
        #: report sections: the pipeline merges the passes' ``PassResult.report`` here (e.g.
        #: "finetune", "sparsity", "binary-search"); ``compile()`` adds "execution" and "accuracy"
        self.report_extras: dict[str, Any] = {}
        #: products the passes run so far produced: name -> exact (see :attr:`Pass.exact`)
        self.products: dict[str, bool] = {}
        #: the passes run so far that modified the model without being exact
        self.inexact: list[str] = []
        #: how far channel analysis goes (``hidden``: the hidden width of transformers)
        self.analysis_options = AnalysisOptions()
        #: values a pass computes once and reuses in later steps (e.g. the original model's
        #: outputs on the training data, for distillation); kept across model changes
        self.cache: dict[Any, Any] = {}
        #: where passes that evaluate many probes run them (:mod:`npcompile.execution`; None: here)
        self.backend: Any = None

    @property
    def model(self) -> onnx.ModelProto:
        """The current model as a ``ModelProto`` (exported from the graph a pass set, once)."""
        if self._model is None:
            assert self._graph is not None
            self._model = to_model(self._graph, self.original)
        return self._model

    @property
    def lossless(self) -> bool:
        """Whether every pass run so far that modified the model was exact (so the model's outputs
        are unchanged); derived from the passes' ``exact`` declarations and their inputs."""
        return not self.inexact

    def holds(self, product: str) -> bool:
        """Whether the context holds ``product`` already (produced by an earlier pipeline, or set
        by hand: ``ctx.removal = ...``)."""
        return product in self.products or product == "model" or bool(getattr(self, product, None))

    def set_graph(self, graph: gs.Graph) -> None:
        """Replace the model by an edited graph (a rewrite pass calls this, also with
        ``ctx.graph`` edited in place): the graph becomes the current model, exported only when
        ``model`` is read; drops cached analysis, shapes, scores and removal."""
        self._graph = graph
        self._model = None
        self._unsettled = True
        self._dropped()

    def set_model(self, model: onnx.ModelProto) -> None:
        """Replace the model by a new ``ModelProto`` (a rewrite pass that edits the protobuf, such
        as fine-tuning, calls this); drops cached graph, analysis, shapes, scores and removal."""
        self._model = model
        self._graph = None
        self._unsettled = False
        self._dropped()

    def _dropped(self) -> None:
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
            self._shapes = static_shapes(self.model, self.probe)
        return self._shapes

    @property
    def graph(self) -> gs.Graph:
        if self._graph is None:
            self._graph = to_graph(self.model)
            self._graph.toposort()
        elif self._unsettled:
            self._settle()
        return self._graph

    def _settle(self) -> None:
        """Make the graph a pass set what importing its export gave when every change was exported
        (``to_graph(to_model(graph))``, then sorted): unused nodes and tensors dropped and the
        nodes sorted (the export's first step), constant-only nodes folded (the import's; the
        model is exported before such a fold, as it was), sorted again, and the variables' dtypes
        and shapes in the importer's types (:func:`_reimported_types`).

        Not the same as an import: the nodes and tensors are the objects the pass set, not copies
        (what an earlier pass kept of it sees later edits), attribute values keep their
        Python types (a tuple stays a tuple, where the import reads a list: none found), and a
        constant not loaded yet still reads from the proto it was imported from (onnx-graphsurgeon
        renames it there when a renamed one is exported: no pass renames a constant). Compared
        over the golden, rules, search, reconstruct, transformer and quantize tests: no difference.
        """
        graph = self._graph
        assert graph is not None
        self._unsettled = False
        graph.cleanup().toposort()
        if fold_constants(graph, apply=False):
            self.model  # noqa: B018 - the export of the graph as set, before folding
            fold_constants(graph)
        graph.toposort()
        _reimported_types(graph)

    @property
    def analysis(self) -> ChannelAnalysis:
        if self._analysis is None:
            self._analysis = analyze(self.graph, self.shapes, self.analysis_options)
        return self._analysis


def _reimported_types(graph: gs.Graph) -> None:
    """The types of ``graph``'s variables as importing its export gives them: the export writes a
    variable's dtype and shape into a ``ValueInfoProto`` (none where its dtype is unknown), the
    import reads them back (``np.int64`` as ``np.dtype("int64")``, a tuple shape as a list)."""
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and (t.dtype is not None or t.shape is not None):
            back = OnnxImporter.import_tensor(OnnxExporter.export_value_info_proto(t, do_type_check=False))
            t.dtype, t.shape, t.type = back.dtype, back.shape, back.type
    for node in graph.nodes:
        for sub in node.subgraphs():
            _reimported_types(sub)


class Pass:
    """Base class of passes. Subclasses set ``name``, ``kind`` and ``description``, and declare
    their contract:

    - ``requires``: products an earlier pass must have produced (or the context hold) before this
      one runs, e.g. ``{"scores"}``;
    - ``produces``: the products it makes (``"scores"``, ``"removal"``, ``"model"``: a modified
      model, ...); None (the default, for passes written before the contract): unknown, so it may
      satisfy any requirement;
    - ``exact``: True if what it does is lossless given exact inputs: a rewrite never changes the
      model's outputs (cleanup; prune of an exact removal), a selection selects only provably dead
      channels (given exact scores), an analysis scores exactly the provably dead channels 0.
      None (the default): exact only if it did not modify the model.

    The exactness of a product is the pass's own ``exact`` and that of every product it
    required; a compilation is lossless while every pass that modified the model was exact.
    ``section``: the report key of the pass's ``PassResult.report`` (default: ``name``);
    ``accumulate``: a section already in the report is extended (its lists appended to, its other
    values replaced) instead of replaced, for passes that share one section.

    Options: a pass declares them once, as a frozen dataclass ``Options`` (see
    :mod:`npcompile.pipeline.options`); the base class builds it from the constructor's
    arguments, sets each field as an attribute and records the fields for the report. A pass
    without ``Options`` (written before them) takes its options in its own ``__init__`` and calls
    ``super().__init__(**options)`` with those to record.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "analysis"
    description: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    produces: ClassVar[frozenset[str] | None] = None
    exact: ClassVar[bool | None] = None
    section: ClassVar[str] = ""
    accumulate: ClassVar[bool] = False
    #: the pass's options: a frozen dataclass (:mod:`npcompile.pipeline.options`); None: old style
    Options: ClassVar[type | None] = None

    def __init__(self, *args: Any, **options: Any) -> None:
        options_cls = type(self).Options
        if options_cls is None:
            if args:
                raise TypeError(f"{type(self).__name__}.__init__() takes keyword arguments only")
            self.options = options
            return
        self.config = build_options(options_cls, type(self).__name__, args, options)
        for f in dataclass_fields(self.config):
            setattr(self, f.name, getattr(self.config, f.name))
        #: what the report lists with the pass
        self.options = self.recorded_options()

    def recorded_options(self) -> dict[str, Any]:
        """The options the report lists with the pass (default: the fields of ``Options`` not
        declared with ``record=False``, in field order)."""
        return recorded_options(self.config)

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
    """An ordered list of passes. ``internal``: the list is npcompile's own (built from the
    option flags), so a pass whose requirement is not met is npcompile's bug (exit code 3), not
    the user's (a :class:`UserError` for a pipeline file or a hand-built list)."""

    def __init__(self, passes: list[Pass], internal: bool = False) -> None:
        self.passes = passes
        self.internal = internal

    def check(self, ctx: Context) -> None:
        """Every pass's requirements are produced by an earlier pass or held by ``ctx``."""
        made: set[str] = set()
        unknown = _ANY in ctx.products  # a pass without a ``produces`` declaration may make anything
        for i, p in enumerate(self.passes):
            for need in sorted(set(p.requires)):
                if need in made or unknown or ctx.holds(need):
                    continue
                makers = sorted({cls.name for cls in _PASSES.values() if cls.produces and need in cls.produces})
                hint = f" (e.g. {', '.join(makers)})" if makers else ""
                where = f"pass #{i + 1} {p.name}"
                before = f"; passes before it: {', '.join(q.name for q in self.passes[:i])}" if i else ""
                msg = f"{where} requires {need}, which no earlier pass produces{hint}{before}"
                if self.internal:
                    raise PassError(f"npcompile bug: the pipeline built from the options is out of order: {msg}")
                raise UserError(msg)
            if p.produces is None:
                unknown = True
            else:
                made |= set(p.produces)

    def run(self, ctx: Context) -> list[dict[str, Any]]:
        """Check the requirements, then run every pass; returns one record per pass (name, kind,
        seconds, changed, summary, options)."""
        self.check(ctx)
        records: list[dict[str, Any]] = []
        done: list[str] = []
        for p in self.passes:
            t0 = time.perf_counter()
            before = ctx.model
            try:
                result = p.run(ctx)
            except NpcompileError as e:  # npcompile's own: one line, its exit code
                # the placeholders of an option error stay: the CLI names the options by flag
                raise PassError(f"pass {p.name} failed{_after(done)}: {e.template}", exit_code=e.exit_code) from e
            except Exception as e:  # anything else is a bug (or a plugin's): keep its kind and traceback
                e.add_note(f"pass {p.name} failed{_after(done)}")
                raise
            modified = bool(result.changed) or ctx.model is not before
            if modified:
                _check_model(ctx, p, done)
            dt = time.perf_counter() - t0
            log.info("pass %s: %s (%.3f s)", p.name, result.summary or "done", dt)
            ctx.results[p.name] = result
            _account(ctx, p, modified)
            _merge_report(ctx, p, result)
            records.append({"name": p.name, "kind": p.kind, "seconds": dt, "changed": result.changed,
                            "summary": result.summary, "options": _jsonable(p.options)})
            done.append(p.name)
        return records


def _check_model(ctx: Context, p: Pass, done: list[str]) -> None:
    """The ONNX checker on the model ``p`` produced: a failure is npcompile's (or the plugin's) bug."""
    data = serialized(ctx.model)
    if data is None or len(data) > _TWO_GB:
        return  # the in-memory checker cannot take > 2 GB; the verification checks later
    try:
        onnx.checker.check_model(data)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not _passes_checker(ctx.original):
            return  # the flaw came in with the input: the verification reports it as the user's
        plugin = "" if type(p).__module__.startswith("npcompile.") else f" (a plugin pass, {type(p).__module__})"
        raise VerificationError(f"pass {p.name}{plugin} produced a model that fails the ONNX checker"
                                f"{_after(done)}: {first}") from e


def _passes_checker(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model)
    except Exception:
        return False
    return True


def _account(ctx: Context, p: Pass, modified: bool) -> None:
    """Record what ``p`` produced and whether it was exact (its own ``exact`` and its inputs')."""
    own = (not modified) if p.exact is None else bool(p.exact)
    exact = own and all(ctx.products.get(need, ctx.products.get(_ANY, False)) for need in p.requires)
    if modified and not exact:
        ctx.inexact.append(p.name)
    if p.produces is None:  # unknown: it may have made or replaced any product
        if not exact:
            ctx.products = dict.fromkeys(ctx.products, False)
        ctx.products[_ANY] = exact and ctx.products.get(_ANY, True)
        return
    for product in p.produces:
        ctx.products[product] = exact


def _merge_report(ctx: Context, p: Pass, result: PassResult) -> None:
    """Put the result's report section(s) into ``ctx.report_extras``."""
    sections = dict(result.sections)
    if result.report is not None:
        sections = {p.section or p.name: result.report, **sections}
    for key, section in sections.items():
        old = ctx.report_extras.get(key)
        if p.accumulate and isinstance(old, dict) and isinstance(section, dict):
            for k, v in section.items():
                old[k] = old[k] + list(v) if isinstance(v, list) and isinstance(old.get(k), list) else v
        elif p.accumulate and isinstance(section, dict):
            ctx.report_extras[key] = {k: list(v) if isinstance(v, list) else v for k, v in section.items()}
        else:
            ctx.report_extras[key] = section


def _after(done: list[str]) -> str:
    return f" (after {', '.join(done)})" if done else ""


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(v))
            for k, v in options.items()}
