"""The ``tensorrt`` target: a serialized TensorRT engine (``<name>.engine``) and its GPU latency.

Written against the TensorRT 10 and 11 Python APIs (11 builds strongly typed networks only:
precisions come from the model - Q/DQ nodes for INT8, float16 tensors for FP16).
``tensorrt`` and ``torch`` are imported lazily, inside the methods that need them, so this module
imports (and ``available()`` answers) on machines without TensorRT or a GPU.

Build: ``trt.Builder`` -> ``create_network`` -> ``trt.OnnxParser.parse`` -> one optimization
profile for the dynamic batch dimension -> ``build_serialized_network`` -> ``trt.Runtime
.deserialize_cuda_engine``. Run: ``create_execution_context``, ``set_input_shape``,
``set_tensor_address`` on torch CUDA buffers, ``execute_async_v3`` on a ``torch.cuda.Stream``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from npcompile.errors import NpcompileError, UserError
from npcompile.graph.model_io import atomic_write_bytes, save_model
from npcompile.targets.base import Artifact, BenchmarkOptions, LatencyStats, Target
from npcompile.targets.tensorrt_precision import precision_plan

__all__ = ["TensorRTTarget"]

log = logging.getLogger(__name__)

_INSTALL_HINT = "pip install 'npcompile[tensorrt]'  (TensorRT 10 and an NVIDIA GPU)"
_MAX_PROTO_BYTES = 2**31 - 1
_DEVICE = "cuda"  # where I/O buffers live (a module constant so tests can substitute a fake runtime)
# Messages TensorRT's builder logs at INFO level when BuilderFlag.SPARSE_WEIGHTS is set.
_SPARSE_PICKED = re.compile(r"\(Sparsity\)\s*TRT inference plan picked sparse implementation for layers:(.*)",
                            re.IGNORECASE)
_SPARSE_ELIGIBLE = re.compile(r"\(Sparsity\)\s*Layers eligible for sparse math:(.*)", re.IGNORECASE)

_logger_class: type | None = None


def _one_line(text: str) -> str:
    """``text`` with all runs of whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


def _trt_logger_class(trt: Any) -> type:
    """A ``trt.ILogger`` subclass that forwards TensorRT's messages to Python logging and keeps
    them, so that build errors and the builder's sparsity report can be read back."""
    global _logger_class
    if _logger_class is not None:
        return _logger_class

    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: logging.CRITICAL, sev.ERROR: logging.ERROR,
              sev.WARNING: logging.WARNING, sev.INFO: logging.DEBUG, sev.VERBOSE: logging.DEBUG}

    class _CapturingLogger(trt.ILogger):  # type: ignore[misc,name-defined]
        """Forwards to ``logging`` (TensorRT INFO and VERBOSE become DEBUG); keeps errors and the
        ``(Sparsity)`` lines; drops VERBOSE messages early (they are many, and cost the GIL)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.sparsity: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity == sev.VERBOSE:
                return
            level = levels.get(severity, logging.INFO)
            log.log(level, "TensorRT: %s", msg)
            if level >= logging.ERROR:
                self.errors.append(_one_line(msg))
            if "(Sparsity)" in msg:
                self.sparsity.append(_one_line(msg))

    _logger_class = _CapturingLogger
    return _logger_class


def profile_shapes(name: str, shape: Sequence[int], batch: tuple[int, int, int]
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(min, opt, max) shapes of one network input for an optimization profile, or None when the
    input is fully static. Only dimension 0 (the batch) may be dynamic (-1); it takes its values
    from ``batch``. Any other dynamic dimension is a ``UserError``: the model must fix it."""
    dims = [int(d) for d in shape]
    if not dims or all(d >= 0 for d in dims):
        return None
    bad = [i for i, d in enumerate(dims) if d < 0 and i != 0]
    if bad:
        raise UserError(f"input {name!r} has dynamic dimension(s) {bad} besides the batch (shape "
                        f"{tuple(dims)}); TensorRT needs them fixed in the model (only dimension 0 "
                        f"may be dynamic)")
    lo, opt, hi = batch
    return ((lo, *dims[1:]), (opt, *dims[1:]), (hi, *dims[1:]))


