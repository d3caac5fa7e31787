"""Built-in passes (installed as ``npcompile.passes``); importing this package registers them."""

from npcompile.passes import activation, cleanup, finetune, magnitude, maxout, prune, search, select  # noqa: F401

__all__ = ["activation", "cleanup", "finetune", "magnitude", "maxout", "prune", "search", "select"]
