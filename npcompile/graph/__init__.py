"""Graph I/O and shapes: loading, normalising and saving ONNX models (:mod:`.model_io`), static
shapes for analysis (:mod:`.shapes`), the weight tensors of weight-bearing ops (:mod:`.weights`)
and model figures such as parameters and FLOPs per layer (:mod:`.stats`)."""
