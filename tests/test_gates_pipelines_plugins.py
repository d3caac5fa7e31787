"""Pipeline files, --dry-run, plugins (entry points, module:Class, .py files), and CI gates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "examples" / "lenet_mnist" / "model.onnx"
PLUGIN_PY = ROOT / "examples" / "custom_pass" / "npcompile_extra" / "passes.py"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npcompile", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_dry_run_prints_the_flag_pipeline_and_it_reruns_as_a_file(tmp_path: Path) -> None:
    r = run(LENET, "--ratio", "0.3", "--round-to", "4", "--dry-run", "-o", tmp_path / "never")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "never").exists()
    text = r.stdout
    assert 'name = "magnitude"' in text and "ratio = 0.3" in text and "round_to = 4" in text
    pipe = tmp_path / "p.toml"
    pipe.write_text(text)
    a = run(LENET, "--ratio", "0.3", "--round-to", "4", "--no-benchmark", "-o", tmp_path / "a")
    b = run(LENET, "--pipeline", pipe, "--no-benchmark", "-o", tmp_path / "b")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert [p["name"] for p in report["pipeline"]] == ["magnitude", "select", "prune", "cleanup"]


@pytest.mark.parametrize("content,word", [
    ("this is = = not toml", "toml"),
    ("[[passes]]\nname = 'no-such-pass'\n", "unknown pass"),
    ("[[passes]]\nname = 'select'\nratio = 0.2\nbogus = 1\n", "bogus"),
    ("title = 'x'\n", "passes"),
])
def test_bad_pipeline_files(tmp_path: Path, content: str, word: str) -> None:
    pipe = tmp_path / "p.toml"
    pipe.write_text(content)
    r = run(LENET, "--pipeline", pipe, "-o", tmp_path / "o")
    assert r.returncode == 2
    assert word in one_line(r).lower()
    assert not (tmp_path / "o").exists()


def test_plugin_from_py_file_is_listed_and_runs(tmp_path: Path) -> None:
    r = run("passes", "--plugin", PLUGIN_PY)
    assert r.returncode == 0, r.stderr
    assert "bn-scale" in r.stdout and "fp16-round" in r.stdout
    r = run(LENET, "--plugin", PLUGIN_PY, "--criterion", "bn-scale", "--ratio", "0.3", "--round-to", "1",
            "--pass", "fp16-round", "--no-benchmark", "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    names = [p["name"] for p in report["passes"]]
    assert names == ["bn-scale", "select", "prune", "fp16-round", "cleanup"]
    assert report["summary"]["params_after"] < report["summary"]["params_before"]


def test_installed_plugin_package_registers_by_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                          "--target", str(site), str(ROOT / "examples" / "custom_pass")],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    env = dict(os.environ, PYTHONPATH=str(site))
    r = run("passes", env=env)
    assert r.returncode == 0 and "bn-scale" in r.stdout and "npcompile_extra" in r.stdout, r.stderr
    r = run(LENET, "--criterion", "bn-scale", "--ratio", "0.25", "--round-to", "1", "--no-benchmark",
            "-o", tmp_path / "o", env=env)
    assert r.returncode == 0, r.stderr


def test_plugin_that_raises_aborts_naming_the_pass_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from npcompile.pipeline import Pass\n"
        "class Boom(Pass):\n"
        "    name = 'boom'\n"
        "    kind = 'rewrite'\n"
        "    def run(self, ctx):\n"
        "        raise RuntimeError('kaboom')\n")
    r = run(LENET, "--plugin", bad, "--ratio", "0.3", "--pass", "boom", "-o", tmp_path / "o")
    assert r.returncode == 3
    assert "pass boom failed" in r.stderr and "kaboom" in r.stderr
    # an ordinary exception keeps its kind and its traceback, which names the plugin's line
    assert "Traceback" in r.stderr and "RuntimeError: kaboom" in r.stderr and "bad.py" in r.stderr
    assert "internal error" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("spec", ["no_such_module_xyz:Thing", "os:path", "/nonexistent/plugin.py"])
def test_bad_plugins_are_user_errors(tmp_path: Path, spec: str) -> None:
    r = run(LENET, "--plugin", spec, "--ratio", "0.3", "-o", tmp_path / "o")
    assert r.returncode == 2
    assert "plugin" in one_line(r).lower()
    assert not (tmp_path / "o").exists()


def test_gates_fail_exactly_when_violated(tmp_path: Path) -> None:
    ok = run(LENET, "--ratio", "0.3", "--round-to", "1", "--no-benchmark", "--min-param-reduction", "0.1",
             "--max-size", "10", "--junit", tmp_path / "ok.xml", "-o", tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr
    suite = ET.parse(tmp_path / "ok.xml").getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) == 3
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    reduction = report["summary"]["param_reduction"]

    bad = run(LENET, "--ratio", "0.3", "--round-to", "1", "--no-benchmark",
              "--min-param-reduction", f"{reduction + 0.05:.4f}", "--junit", tmp_path / "bad.xml",
              "-o", tmp_path / "bad")
    assert bad.returncode == 1
    line = one_line(bad)
    assert "parameter reduction" in line and "short by" in line
    assert (tmp_path / "bad" / "model.onnx").is_file()  # outputs kept for inspection
    suite = ET.parse(tmp_path / "bad.xml").getroot()
    assert suite.get("failures") == "1"

    size = run(LENET, "--ratio", "0.3", "--no-benchmark", "--max-size", "0.01", "-o", tmp_path / "size")
    assert size.returncode == 1 and "model size" in size.stderr


def test_speed_and_accuracy_gates_without_figures_fail(tmp_path: Path) -> None:
    # a gate that cannot be judged is a user error at the start (issue 15), nothing written
    r = run(LENET, "--ratio", "0.3", "--no-benchmark", "--min-speedup", "1.0", "-o", tmp_path / "o")
    assert r.returncode == 2 and "--min-speedup needs a measured latency" in one_line(r)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag,value", [("--min-param-reduction", "1.5"), ("--max-size", "-1"),
                                        ("--max-accuracy-drop", "-2")])
def test_gate_values_out_of_range(tmp_path: Path, flag: str, value: str) -> None:
    r = run(LENET, "--ratio", "0.3", flag, value, "-o", tmp_path / "o")
    assert r.returncode == 2 and flag in one_line(r)


def test_a_plugin_key_error_exits_3_with_its_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "keyerr.py"
    bad.write_text(
        "from npcompile.pipeline import Pass\n"
        "class Lookup(Pass):\n"
        "    name = 'lookup'\n"
        "    kind = 'analysis'\n"
        "    def run(self, ctx):\n"
        "        return {}['missing']\n")
    r = run(LENET, "--plugin", bad, "--ratio", "0.3", "--pass", "lookup", "-o", tmp_path / "o")
    assert r.returncode == 3
    assert "KeyError: 'missing'" in r.stderr and "pass lookup failed" in r.stderr and "Traceback" in r.stderr
    assert not (tmp_path / "o").exists()
