"""npcompile: a deployment-oriented model compression compiler for ONNX.

The public API: :func:`compile` runs the whole flow (import, channel groups, analysis,
selection, rewrite, verify, target, report); :func:`inspect` returns the channel groups.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "compile", "inspect", "CompileOptions", "CompileResult"]


def __getattr__(name: str):  # lazy: keep `import npcompile` light
    if name in ("compile", "inspect", "CompileOptions", "CompileResult"):
        from npcompile import api

        return getattr(api, name)
    raise AttributeError(name)