def parser_error_message(parser: Any) -> str:
    """The first error an ``OnnxParser`` recorded, on one line."""
    n = int(getattr(parser, "num_errors", 0) or 0)
    if n <= 0:
        return "unknown error (the parser recorded none)"
    err = parser.get_error(0)
    text = ""
    try:
        text = str(err)  # "In node N with name: X and operator: Y (func): CODE: desc" in TRT 10
    except Exception:
        text = ""
    if not text or text.startswith("<"):
        try:
            text = err.desc()
        except Exception:
            text = repr(err)
    more = f" (and {n - 1} more)" if n > 1 else ""
    return _one_line(text) + more


def _split_layers(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def sparse_report(engine_json: str | None, log_lines: Sequence[str]) -> tuple[bool | str, list[str]]:
    """Whether TensorRT chose sparse kernels: ``(True | False | "unknown", sparse layer names)``.

    Evidence, strongest first: the builder's INFO line "(Sparsity) TRT inference plan picked sparse
    implementation for layers: ..." (an empty list there means no), then tactic names containing
    "sparse" in the engine inspector's JSON (needs ProfilingVerbosity.DETAILED). Tactic names
    without "sparse" do not prove dense kernels, so without the log line the answer is "unknown"
    unless a sparse tactic is seen. Layer names and metadata are not searched: an ONNX node
    called "sparse_..." would be a false positive."""
    picked: list[str] | None = None
    for line in log_lines:
        m = _SPARSE_PICKED.search(line)
        if m:
            picked = (picked or []) + _split_layers(m.group(1))
    tactic_layers: list[str] = []
    if engine_json:
        try:
            info = json.loads(engine_json)
        except (TypeError, ValueError):
            info = None
        layers = info.get("Layers", []) if isinstance(info, dict) else []
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict):
                continue  # LAYER_NAMES_ONLY verbosity: bare names, no tactics
            tactics = " ".join(str(v) for k, v in layer.items() if "tactic" in k.lower())
            if "sparse" in tactics.lower():
                tactic_layers.append(str(layer.get("Name", f"layer {i}")))
    layers_found = sorted(set(picked or []) | set(tactic_layers))
    if layers_found:
        return True, layers_found
    if picked is not None:
        return False, []
    return "unknown", []


@dataclass
class _Bound:
    """An execution context with its inputs and outputs bound to torch CUDA tensors."""

    context: Any
    tensors: dict[str, Any]
    outputs: list[str]


