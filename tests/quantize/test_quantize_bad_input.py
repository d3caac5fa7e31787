"""Bad input to quantization: exit 2, one line on stderr, nothing written (CLI with a pipeline file),
and the same errors from the Python API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from quantkit import LENET

from npcompile.errors import UserError
from npcompile.graph.model_io import load_model
from npcompile.passes.quantize import QuantizePass
from npcompile.quantize import QuantizeOptions, missing_calib_message, quantize_model
from npcompile.runtime.data import Dataset


def _cli(tmp_path: Path, options: str) -> tuple[subprocess.CompletedProcess, Path]:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'[[passes]]\nname = "quantize"\n{options}\n')
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "npcompile", str(LENET / "model.onnx"), "--pipeline", str(pipeline),
                        "-o", str(out)], capture_output=True, text=True, timeout=300)
    return r, out


def _one_line_error(r: subprocess.CompletedProcess, out: Path) -> str:
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()
    return lines[0]


def test_int8_without_calib_names_the_option_and_the_alternative(tmp_path: Path) -> None:
    line = _one_line_error(*_cli(tmp_path, 'scheme = "int8"'))
    assert "--calib" in line and "int8-dynamic" in line
    with pytest.raises(UserError, match="int8-dynamic"):
        QuantizePass(scheme="int8")
    assert "--calib DATA.npz" in missing_calib_message()


def test_calibration_data_of_the_wrong_shape(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((8, 1, 14, 14), np.float32))
    line = _one_line_error(*_cli(tmp_path, f'calib = "{bad}"'))
    assert "shape" in line and "[8, 1, 14, 14]" in line
    model = load_model(LENET / "model.onnx")
    with pytest.raises(UserError, match="shape"):
        quantize_model(model, QuantizeOptions.make(), Dataset({"input": np.zeros((8, 1, 14, 14), np.float32)}))
    with pytest.raises(UserError, match="lacks model input"):
        quantize_model(model, QuantizeOptions.make(), Dataset({"x": np.zeros((8, 1, 28, 28), np.float32)}))


@pytest.mark.parametrize(("option", "words"), [('scheme = "int4"', ["scheme", "int8-dynamic", "fp16"]),
                                               ('scheme = "int8-dynamic"\nmethod = "kl"', ["calibration method"]),
                                               ('scheme = "fp16"\nactivations = "int16"', ["activation type"]),
                                               ('scheme = "int8-dynamic"\npercentile = 20', ["percentile"])])
def test_unknown_options_are_one_line(tmp_path: Path, option: str, words: list[str]) -> None:
    line = _one_line_error(*_cli(tmp_path, option))
    for w in words:
        assert w in line


def test_python_api_errors_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown quantization scheme"):
        QuantizeOptions.make(scheme="int3")
    with pytest.raises(UserError, match="batch size"):
        QuantizeOptions.make(batch_size=0)
    with pytest.raises(UserError, match="true or false"):
        QuantizePass(scheme="fp16", per_channel="yes")
