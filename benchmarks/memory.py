"""Peak memory of a whole compile against the model's size, for models stored with external data.

Builds MLPs of growing size (Gemm chains of WIDTH x WIDTH float32 weights) saved with their
weights in a separate file, runs ``npcompile MODEL --ratio 0.5 --no-benchmark`` on each in a
fresh process, and prints the process's peak resident memory next to the model's size. Memory
should grow in proportion to the model (a constant factor), not faster.

    python benchmarks/memory.py                 # 64, 128 and 256 MB models
    python benchmarks/memory.py --sizes 64 512  # model sizes in MB
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 2048  # one layer: 2048 x 2048 float32 = 16 MiB


def build(path: Path, layers: int) -> int:
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    x = "input"
    for i in range(layers):
        w = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * 0.02
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Gemm", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".weights", size_threshold=1024)
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.name))


_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, r.returncode)")


def peak(cmd: list[str]) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PEAK, *cmd], capture_output=True, text=True, check=True)
    rss, rc = out.stdout.split()[-2:]
    return int(rss), int(rc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="model sizes in MB")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    baseline, _ = peak([sys.executable, "-c", "import npcompile.api"])
    print(f"interpreter + imports: {baseline / 2**20:.0f} MiB peak")
    print(f"{'model MB':>9} {'layers':>6} {'peak MiB':>9} {'peak-imports':>13} {'(peak-imports)/size':>20} "
          f"{'external out':>12}")
    for mb in args.sizes:
        layers = max(1, round(mb * 2**20 / (WIDTH * WIDTH * 4)))
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "model.onnx"
            size = build(src, layers)
            out = Path(tmp) / "out"
            rss, rc = peak([sys.executable, "-m", "npcompile", str(src), "--ratio", "0.5", "--round-to", "1",
                            "--no-benchmark", "--no-plots", "-q", "-o", str(out)])
            if rc != 0:
                raise SystemExit(f"npcompile failed on the {mb} MB model (exit {rc})")
            external = (out / "model.onnx.data").exists()
            row = {"model_bytes": size, "layers": layers, "peak_bytes": rss, "peak_over_imports": rss - baseline,
                   "ratio": (rss - baseline) / size, "external_data_out": external}
            rows.append(row)
            print(f"{size / 1e6:9.0f} {layers:6d} {rss / 2**20:9.0f} {(rss - baseline) / 2**20:13.0f} "
                  f"{row['ratio']:20.2f} {str(external):>12}")
    if len(rows) > 1:
        slope = (rows[-1]["peak_bytes"] - rows[0]["peak_bytes"]) / (rows[-1]["model_bytes"] - rows[0]["model_bytes"])
        print(f"marginal memory per model byte (largest vs smallest): {slope:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
