"""On a local Ray (two CPUs, started once for the module): the same decisions and model as one
process, and a killed worker's probe retried by Ray's task retries."""

from __future__ import annotations

import exekit
import pytest

ray = pytest.importorskip("ray")

from npcompile.execution.ray_backend import RayBackend  # noqa: E402
from npcompile.testing import CrashOnceEvaluator  # noqa: E402


@pytest.fixture(scope="module")
def ray2():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RayBackend("auto", 2, timeout=300) as backend:
            yield backend
    finally:
        ray.shutdown()


def test_ray_decides_as_one_process_and_retries_a_dead_worker(zoo_case: exekit.Case, ray2: RayBackend,
                                                              tmp_path) -> None:
    ev = exekit.evaluator(zoo_case)
    want = exekit.decisions(exekit.run_passes(zoo_case, None, ev))
    assert exekit.decisions(exekit.run_passes(zoo_case, ray2, ev)) == want
    got = exekit.decisions(exekit.run_passes(zoo_case, ray2, CrashOnceEvaluator(ev, tmp_path / "died")))
    assert (tmp_path / "died").exists()
    assert got == want


def test_a_task_past_the_timeout_is_cancelled(ray2: RayBackend) -> None:
    import time

    from npcompile.execution.backend import ExecutionError

    quick = RayBackend("auto", 1, timeout=2)  # the cluster of the fixture, a shorter patience
    with pytest.raises(ExecutionError, match=r"finished no task within 2 s"):
        quick.map(time.sleep, [120.0])
    assert ray2.map(abs, [-3, 4]) == [3, 4]  # the cluster still serves


def test_the_cli_writes_the_same_model_on_every_backend(zoo_case: exekit.Case, ray2: RayBackend, tmp_path) -> None:
    import json

    from npcompile.cli import main

    models, plans, backends = {}, {}, {}
    for label, extra in (("one", []), ("workers", ["--workers", "2"]), ("ray", ["--ray", "auto"])):
        out = tmp_path / label
        rc = main([str(zoo_case.path), "--search", "binary", "--tolerance", "2", "--eval", str(zoo_case.npz),
                   "--no-benchmark", "-q", "-o", str(out), *extra])
        assert rc == 0
        models[label] = (out / "model.onnx").read_bytes()
        report = json.loads((out / "report.json").read_text())
        plans[label] = report["plan"]
        backends[label] = report["execution"]["name"]
    assert any(plans["one"][0].values()), "the search removed nothing: the test says nothing"
    assert backends == {"one": "in-process", "workers": "local", "ray": "ray"}
    assert models["workers"] == models["one"] and models["ray"] == models["one"]
    assert plans["workers"] == plans["one"] and plans["ray"] == plans["one"]

