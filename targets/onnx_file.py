"""The ``onnx`` target: the compiled model as an ONNX file."""

from __future__ import annotations

from pathlib import Path

import onnx

from npcompile.graph.model_io import save_model
from npcompile.targets.base import Artifact, Target

__all__ = ["OnnxTarget"]


class OnnxTarget(Target):
    name = "onnx"
    description = "write the compiled ONNX model (no latency measurement)"

    def build(self, model: onnx.ModelProto, outdir: Path, name: str = "model") -> Artifact:
        path = Path(outdir) / f"{name}.onnx"
        if not path.exists():
            save_model(model, path, external_data=self.options.get("external_data"))
        return Artifact(self.name, {"model": path})
