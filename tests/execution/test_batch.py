"""``npcompile batch``: one folder per model, an index, and a bad model that does not stop the others."""

from __future__ import annotations

import json

import exekit

from npcompile.cli import main


def test_batch_with_one_bad_model(zoo_case: exekit.Case, tmp_path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    pipe = tmp_path / "p.toml"
    pipe.write_text('[[passes]]\nname = "magnitude"\n\n[[passes]]\nname = "select"\nratio = 0.25\n\n'
                    '[[passes]]\nname = "prune"\n\n[[passes]]\nname = "cleanup"\n')
    out = tmp_path / "fleet"
    rc = main(["batch", str(zoo_case.path), str(bad), "--pipeline", str(pipe), "-o", str(out), "-q",
               "--no-benchmark"])
    assert rc == 1
    index = json.loads((out / "index.json").read_text())
    assert index["counts"] == {"passed": 1, "failed": 0, "error": 1}
    ok, err = index["models"]
    assert ok["status"] == "passed" and (out / ok["folder"] / "model.onnx").is_file()
    assert ok["figures"]["param_reduction"] > 0
    assert err["status"] == "error" and err["exit_code"] == 2 and err["message"]
    assert "<error" in (out / "junit.xml").read_text() and "broken" in (out / "index.md").read_text()