class TensorRTTarget(Target):
    """TensorRT engine built from the compiled ONNX model, timed with CUDA events.

    Options: ``fp16`` (allow FP16 kernels; default True), ``int8`` (INT8 for an explicitly
    quantized QDQ model: ``None``, the default, enables it exactly when the model has Q/DQ nodes;
    see :mod:`npcompile.targets.tensorrt_precision`), ``strongly_typed`` (``None``: weakly typed
    with precision flags on TensorRT 10, strongly typed on 11), ``sparse`` (``BuilderFlag.SPARSE_WEIGHTS``:
    2:4 structured-sparse kernels where the weights have that pattern; channel pruning alone does
    not create it), ``workspace_mb`` (workspace memory pool limit), ``timing_cache`` (a file: loaded
    when it exists, written after each build), ``min_batch``/``opt_batch``/``max_batch`` (the
    optimization profile of a dynamic batch dimension), ``threads`` (ignored: GPU target)."""

    name = "tensorrt"
    description = "TensorRT engine (saved as model.engine) with GPU latency"
    install_hint = _INSTALL_HINT

    def __init__(self, fp16: bool = True, sparse: bool = False, workspace_mb: int = 1024,
                 timing_cache: str | Path | None = None, min_batch: int = 1, opt_batch: int = 8,
                 max_batch: int = 32, threads: int = 0, int8: bool | None = None,
                 strongly_typed: bool | None = None, **options: Any) -> None:
        super().__init__(fp16=fp16, sparse=sparse, workspace_mb=workspace_mb, timing_cache=timing_cache,
                         min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, threads=threads,
                         int8=int8, strongly_typed=strongly_typed, **options)
        self.int8 = None if int8 is None else bool(int8)
        self.strongly_typed = None if strongly_typed is None else bool(strongly_typed)
        if not 1 <= int(min_batch) <= int(opt_batch) <= int(max_batch):
            raise UserError(f"TensorRT batch profile needs 1 <= min_batch <= opt_batch <= max_batch, "
                            f"got {min_batch}, {opt_batch}, {max_batch}")
        if int(workspace_mb) <= 0:
            raise UserError(f"workspace_mb must be positive, got {workspace_mb}")
        self.fp16 = bool(fp16)
        self.sparse = bool(sparse)
        self.workspace_mb = int(workspace_mb)
        self.timing_cache = Path(timing_cache) if timing_cache else None
        self.batch_profile = (int(min_batch), int(opt_batch), int(max_batch))
        if threads:
            log.debug("tensorrt target ignores threads=%s", threads)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, "") when ``tensorrt`` imports and a CUDA GPU is visible, else (False, why)."""
        try:
            import tensorrt as trt
        except Exception as e:  # ImportError, or OSError from a missing libnvinfer
            return False, f"TensorRT is not importable ({type(e).__name__}: {_one_line(str(e))})"
        try:
            import torch
        except Exception:
            torch = None
        if torch is not None:
            try:
                if torch.cuda.is_available():
                    return True, ""
            except Exception as e:
                return False, f"torch cannot query CUDA ({type(e).__name__}: {_one_line(str(e))})"
            return False, "no CUDA GPU is visible (torch.cuda.is_available() is False)"
        count = _cuda_python_device_count()
        if count is not None:
            return (True, "") if count > 0 else (False, "no CUDA GPU is visible (cudaGetDeviceCount)")
        try:
            builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
            if builder is None:
                return False, "TensorRT could not create a builder (no usable CUDA GPU?)"
        except Exception as e:
            return False, f"TensorRT could not create a builder ({type(e).__name__}: {_one_line(str(e))})"
        return True, ""

    def default_round_to(self) -> int:
        """8 channels for FP16 tensor cores, 4 otherwise."""
        return 8 if self.fp16 else 4

    # ------------------------------------------------------------------ build

    def build(self, model: onnx.ModelProto, outdir: Path, name: str = "model") -> Artifact:
        """Parse ``model``, build and serialize an engine to ``outdir/<name>.engine`` (atomically),
        and return it deserialized as the artifact's handle."""
        import tensorrt as trt

        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        logger = _trt_logger_class(trt)()
        builder = trt.Builder(logger)
        if builder is None:
            raise NpcompileError("TensorRT could not create a builder: " + _last(logger.errors))
        plan = precision_plan(trt, model, self.fp16, self.int8, self.strongly_typed)
        for note in plan.notes:
            log.info("tensorrt: %s", note)
        network = builder.create_network(plan.network_flags)
        parser = trt.OnnxParser(network, logger)
        self._parse(parser, model, outdir, name)

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        for flag in plan.builder_flags:  # FP16 / INT8 of a weakly typed 10.x network
            config.set_flag(getattr(trt.BuilderFlag, flag))
        fp16 = plan.fp16
        if self.sparse:
            config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
            config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        profiles = self._add_profile(trt, builder, network, config)
        cache = self._load_timing_cache(config)

        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UserError("TensorRT engine build failed: " + _last(logger.errors))
        log.info("TensorRT engine built in %.1f s", time.perf_counter() - t0)
        data = bytes(memoryview(serialized))
        if cache is not None and self.timing_cache is not None:
            self._save_timing_cache(config)

        path = outdir / f"{name}.engine"
        atomic_write_bytes(path, data)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(data)  # keeps the runtime (and logger) alive
        if engine is None:
            raise NpcompileError("TensorRT could not deserialize the engine it built: "
                                 + _last(logger.errors))

        info: dict[str, Any] = {
            "tensorrt": str(trt.__version__), **plan.info(), "fp16": fp16, "sparse": self.sparse,
            "workspace_mb": self.workspace_mb, "profiles": profiles,
            "timing_cache": str(self.timing_cache) if self.timing_cache else None,
            "engine_bytes": len(data), "outputs": [o.name for o in model.graph.output],
        }
        if self.sparse:
            engine_json = None
            try:
                inspector = engine.create_engine_inspector()
                engine_json = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
            except Exception as e:
                log.debug("engine inspector failed: %s", e)
            chosen, layers = sparse_report(engine_json, logger.sparsity)
            info["sparse_kernels"] = chosen
            info["sparse_layers"] = layers
            eligible = [m.group(1) for line in logger.sparsity if (m := _SPARSE_ELIGIBLE.search(line))]
            if eligible:
                info["sparse_eligible_layers"] = sorted({n for text in eligible for n in _split_layers(text)})
        files = {"engine": path}
        if self.timing_cache is not None and self.timing_cache.exists():
            files["timing_cache"] = self.timing_cache
        return Artifact(self.name, files, engine, info)

    def _parse(self, parser: Any, model: onnx.ModelProto, outdir: Path, name: str) -> None:
        """Feed ``model`` to the ONNX parser: from memory, or through a file when it is too large
        for one protobuf message (the parser then reads the external weights beside it)."""
        try:
            blob: bytes | None = model.SerializeToString()
            if len(blob) > _MAX_PROTO_BYTES:
                blob = None
        except (ValueError, OverflowError):
            blob = None
        if blob is not None:
            ok = parser.parse(blob)
        else:
            src = outdir / f"{name}.onnx"
            save_model(model, src, external_data=True)
            ok = parser.parse_from_file(str(src))
        if not ok:
            raise UserError("TensorRT cannot parse the model: " + parser_error_message(parser))

    def _add_profile(self, trt: Any, builder: Any, network: Any, config: Any) -> dict[str, list[list[int]]]:
        """One optimization profile covering every input with a dynamic batch; {} if all static."""
        shapes: dict[str, list[list[int]]] = {}
        profile = None
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = tuple(tensor.shape)
            triple = profile_shapes(tensor.name, dims, self.batch_profile)
            if triple is None:
                continue
            if getattr(tensor, "is_shape_tensor", False):
                raise UserError(f"input {tensor.name!r} is a shape tensor; the tensorrt target does not "
                                f"support shape-tensor inputs")
            if profile is None:
                profile = builder.create_optimization_profile()
            try:
                profile.set_shape(tensor.name, *triple)
            except RuntimeError as e:
                raise UserError(f"bad optimization profile for input {tensor.name!r}: {e}") from None
            shapes[tensor.name] = [list(s) for s in triple]
        if profile is not None:
            config.add_optimization_profile(profile)
        return shapes

    def _load_timing_cache(self, config: Any) -> Any:
        """Attach a timing cache to ``config`` (loaded from ``self.timing_cache`` if it exists)."""
        if self.timing_cache is None:
            return None
        blob = b""
        if self.timing_cache.exists():
            try:
                blob = self.timing_cache.read_bytes()
            except OSError as e:
                log.warning("cannot read timing cache %s (%s); starting a new one", self.timing_cache, e)
        cache = config.create_timing_cache(blob)
        if cache is None and blob:
            log.warning("timing cache %s is unreadable; starting a new one", self.timing_cache)
            cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one",
                        self.timing_cache)
            cache = config.create_timing_cache(b"")
            if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
                return None
        return cache

    def _save_timing_cache(self, config: Any) -> None:
        assert self.timing_cache is not None
        cache = config.get_timing_cache()
        if cache is None:
            return
        self.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.timing_cache, bytes(memoryview(cache.serialize())))

    # ------------------------------------------------------------------ run

    @staticmethod
    def _bind(engine: Any, inputs: dict[str, np.ndarray]) -> _Bound:
        """A new execution context with ``inputs`` copied to the GPU and outputs allocated."""
        import tensorrt as trt

        torch = _torch_cuda()
        context = engine.create_execution_context()
        if context is None:
            raise NpcompileError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        in_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        out_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        missing = [n for n in in_names if n not in inputs]
        extra = [n for n in inputs if n not in in_names]
        if missing or extra:
            raise UserError(f"inputs do not match the engine: missing {missing}, unexpected {extra}")
        tensors: dict[str, Any] = {}
        for n in in_names:
            if engine.is_shape_inference_io(n):
                raise UserError(f"input {n!r} is a shape tensor; not supported by the tensorrt target")
            dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(n))
            array = np.ascontiguousarray(inputs[n])
            tensors[n] = torch.from_numpy(array.copy()).to(device=_DEVICE, dtype=dtype)
            if not context.set_input_shape(n, tuple(int(d) for d in array.shape)):
                raise UserError(f"input {n!r} shape {tuple(array.shape)} is outside the engine's profile "
                                f"{_profile_text(engine, n)}")
        for n in out_names:
            shape = tuple(int(d) for d in context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise UserError(f"output {n!r} has a data-dependent shape {shape}; not supported by the "
                                f"tensorrt target")
            tensors[n] = torch.empty(shape, dtype=_torch_dtype(trt, torch, engine.get_tensor_dtype(n)),
                                     device=_DEVICE)
        for n in names:
            if not context.set_tensor_address(n, int(tensors[n].data_ptr())):
                raise NpcompileError(f"TensorRT rejected the buffer of tensor {n!r}")
        return _Bound(context, tensors, out_names)

    @staticmethod
    def _enqueue(bound: _Bound, stream: Any) -> None:
        if not bound.context.execute_async_v3(stream.cuda_stream):
            raise NpcompileError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    @classmethod
    def infer(cls, artifact: Artifact, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the engine once; outputs in the ONNX model's output order (engine order otherwise)."""
        torch = _torch_cuda()
        bound = cls._bind(artifact.handle, inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        cls._enqueue(bound, stream)
        stream.synchronize()
        order = [n for n in (artifact.info or {}).get("outputs", []) if n in bound.outputs]
        order += [n for n in bound.outputs if n not in order]
        out = []
        for n in order:
            t = bound.tensors[n]
            if t.dtype == torch.bfloat16:
                t = t.float()
            out.append(t.cpu().numpy())
        del bound
        return out

    def benchmark(self, artifact: Artifact, inputs: dict[str, np.ndarray],
                  options: BenchmarkOptions) -> LatencyStats:
        """GPU time of ``execute_async_v3`` per run, measured with CUDA events on one stream after
        ``options.warmup`` untimed runs; at least ``options.runs`` runs (and ``min_seconds``)."""
        torch = _torch_cuda()
        first = next(iter(inputs.values()), None)
        batch = int(np.shape(first)[0]) if first is not None and np.ndim(first) > 0 else 1
        bound = self._bind(artifact.handle, inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        for _ in range(max(0, options.warmup)):
            self._enqueue(bound, stream)
        stream.synchronize()
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < max(1, options.runs) or time.perf_counter() - start < options.min_seconds:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record(stream)
            self._enqueue(bound, stream)
            end.record(stream)
            end.synchronize()
            samples.append(begin.elapsed_time(end) / 1e3)
        del bound
        return LatencyStats.from_samples(samples, batch)


def _last(errors: list[str]) -> str:
    return errors[-1] if errors else "no error message (see the TensorRT log at DEBUG level)"


def _profile_text(engine: Any, name: str) -> str:
    try:
        lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
        return f"min {tuple(lo)}, opt {tuple(opt)}, max {tuple(hi)}"
    except Exception:
        return f"(static shape {tuple(engine.get_tensor_shape(name))})"


def _torch_cuda() -> Any:
    """``torch``, checked to have CUDA (needed for device buffers and timing)."""
    try:
        import torch
    except ImportError as e:
        raise UserError(f"the tensorrt target needs torch to run engines; install: {_INSTALL_HINT}") from e
    if not torch.cuda.is_available():
        raise UserError("the tensorrt target needs a CUDA GPU visible to torch")
    return torch


def _torch_dtype(trt: Any, torch: Any, dtype: Any) -> Any:
    """The torch dtype of a ``trt.DataType``."""
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
             "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}
    for key, value in table.items():
        if hasattr(trt.DataType, key) and dtype == getattr(trt.DataType, key):
            return value
    raise UserError(f"I/O tensors of type {dtype} are not supported by the tensorrt target")


def _cuda_python_device_count() -> int | None:
    """CUDA device count through cuda-python (``cuda.bindings.runtime`` or the older ``cuda.cudart``),
    or None if cuda-python is not installed or fails."""
    try:
        from cuda.bindings import runtime as cudart
    except Exception:
        try:
            from cuda import cudart
        except Exception:
            return None
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception:
        return None
    if err != cudart.cudaError_t.cudaSuccess:
        return 0
    return int(count)
