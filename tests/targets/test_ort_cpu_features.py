"""The onnxruntime target reports the CPU features ONNX Runtime's int8 kernels can use."""

from __future__ import annotations

from pathlib import Path

from npcompile.graph.model_io import load_model
from npcompile.targets.ort import OnnxRuntimeTarget, cpu_features

LENET = Path(__file__).resolve().parents[2] / "examples" / "lenet_mnist" / "model.onnx"


def test_int8_kernel_family_from_flags() -> None:
    amx = cpu_features({"avx512f", "avx512_vnni", "amx_tile", "amx_int8", "avx2"})
    assert amx["amx"] and amx["vnni"] and amx["int8"].startswith("AMX-INT8")
    assert amx["features"][:2] == ["AMX-INT8", "AMX"]
    assert cpu_features({"avx512f", "avx512_vnni"})["int8"].startswith("AVX512-VNNI")
    assert cpu_features({"avx2", "avx_vnni"})["int8"].startswith("AVX-VNNI")
    plain = cpu_features({"avx2", "fma"})
    assert not plain["vnni"] and "without VNNI" in plain["int8"] and plain["features"] == ["AVX2", "FMA"]
    assert cpu_features({"asimd", "asimddp"})["int8"] == "NEON int8 dot products"
    assert cpu_features(set())["int8"] == "no int8 dot-product instructions"


def test_artifact_info_has_the_features_of_this_cpu(tmp_path: Path) -> None:
    artifact = OnnxRuntimeTarget().build(load_model(LENET), tmp_path)
    info = artifact.info["cpu_features"]
    assert info == cpu_features() and isinstance(info["features"], list) and info["int8"]
    assert artifact.info["quantized_nodes"] == 0
