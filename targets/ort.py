"""The ``onnxruntime`` target: an optimized ONNX Runtime session, saved, and its latency."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import numpy as np
import onnx

from npcompile.errors import UserError
from npcompile.graph.model_io import save_model
from npcompile.runtime.verify import make_session
from npcompile.targets.base import Artifact, BenchmarkOptions, LatencyStats, Target, measure

__all__ = ["OnnxRuntimeTarget", "PROVIDERS", "cpu_vector_width", "cpu_features"]

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def _cpu_flags() -> set[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line.split(":", 1)[-1]
                    break
    except OSError:
        pass
    return set(flags.split())


#: CPU features ONNX Runtime's kernels (MLAS) dispatch on, in the order they matter for int8:
#: (flag in /proc/cpuinfo, name)
_FEATURES = (("amx_int8", "AMX-INT8"), ("amx_bf16", "AMX-BF16"), ("amx_tile", "AMX"),
             ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx512_bf16", "AVX512-BF16"),
             ("avx512_fp16", "AVX512-FP16"), ("avx512bw", "AVX512BW"), ("avx512f", "AVX-512"),
             ("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"), ("asimddp", "NEON-DOT"), ("i8mm", "I8MM"),
             ("sve", "SVE"), ("asimdhp", "NEON-FP16"))


def cpu_features(flags: set[str] | None = None) -> dict[str, object]:
    """The CPU features ONNX Runtime can use here (from ``/proc/cpuinfo``), and which int8
    kernel family that gives: AMX, VNNI (AVX512-VNNI / AVX-VNNI / NEON dot product) or plain
    SIMD (int8 then runs without a dot-product instruction and gains little over float)."""
    words = _cpu_flags() if flags is None else set(flags)
    found = [name for flag, name in _FEATURES if flag in words]
    if "amx_int8" in words:
        int8 = "AMX-INT8 (tile matrix multiply)"
    elif "avx512_vnni" in words:
        int8 = "AVX512-VNNI (int8 dot products)"
    elif "avx_vnni" in words:
        int8 = "AVX-VNNI (int8 dot products)"
    elif "i8mm" in words or "asimddp" in words:
        int8 = "NEON int8 dot products"
    elif "avx2" in words:
        int8 = "AVX2 without VNNI (int8 gains little; reduce_range may help accuracy)"
    else:
        int8 = "no int8 dot-product instructions"
    return {"features": found, "int8": int8, "vnni": any(f in words for f in ("avx512_vnni", "avx_vnni")),
            "amx": "amx_int8" in words}


def cpu_vector_width() -> tuple[int, str]:
    """fp32 lanes of the widest SIMD unit of this CPU, and its name (AVX-512: 16, AVX2: 8, else 4)."""
    words = _cpu_flags()
    if "avx512f" in words:
        return 16, "AVX-512"
    if "avx2" in words or "avx" in words:
        return 8, "AVX2" if "avx2" in words else "AVX"
    if platform.machine().lower() in ("arm64", "aarch64") or "asimd" in words:
        return 4, "NEON"
    return 4, "SSE"


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    description = "optimized ONNX Runtime session (saved as model.ort.onnx) with latency"
    install_hint = "pip install onnxruntime"

    def __init__(self, provider: str = "cpu", threads: int = 0, **options) -> None:
        super().__init__(provider=provider, threads=threads, **options)
        if provider not in PROVIDERS:
            raise UserError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        import onnxruntime as ort

        if PROVIDERS[provider] not in ort.get_available_providers():
            raise UserError(f"ONNX Runtime provider {provider} is not available here "
                            f"(available: {', '.join(ort.get_available_providers())})")
        self.provider = PROVIDERS[provider]
        self.threads = threads

    def default_round_to(self) -> int:
        return cpu_vector_width()[0] if self.provider == "CPUExecutionProvider" else 8

    def build(self, model: onnx.ModelProto, outdir: Path, name: str = "model") -> Artifact:
        outdir = Path(outdir)
        src = outdir / f"{name}.onnx"
        if not src.exists():
            save_model(model, src)
        optimized = outdir / f"{name}.ort.onnx"
        tmp = outdir / f".{name}.ort.onnx.tmp"
        session = make_session(str(src), self.threads, optimize=True, optimized_path=str(tmp),
                               providers=[self.provider])
        if tmp.exists():
            os.replace(tmp, optimized)
        import onnxruntime as ort

        info = {"provider": self.provider, "threads": self.threads,
                "providers_available": ort.get_available_providers(),
                "vector_width": cpu_vector_width()[1], "onnxruntime": ort.__version__,
                "cpu_features": cpu_features(),
                "quantized_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
                                       for n in model.graph.node)}
        return Artifact(self.name, {"model": src, "optimized": optimized}, session, info)

    def session(self, model: onnx.ModelProto):
        """A session for an in-memory model (used to measure the original)."""
        return make_session(model, self.threads, optimize=True, providers=[self.provider])

    def benchmark(self, artifact: Artifact, inputs: dict[str, np.ndarray],
                  options: BenchmarkOptions) -> LatencyStats:
        session = artifact.handle
        batch = next(iter(inputs.values())).shape[0] if inputs else 1
        return measure(lambda: session.run(None, inputs), batch, options)
