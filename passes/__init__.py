"""Built-in passes (installed as ``npcompile.passes``); importing this package registers them."""

from npcompile.passes import cleanup, magnitude, prune, select  # noqa: F401

__all__ = ["cleanup", "magnitude", "prune", "select"]
