"""Training-free accuracy recovery: least-squares reconstruction of the layers that read pruned
channels (and of the layers after them), reconstruction-aware channel selection, bias
compensation and BatchNorm re-estimation (the passes are in :mod:`npcompile.passes.reconstruct`).

Everything here works on *layers*: a Conv (plain, grouped or depthwise), a Gemm or a MatMul with
a constant weight, seen as a linear map from *columns* (the input features a weight row reads: the
``C·K`` entries of a convolution patch, with ``K`` the kernel size, or the features of a fully
connected input) to the layer's outputs, ``y = xᵀW + b``. A grouped convolution is ``blocks``
independent maps (block ``j`` reads its own input channels and makes its own outputs).

Statistics are *streamed*: a :class:`LayerStats` folds each calibration batch into running sums
(``Σx``, ``Σxxᵀ``, ``Σy``, ``Σxyᵀ``, ``Σ‖y‖²`` per block, in float64), so its memory is
``blocks·(d² + d·o)`` for ``d`` columns and ``o`` outputs per block — never the activations
themselves (one batch of them at a time). For convolutions the patches are taken at a sample of
output positions per input sample (``positions``), chosen by a hash of the sample's index in the
data set, so the sums do not depend on the batch size.

From the sums, :func:`solve` computes the ridge least-squares fit with an intercept (the new
weights and the bias shift) and :func:`errors` the squared error of any ``(W, β)``; the greedy
selection (:func:`greedy_removal`) removes the channel whose removal least increases the optimal
least-squares error, with the block-deletion (Schur complement) update of the inverse Gram
matrix.

This module gathers the names of the sub-modules that own each job (import from either):

- :mod:`~npcompile.recovery.layers`: :class:`Layer`, its geometry and im2col columns, and
  :func:`sample_positions`.
- :mod:`~npcompile.recovery.locate`: which layers to refit (:func:`removal_layers`,
  :func:`downstream_layers`) and in which waves (:func:`layer_levels`).
- :mod:`~npcompile.recovery.stats`: the streamed sums (:class:`LayerStats`, :class:`MeanStats`,
  :class:`ChannelMoments`, :func:`stream`, :func:`blas_threads`).
- :mod:`~npcompile.recovery.solve`: the fit and its errors.
- :mod:`~npcompile.recovery.greedy`: reconstruction-aware selection.
- :mod:`~npcompile.recovery.write`: writing the refit weights into the graph, and :func:`bn_nodes`.
"""

from __future__ import annotations

from npcompile.recovery.greedy import consumer_state, greedy_removal, group_columns
from npcompile.recovery.layers import (
    LAYER_OPS,
    Layer,
    conv_column_sums,
    conv_patches,
    layer_from_node,
    sample_positions,
)
from npcompile.recovery.locate import downstream_layers, layer_levels, removal_layers
from npcompile.recovery.solve import centered, errors, output_energy, regularised, solve
from npcompile.recovery.stats import ChannelMoments, LayerStats, MeanStats, blas_threads, stream
from npcompile.recovery.write import Names, bn_nodes, write_layer

__all__ = ["Layer", "LayerStats", "MeanStats", "ChannelMoments", "layer_from_node", "removal_layers",
           "downstream_layers", "layer_levels", "stream", "solve", "errors", "greedy_removal",
           "group_columns", "write_layer", "sample_positions", "blas_threads", "Names", "bn_nodes", "LAYER_OPS",
           "conv_patches", "conv_column_sums", "regularised", "centered", "output_energy", "consumer_state"]

