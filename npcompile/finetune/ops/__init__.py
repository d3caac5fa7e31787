"""The torch functions of the ONNX ops, one module per op family; importing this package registers
them all (see :func:`npcompile.finetune.registry.register`)."""

from npcompile.finetune.ops import (  # noqa: F401  (imported to register their ops)
    activation,
    attention,
    conv,
    elementwise,
    index,
    linear,
    norm,
    pad,
    pool,
    quant,
    recurrent,
    reduce,
    resize,
    shape,
)
