"""Fine-tuning on the ONNX graph: :mod:`.graph_module` runs (and trains) an ONNX graph in PyTorch,
one torch function per ONNX op."""
