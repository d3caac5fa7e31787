"""Compile time and measured speedup against FLOPs reduction, on a full-size ResNet-50.

Prints, in one run:

1. **Compile time.** A whole ``python -m npcompile MODEL --ratio 0.5 --target onnx --no-benchmark``
   run against ``onnx.load`` + ``onnx.checker.check_model`` + ``onnx.save`` of the same model, both
   as fresh subprocesses (interpreter start-up included, best of ``--repeat``), plus both in-process.
2. **Speed against FLOPs.** For ratios 0.3 and 0.5 and ``--round-to`` 1 (free widths), 8, 16 and the
   ``onnxruntime`` target's default: the FLOPs and parameter reduction, the latency the compile itself
   reported, and the latency of the original and of every pruned model measured again here,
   interleaved in rounds so that drift of a noisy CPU hits all models alike.

It also reads ``/proc/stat`` to tell how much CPU other processes took while it measured, and
warns when that makes the timings untrustworthy.

It is a measurement script, not a test: nothing is asserted. Needs the torch extra
(``pip install -e '.[torch]'``). Run ``python benchmarks/compile_speed.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import npcompile  # noqa: E402
from npcompile.runtime.verify import make_session  # noqa: E402
from npcompile.targets.ort import cpu_vector_width  # noqa: E402

RATIOS = (0.3, 0.5)
GOAL_COMPILE_X = 3.0  # whole compile at most this many times load + check + save
GOAL_LAT_VS_FLOPS = 0.95  # latency reduction / FLOPs reduction with --round-to 16
QUIET = 0.1  # timings are trustworthy while other processes take less than this share of the CPU

BASELINE_SNIPPET = (
    "import sys, onnx; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m); onnx.save(m, sys.argv[2])"
)


# --------------------------------------------------------------------------- #
# the machine
# --------------------------------------------------------------------------- #


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


class BackgroundLoad:
    """The share of the machine's CPU that other processes took while the block ran
    (``fraction``; None where /proc/stat cannot be read)."""

    fraction: float | None = None

    def __enter__(self) -> BackgroundLoad:
        self._busy, self._own, self._t = _busy_seconds(), os.times(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own, elapsed = _busy_seconds(), os.times(), time.perf_counter() - self._t
        if self._busy is None or busy is None or elapsed <= 0:
            return
        ours = sum(own[:4]) - sum(self._own[:4])  # this process and its finished children
        self.fraction = max(0.0, (busy - self._busy - ours) / (elapsed * (os.cpu_count() or 1)))


def print_background(fraction: float | None, what: str) -> None:
    if fraction is None:
        return
    warn = " -- other work was running; these timings are not trustworthy" if fraction >= QUIET else ""
    print(f"  other processes took {100 * fraction:.0f} % of the machine's CPU during the {what}{warn}")


# --------------------------------------------------------------------------- #
# the model
# --------------------------------------------------------------------------- #


def build_resnet50(workdir: Path) -> tuple[Path, float]:
    import torch
    import zoo

    torch.manual_seed(0)
    model = zoo.randomize_bn(zoo.resnet50())
    path = workdir / "resnet50.onnx"
    t0 = time.perf_counter()
    zoo.export(model, (1, 3, 224, 224), path, dynamo=False)
    return path, time.perf_counter() - t0


# --------------------------------------------------------------------------- #
# 1. compile time
# --------------------------------------------------------------------------- #


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{what} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")


def compile_time(model: Path, workdir: Path, repeat: int) -> dict[str, Any]:
    def cli(i: int) -> None:
        _run([sys.executable, "-m", "npcompile", str(model), "--ratio", "0.5", "--target", "onnx",
              "--no-benchmark", "-q", "-o", str(workdir / f"cli-{i}")], "npcompile")

    def baseline(i: int) -> None:
        _run([sys.executable, "-c", BASELINE_SNIPPET, str(model), str(workdir / f"copy-{i}.onnx")],
             "load + check + save")

    reports: list[dict[str, Any]] = []

    def api(i: int) -> None:
        res = npcompile.compile(str(model), workdir / f"api-{i}", ratio=0.5, target="onnx", benchmark=False)
        reports.append(res.report)

    def api_baseline(i: int) -> None:
        m = onnx.load(str(model))
        onnx.checker.check_model(m)
        onnx.save(m, str(workdir / f"copy-api-{i}.onnx"))

    # the two alternate, so that a busy moment hits both alike
    cli_s, base_s, api_s, api_base_s, background = [], [], [], [], []
    for i in range(repeat):
        with BackgroundLoad() as bg:
            cli_s.append(_timed(lambda i=i: cli(i)))
            base_s.append(_timed(lambda i=i: baseline(i)))
        background.append(bg.fraction)
    startup = min(_timed(lambda: _run([sys.executable, "-c", "pass"], "python")) for _ in range(repeat))
    for i in range(repeat):
        api_s.append(_timed(lambda i=i: api(i)))
        api_base_s.append(_timed(lambda i=i: api_baseline(i)))
    fastest = reports[int(np.argmin(api_s))]
    return {
        "repeat": repeat,
        "subprocess": {"npcompile_s": min(cli_s), "baseline_s": min(base_s), "ratio": min(cli_s) / min(base_s),
                       "npcompile_all_s": cli_s, "baseline_all_s": base_s, "background_cpu": background,
                       "python_startup_s": startup},
        "in_process": {"npcompile_s": min(api_s), "baseline_s": min(api_base_s),
                       "ratio": min(api_s) / min(api_base_s), "npcompile_all_s": api_s,
                       "baseline_all_s": api_base_s},
        "breakdown": {"timings": fastest["timings"],
                      "passes": {p["name"]: p["seconds"] for p in fastest["passes"]}},
    }


def print_compile(ct: dict[str, Any]) -> None:
    sp, ip = ct["subprocess"], ct["in_process"]
    print(f"\n== Compile time (ResNet-50, --ratio 0.5 --target onnx --no-benchmark; best of {ct['repeat']}) ==")
    print(f"{'':30} {'npcompile':>10} {'load+check+save':>16} {'ratio':>7}")
    met = "met" if sp["ratio"] <= GOAL_COMPILE_X else "NOT met"
    print(f"{'subprocess (with start-up)':30} {sp['npcompile_s']:9.2f}s {sp['baseline_s']:15.2f}s "
          f"{sp['ratio']:6.2f}x   goal <= {GOAL_COMPILE_X:g}x: {met}")
    print(f"{'in-process':30} {ip['npcompile_s']:9.2f}s {ip['baseline_s']:15.2f}s {ip['ratio']:6.2f}x")

    def seconds(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    print(f"  every subprocess run (s): npcompile {seconds(sp['npcompile_all_s'])}; load+check+save "
          f"{seconds(sp['baseline_all_s'])}; bare `python -c pass` {sp['python_startup_s']:.2f}")
    t = ct["breakdown"]["timings"]
    passes = ", ".join(f"{k} {v:.2f}" for k, v in ct["breakdown"]["passes"].items())
    print(f"  fastest in-process compile (s): load {t['load']:.2f}, passes [{passes}], verify {t['verify']:.2f}, "
          f"build {t['build']:.2f}, total {t['total']:.2f}")
    known = [f for f in sp["background_cpu"] if f is not None]
    print_background(max(known) if known else None, "subprocess runs (the busiest repetition)")


# --------------------------------------------------------------------------- #
# 2. speed against FLOPs
# --------------------------------------------------------------------------- #


def compile_variants(model: Path, workdir: Path, round_tos: list[int], threads: int, runs: int,
                     warmup: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for ratio in RATIOS:
        for n in round_tos:
            out = workdir / f"prune-r{ratio}-n{n}"
            t0 = time.perf_counter()
            res = npcompile.compile(str(model), out, ratio=ratio, round_to=n, target="onnxruntime",
                                    threads=threads, runs=runs, warmup=warmup)
            seconds = time.perf_counter() - t0
            s, lat = res.report["summary"], res.report["latency"]
            digest = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
            same = next((r["round_to"] for r in rows if r["sha256"] == digest), None)
            rows.append({
                "ratio": ratio, "round_to": n, "path": str(out / "model.onnx"), "compile_s": seconds,
                "sha256": digest, "same_model_as_round_to": same,
                "flops_reduction": s["flops_reduction"], "param_reduction": s["param_reduction"],
                "flops_before": s["flops_before"], "flops_after": s["flops_after"],
                "params_before": s["params_before"], "params_after": s["params_after"],
                "report": {"before_p50_ms": lat["before"]["p50_ms"], "after_p50_ms": lat["after"]["p50_ms"],
                           "speedup": lat["speedup"]},
            })
            print(f"  compiled ratio {ratio} round_to {n:>2} in {seconds:4.1f} s: FLOPs "
                  f"-{100 * s['flops_reduction']:.1f} %; the compile measured p50 {lat['before']['p50_ms']:.1f} "
                  f"-> {lat['after']['p50_ms']:.1f} ms ({lat['speedup']:.2f}x)"
                  + (f"; the same model as round_to {same}" if same is not None else ""), flush=True)
    return rows


def interleaved_latency(paths: list[str], threads: int, rounds: int, runs: int,
                        warmup: int) -> tuple[list[dict[str, Any]], list[float | None]]:
    """Latency of every model, measured in ``rounds`` rounds of ``runs`` timed runs each (after 2
    untimed ones), the order of the models rotating from round to round. Returns, per model, the
    median over all runs (``p50_ms``), the fastest run and the median of every round; and, per
    round, the share of the CPU that other processes took."""
    sessions = [make_session(p, threads) for p in paths]
    name = sessions[0].get_inputs()[0].name
    feeds = {name: np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    for sess in sessions:
        for _ in range(warmup):
            sess.run(None, feeds)
    samples: list[list[float]] = [[] for _ in sessions]
    per_round: list[list[float]] = [[] for _ in sessions]
    background: list[float | None] = []
    for r in range(rounds):
        with BackgroundLoad() as bg:
            for k in range(len(sessions)):
                i = (k + r) % len(sessions)
                sess = sessions[i]
                for _ in range(2):
                    sess.run(None, feeds)
                got = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    sess.run(None, feeds)
                    got.append(time.perf_counter() - t0)
                samples[i] += got
                per_round[i].append(statistics.median(got) * 1e3)
        background.append(bg.fraction)
    models = [{"p50_ms": statistics.median(s) * 1e3, "min_ms": min(s) * 1e3, "round_p50_ms": pr}
              for s, pr in zip(samples, per_round, strict=True)]
    return models, background


def speed_figures(rows: list[dict[str, Any]], orig: dict[str, Any], background: list[float | None]) -> None:
    quiet = [f is not None and f < QUIET for f in background]
    for row in rows:
        row["speedup"] = orig["p50_ms"] / row["p50_ms"]
        row["latency_reduction"] = 1.0 - row["p50_ms"] / orig["p50_ms"]
        row["lat_vs_flops"] = row["latency_reduction"] / row["flops_reduction"]
        ratios = [a / b for a, b in zip(row["round_p50_ms"], orig["round_p50_ms"], strict=True)]
        row["paired_lat_vs_flops"] = (1.0 - statistics.median(ratios)) / row["flops_reduction"]
        quiet_ratios = [x for x, q in zip(ratios, quiet, strict=True) if q]
        row["quiet_rounds"] = len(quiet_ratios)
        row["quiet_lat_vs_flops"] = ((1.0 - statistics.median(quiet_ratios)) / row["flops_reduction"]
                                     if quiet_ratios else None)


def print_table(rows: list[dict[str, Any]], orig: dict[str, Any], background: list[float | None],
                default_n: int) -> None:
    head = (f"{'ratio':>5} {'round_to':>8} {'FLOPs red':>9} {'params red':>10} {'p50 orig':>9} "
            f"{'p50 pruned':>10} {'speedup':>7} {'lat/FLOPs':>9} {'paired':>6} {'quiet':>5} {'compile':>7}")
    print(head)
    print("-" * len(head))
    for row in rows:
        n = f"{row['round_to']}{'*' if row['round_to'] == default_n else ''}"
        note = ""
        if row["round_to"] == 16:
            note = "  goal met" if row["lat_vs_flops"] >= GOAL_LAT_VS_FLOPS else "  goal NOT met"
        if row["same_model_as_round_to"] is not None:
            note += f" (same model as round_to {row['same_model_as_round_to']})"
        quiet = "n/a" if row["quiet_lat_vs_flops"] is None else f"{row['quiet_lat_vs_flops']:.2f}"
        print(f"{row['ratio']:5.1f} {n:>8} {100 * row['flops_reduction']:8.1f}% "
              f"{100 * row['param_reduction']:9.1f}% {orig['p50_ms']:7.2f}ms {row['p50_ms']:8.2f}ms "
              f"{row['speedup']:6.2f}x {row['lat_vs_flops']:9.2f} {row['paired_lat_vs_flops']:6.2f} {quiet:>5} "
              f"{row['report']['speedup']:6.2f}x{note}")
    n_quiet = rows[0]["quiet_rounds"] if rows else 0
    print(f"  * the onnxruntime target's default. p50: median over all interleaved runs. lat/FLOPs: latency\n"
          f"    reduction (1 - p50 pruned / p50 orig) / FLOPs reduction, goal >= {GOAL_LAT_VS_FLOPS:g} with "
          f"round_to 16. paired: the same\n    from the median over rounds of (round p50 pruned / round p50 "
          f"orig). quiet: paired, over the {n_quiet} of {len(background)}\n    rounds in which other processes "
          f"took < {100 * QUIET:.0f} % of the CPU. compile: the speedup the compile itself measured.")
    by_model: dict[str, list[float]] = {}
    for row in rows:
        by_model.setdefault(row["sha256"], []).append(row["p50_ms"])
    for same in (v for v in by_model.values() if len(v) > 1):
        print("  noise: byte-identical pruned models, measured as separate sessions: "
              + " vs ".join(f"{x:.2f}" for x in same) + f" ms ({100 * (max(same) / min(same) - 1):.1f} % apart)")
    print("  original, p50 per round (ms): " + ", ".join(f"{x:.1f}" for x in orig["round_p50_ms"]))
    print("  other processes' CPU share per round (%): "
          + ", ".join("?" if f is None else f"{100 * f:.0f}" for f in background))
    known = [f for f in background if f is not None]
    print_background(statistics.mean(known) if known else None, "latency measurement (mean over rounds)")


# --------------------------------------------------------------------------- #


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="ONNX Runtime intra-op threads (default: os.cpu_count())")
    ap.add_argument("--rounds", type=int, help="interleaved latency rounds (default 15, quick 2)")
    ap.add_argument("--runs", type=int, help="timed runs per model and round (default 10, quick 5)")
    ap.add_argument("--compile-runs", type=int,
                    help="timed runs of each compile's own before/after benchmark (default 20, quick 5)")
    ap.add_argument("--warmup", type=int, help="warm-up runs per model (default 5, quick 2)")
    ap.add_argument("--repeat", type=int, help="compile-time repetitions, best taken (default 3, quick 1)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer rounds, runs and repetitions")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 15)
    runs = args.runs or (5 if args.quick else 10)
    compile_runs = args.compile_runs or (5 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    repeat = args.repeat or (1 if args.quick else 3)
    threads = args.threads

    width, width_name = cpu_vector_width()
    round_tos = list(dict.fromkeys([1, 8, 16, width]))
    started = time.perf_counter()
    now = datetime.datetime.now().isoformat(timespec="seconds")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print("npcompile compile-speed benchmark (ResNet-50)")
    print(f"  {now}; CPU {cpu_model()}, {os.cpu_count()} logical cores, vector width {width_name} "
          f"({width} fp32 lanes); load average {'n/a' if load is None else f'{load[0]:.2f}'}")
    print(f"  threads {threads}; latency: {rounds} rounds x {runs} runs, warm-up {warmup}; the compile's own "
          f"benchmark: {compile_runs} runs; compile time: best of {repeat}{' (quick)' if args.quick else ''}")
    print(f"  python {platform.python_version()}, npcompile {npcompile.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}", flush=True)
    figures: dict[str, Any] = {
        "date": now,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "vector_width": width,
                    "vector_width_name": width_name, "platform": platform.platform(),
                    "load_average": list(load) if load else None},
        "versions": {"python": platform.python_version(), "npcompile": npcompile.__version__,
                     "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "settings": {"threads": threads, "rounds": rounds, "runs": runs, "compile_runs": compile_runs,
                     "warmup": warmup, "repeat": repeat, "quick": args.quick},
    }
    with tempfile.TemporaryDirectory(prefix="npcompile-bench-") as tmp:
        workdir = Path(tmp)
        model, export_s = build_resnet50(workdir)
        size = model.stat().st_size
        print(f"\nResNet-50 exported (legacy exporter) in {export_s:.1f} s: {size / 1e6:.1f} MB", flush=True)
        figures["model"] = {"name": "resnet50", "size_bytes": size, "export_s": export_s}

        figures["compile_time"] = ct = compile_time(model, workdir, repeat)
        print_compile(ct)

        print(f"\n== Speed against FLOPs (onnxruntime, CPU, {threads} threads, batch 1, 1x3x224x224) ==",
              flush=True)
        rows = compile_variants(model, workdir, round_tos, threads, compile_runs, warmup)
        print(f"  measuring the original and the {len(rows)} pruned models interleaved: {rounds} rounds x "
              f"{runs} runs ...", flush=True)
        models, background = interleaved_latency([str(model)] + [r.pop("path") for r in rows], threads,
                                                 rounds, runs, warmup)
        orig = models[0]
        for row, m in zip(rows, models[1:], strict=True):
            row.update(m)
        speed_figures(rows, orig, background)
        print()
        print_table(rows, orig, background, width)
        figures["speed_vs_flops"] = {"original": orig, "rows": rows, "target_default_round_to": width,
                                     "background_cpu_per_round": background}
    figures["total_s"] = time.perf_counter() - started
    print(f"\ntotal {figures['total_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
