"""Built-in passes (installed as ``npcompile.passes``); importing this package registers them."""

from npcompile.passes import (  # noqa: F401
    activation,
    cleanup,
    finetune,
    hidden,
    latency,
    magnitude,
    maxout,
    prune,
    quantize,
    reconstruct,
    search,
    select,
    sparsity,
)

__all__ = ["activation", "cleanup", "finetune", "hidden", "latency", "magnitude", "maxout", "prune", "quantize",
           "reconstruct", "search", "select", "sparsity"]
