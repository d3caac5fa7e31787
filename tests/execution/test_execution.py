"""Execution backends: the level search decides as the sequential one, sharded scores combine
exactly, local workers give the same tables, plans and model as one process, a killed worker's
probe is retried, a missing Ray is one line."""

from __future__ import annotations

import random
import sys
import time

import exekit
import numpy as np
import pytest

from npcompile.errors import UserError
from npcompile.execution import check_options
from npcompile.execution.bisect import AcceptRate, round_levels, rounds_for, search_levels
from npcompile.execution.local import LocalProcesses
from npcompile.testing import CrashOnceEvaluator


def _sequential(n: int, f, accept) -> int:
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if accept(f(mid)) else (lo, mid - 1)
    return lo


def test_level_search_is_the_sequential_one_for_every_width() -> None:
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 70)
        vals = [rng.random() for _ in range(n)]  # not monotone: the decision must still match
        thr = rng.random()
        want = _sequential(n, vals.__getitem__, lambda m, t=thr: m >= t)
        rounds = {}
        for w in (1, 2, 3, 7):
            r = search_levels(n, lambda ls, v=vals: [v[i] for i in ls], lambda m, t=thr: m >= t, w)
            assert r.level == want
            rounds[w] = r.rounds
        assert rounds[3] <= rounds[1] and rounds[7] <= rounds[3]


def test_level_search_decides_as_the_sequential_one_whatever_the_estimate() -> None:
    rng = random.Random(1)
    for _ in range(300):
        n = rng.randint(1, 70)
        vals = [rng.random() for _ in range(n)]
        thr = rng.random()
        want = _sequential(n, vals.__getitem__, lambda m, t=thr: m >= t)
        for w in (2, 5):
            rate = AcceptRate(rng.randint(0, 20), rng.randint(0, 20))  # any prior, right or wrong
            r = search_levels(n, lambda ls, v=vals: [v[i] for i in ls], lambda m, t=thr: m >= t, w, rate)
            assert r.level == want


def test_a_search_that_mostly_accepts_probes_deeper_per_round() -> None:
    # the monotone case where every probe is accepted: the path goes up at every step
    n = 64
    seq = search_levels(n, lambda ls: [1.0] * len(ls), lambda m: m > 0.5, 1)
    assert seq.level == n - 1 and seq.rounds == 6
    bfs = round_levels(0, n - 1, 2, (), 0.5)
    assert bfs == [32, 16]  # no evidence: breadth first, the rejecting branch first (as before)
    deep = round_levels(0, n - 1, 2, (), AcceptRate(9, 1).p)
    assert deep == [32, 48]  # mostly accepted so far: the accepting branch
    many = round_levels(0, n - 1, 3, (), AcceptRate(30, 0).p)
    assert many == [32, 48, 56]
    # over several groups the shared estimate learns, and rounds fall towards log2(n) / width
    rate = AcceptRate()
    rounds = [search_levels(n, lambda ls: [1.0] * len(ls), lambda m: m > 0.5, 2, rate).rounds for _ in range(6)]
    assert rounds[0] == 4 and rounds[-1] == 3
    assert rate.accepted == 36 and rate.rejected == 0


def test_rounds_follow_from_the_sequential_outcome_alone() -> None:
    rng = random.Random(2)
    groups = []
    for _ in range(40):
        n = rng.randint(1, 40)
        vals = sorted((rng.random() for _ in range(n)), reverse=True)  # monotone metric
        groups.append((n, vals, rng.random() * 0.8))
    for w in (1, 2, 4, 9):
        rate, rounds, probes, outcome = AcceptRate(), 0, 0, []
        for n, vals, thr in groups:
            r = search_levels(n, lambda ls, v=vals: [v[i] for i in ls], lambda m, t=thr: m >= t, w, rate)
            rounds, probes = rounds + r.rounds, probes + len(r.probes)
            outcome.append((n, r.level))
        assert rounds_for(outcome, w) == (rounds, probes)
        if w == 1:
            assert probes == rounds


