"""Channel importance: the scores that criteria give every channel of a group.

This package owns the scoring functions; the analysis passes (``magnitude``, ``activation``,
``apoz``, ``mean-abs``, ``maxout``) only wire them to the pipeline :class:`~npcompile.pipeline.Context`.

- :mod:`npcompile.importance.magnitude`: :func:`group_magnitude`, the L1 or L2 norm of the weights
  producing each channel, over its group.
- :mod:`npcompile.importance.activation`: :func:`activation_scores` (1 - APoZ or mean
  ``|activation|`` from calibration statistics) and :func:`tensor_rank`.

Every score follows the criterion contract: dead channels score exactly 0, every other channel
scores above 0, higher is more important.
"""
