"""Behaviour is unchanged: the shipped example's commands give byte-identical ``model.onnx`` files.

``tests/golden/model_hashes.json`` holds the SHA-256 of the ``model.onnx`` that each command below
wrote when the file was recorded, and the versions of the libraries that shape those bytes. A
refactoring must leave every hash as it is; a change that is meant to change a compiled model
records the new hashes with ``NPCOMPILE_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_outputs.py``
and says why in its commit. With other library versions than the recorded ones the bytes may differ
for reasons outside npcompile, so the test skips and says which version differs.

The hashes are kept per platform (CPU architecture, vendor and vector ISA): the float kernels of
PyTorch, BLAS and the exporter's constant folding sum in other orders on other CPUs, so cases that
train, refit or fold weights give other (equally valid) bytes there. A case whose hash is the same
on every recorded platform is portable and is checked on any machine; one that differs is checked
on the platforms recorded and skipped elsewhere (record them there with the variable above).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path

import pytest

from npcompile.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples" / "lenet_mnist"
GOLDEN = Path(__file__).resolve().parent / "golden" / "model_hashes.json"
LIBRARIES = ("onnx", "onnxruntime", "numpy", "torch", "onnx-graphsurgeon")
UPDATE = os.environ.get("NPCOMPILE_UPDATE_GOLDEN") == "1"

EVAL = str(EX / "eval.npz")
CALIB = str(EX / "calib.npz")
TRAIN = str(EX / "train.npz")

# name -> CLI arguments after the model path (each writes <out>/model.onnx)
CASES: dict[str, list[str]] = {
    "lossless-default": [],
    "threshold-0": ["--threshold", "0"],
    "ratio-0.3": ["--ratio", "0.3"],
    "ratio-0.5-round-8-l2": ["--ratio", "0.5", "--round-to", "8", "--criterion", "l2"],
    "min-channels-exclude": ["--ratio", "0.5", "--min-channels", "4", "--exclude", "*conv1*"],
    "apoz-calib": ["--ratio", "0.4", "--criterion", "apoz", "--calib", CALIB],
    "target-flops": ["--target-flops", "0.6"],
    "target-params": ["--target-params", "0.5"],
    "binary-search": ["--search", "binary", "--eval", EVAL, "--tolerance", "1.0"],
    "binary-search-paper": ["--search", "binary", "--search-variant", "paper", "--eval", EVAL,
                            "--tolerance", "1.0"],
    "reconstruct": ["--ratio", "0.4", "--reconstruct", "--calib", CALIB],
    "bias-comp": ["--ratio", "0.4", "--bias-compensation", "--calib", CALIB],
    "sparsity-2:4": ["--ratio", "0.3", "--sparsity", "2:4"],
    "sparsity-0.5-steps": ["--sparsity", "0.5", "--sparsity-steps", "2", "--train", TRAIN, "--epochs", "1"],
    "finetune": ["--ratio", "0.5", "--train", TRAIN, "--epochs", "1", "--eval", EVAL],
    "finetune-distill": ["--ratio", "0.5", "--train", TRAIN, "--epochs", "1", "--distill", "0.5",
                         "--optimizer", "adam", "--batch-size", "64"],
    "steps": ["--ratio", "0.4", "--steps", "2", "--train", TRAIN, "--epochs", "1"],
    "pipeline-int8": ["--pipeline", str(EX / "prune_int8.toml")],
}


# zoo models (tests/zoo.py, seeded weights, legacy exporter) -> CLI arguments
ZOO_CASES: dict[str, list[str]] = {
    "resnet_bottleneck": ["--ratio", "0.3"],
    "mobilenet_v2": ["--ratio", "0.3", "--round-to", "8"],
    "yolov8": ["--ratio", "0.3"],
    "densenet": ["--target-flops", "0.6"],
    "lstm_net": ["--ratio", "0.3"],
    "vit": ["--ratio", "0.3"],
}


def _versions() -> dict[str, str]:
    return {lib: importlib.metadata.version(lib) for lib in LIBRARIES}


def _platform() -> str:
    """What decides the float kernels' summation order: architecture, CPU vendor, vector ISA."""
    from npcompile.targets.ort import cpu_vector_width

    vendor = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            vendor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), vendor)
    except OSError:
        pass
    return f"{platform.machine()} {vendor} {cpu_vector_width()[1]}"


def _golden() -> dict:
    if not GOLDEN.exists():
        return {"versions": _versions(), "platforms": {}}
    return json.loads(GOLDEN.read_text())


def _expected(golden: dict, name: str) -> str | None:
    """The hash recorded for ``name`` on this platform, else the one every recorded platform
    agrees on (a portable case); None where they differ and this platform has none."""
    platforms = golden["platforms"]
    mine = platforms.get(_platform(), {})
    if name in mine:
        return mine[name]
    known = {table[name] for table in platforms.values() if name in table}
    return known.pop() if len(known) == 1 else None


def _compile(tmp_path: Path, args: list[str], model: Path = EX / "model.onnx") -> str:
    out = tmp_path / "out"
    code = main([str(model), *args, "--no-benchmark", "--no-plots", "-q", "-o", str(out)])
    assert code == 0, f"npcompile exited {code}"
    return hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()


def _zoo_model(name: str, tmp_path: Path) -> Path:
    import torch
    from zoo import ZOO, export, randomize_bn

    build, shape = ZOO[name]
    torch.manual_seed(0)
    path = tmp_path / f"{name}.onnx"
    export(randomize_bn(build()), shape, path, dynamo=False)
    return path


@pytest.mark.parametrize("name", sorted(CASES) + [f"zoo-{n}" for n in sorted(ZOO_CASES)])
def test_compiled_model_bytes_unchanged(name: str, tmp_path: Path) -> None:
    golden = _golden()
    if name.startswith("zoo-"):
        zoo = name[4:]
        digest = _compile(tmp_path, ZOO_CASES[zoo], _zoo_model(zoo, tmp_path))
    else:
        digest = _compile(tmp_path, CASES[name])
    if UPDATE:
        golden["versions"] = _versions()
        golden["platforms"].setdefault(_platform(), {})[name] = digest
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    differ = {k: (v, golden["versions"].get(k)) for k, v in _versions().items() if golden["versions"].get(k) != v}
    if differ:
        pytest.skip(f"library versions differ from the recorded ones: {differ}")
    expected = _expected(golden, name)
    if expected is None:
        pytest.skip(f"{name}'s bytes differ between the recorded platforms ({', '.join(golden['platforms'])}) "
                    f"and none is recorded for {_platform()}: record them with NPCOMPILE_UPDATE_GOLDEN=1")
    assert digest == expected, f"{name}: model.onnx changed"


def test_every_case_has_a_recorded_hash() -> None:
    cases = set(CASES) | {f"zoo-{n}" for n in ZOO_CASES}
    platforms = _golden()["platforms"]
    assert platforms and all(set(table) == cases for table in platforms.values())
