"""Two plugin passes: a criterion (analysis) and a rewrite.

- ``bn-scale``: scores each channel by |gamma| of the BatchNormalization nodes of its group
  (Liu et al. 2017, network slimming); channels without BN fall back to the weight magnitude.
- ``fp16-round``: rounds every float32 weight to the nearest float16 value (kept as float32), a
  lossy but harmless rewrite that shows how a rewrite pass replaces the model.
"""

from __future__ import annotations

import numpy as np

from npcompile.importance.magnitude import group_magnitude
from npcompile.pipeline import Context, Pass, PassResult


class BnScalePass(Pass):
    name = "bn-scale"
    kind = "analysis"
    description = "|BatchNorm gamma| per channel (network slimming); weight magnitude where no BN"

    def run(self, ctx: Context) -> PassResult:
        analysis = ctx.analysis
        scores: dict[int, np.ndarray] = {}
        with_bn = 0
        for group in analysis.prunable_groups():
            score = np.zeros(group.size)
            found = False
            for site in group.sites:
                if site.node.op == "BatchNormalization" and site.index == 1:
                    gamma = np.abs(site.node.inputs[1].values.astype(np.float64))
                    off = 0
                    for piece in site.layout.pieces:
                        if piece.group is not None and analysis.find(piece.group) == group.id:
                            score[piece.start:piece.stop] += gamma[off:off + len(piece)]
                        off += len(piece)
                    found = True
            if not found:
                score = group_magnitude(analysis, group)
            else:
                with_bn += 1
                score = np.where(group.dead, 0.0, np.maximum(score, np.finfo(np.float64).tiny))
            scores[group.id] = score
        ctx.scores = scores
        ctx.criterion = "bn-scale"
        return PassResult(False, f"scored {len(scores)} groups ({with_bn} by BN scale)")


class Fp16RoundPass(Pass):
    name = "fp16-round"
    kind = "rewrite"
    description = "round float32 weights to float16 precision (kept as float32)"

    def run(self, ctx: Context) -> PassResult:
        import onnx_graphsurgeon as gs

        graph = ctx.graph
        changed = 0
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and tensor.values.dtype == np.float32 and tensor.values.size > 1:
                tensor.values = tensor.values.astype(np.float16).astype(np.float32)
                changed += 1
        ctx.set_graph(graph)
        return PassResult(changed > 0, f"rounded {changed} weights to float16 precision")