def test_sharded_scores_combine_exactly(zoo_case: exekit.Case) -> None:
    for kind in ("top1", "cosine", "neg_mse"):
        ev = exekit.evaluator(zoo_case, kind)
        from npcompile.runtime.verify import make_session

        sess = make_session(zoo_case.model)
        whole = ev.sample_scores(sess)
        for k in (2, 3, 6):
            parts = np.concatenate([ev.shard(i, k).sample_scores(sess) for i in range(k)])
            assert np.array_equal(parts, whole)
            assert ev.reduce(parts) == ev.evaluate(zoo_case.model)


@pytest.fixture(scope="module")
def local2():
    with LocalProcesses(2, timeout=300) as backend:
        yield backend


def test_local_workers_decide_as_one_process(zoo_case: exekit.Case, local2: LocalProcesses) -> None:
    one = exekit.decisions(exekit.run_passes(zoo_case, None))
    two = exekit.decisions(exekit.run_passes(zoo_case, local2))
    assert one["search_removal"], "the search removed nothing: the test says nothing"
    assert two == one  # tables, search path, plans and the pruned model, byte for byte
    assert local2.tasks > 0


def test_killed_worker_probe_is_retried(zoo_case: exekit.Case, local2: LocalProcesses, tmp_path) -> None:
    ev = exekit.evaluator(zoo_case)
    want = exekit.decisions(exekit.run_passes(zoo_case, None, ev))
    retried = local2.retried
    got = exekit.decisions(exekit.run_passes(zoo_case, local2, CrashOnceEvaluator(ev, tmp_path / "died")))
    assert (tmp_path / "died").exists()
    assert local2.retried > retried
    assert got == want


def test_without_ray_the_flag_names_the_install(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'npcompile\[ray\]'"):
        check_options(0, "auto", 600)
    from npcompile.cli import main

    assert main(["model.onnx", "--ray", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "npcompile[ray]" in err[0]


def test_a_probe_past_the_timeout_stops_the_workers() -> None:
    from npcompile.execution.backend import ExecutionError

    with LocalProcesses(1, timeout=2) as backend:
        with pytest.raises(ExecutionError, match=r"within 2 s \(probe_timeout\)"):
            backend.map(time.sleep, [120.0])
        assert backend.map(abs, [-3]) == [3]  # a fresh pool serves the next tasks


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    from pathlib import Path

    out = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid) and not fields.get("State", "").startswith("Z"):
            out.add(int(status.parent.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_the_workers_and_writes_nothing(tmp_path) -> None:
    import os
    import signal
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    example = root / "examples" / "lenet_mnist"
    data = np.load(example / "eval.npz")
    big = tmp_path / "eval.npz"  # probes of a few seconds each: the search is surely still running
    np.savez(big, input=np.tile(data["input"], (30, 1, 1, 1)), labels=np.tile(data["labels"], 30))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "npcompile", str(example / "model.onnx"), "--search", "binary",
                             "--tolerance", "1", "--eval", str(big), "--workers", "2", "-o", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a test run before this one (ray) can leave SIGINT ignored in pytest; a
                            # child started with it ignored keeps ignoring it, as POSIX says
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        workers: set[int] = set()
        for _ in range(240):  # wait until both workers run probes
            time.sleep(0.5)
            workers = _children(proc.pid)
            if len(workers) >= 3 or proc.poll() is not None:  # two workers and the pool's resource tracker
                break
        assert proc.poll() is None, proc.communicate()
        assert len(workers) >= 2, "no worker processes seen: the test says nothing"
        time.sleep(0.5)  # the workers run probes now (a fast machine ends the whole search in seconds)
        assert proc.poll() is None, "the search ended before it could be interrupted: make the data larger"
        proc.send_signal(signal.SIGINT)  # to the driver only: it must stop the workers itself
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "npcompile: interrupted"
    assert not out.exists()
    def alive() -> list[int]:
        return [p for p in workers if Path(f"/proc/{p}/status").exists()
                and "State:\tZ" not in Path(f"/proc/{p}/status").read_text()]

    for _ in range(20):  # the driver has exited; its workers must follow within moments
        if not alive():
            break
        time.sleep(0.5)
    assert not alive(), f"workers still running after Ctrl-C: {alive()}"
