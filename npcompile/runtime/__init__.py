"""Data and ONNX Runtime execution: data files (:mod:`.data`), calibration statistics
(:mod:`.calibrate`), evaluators (:mod:`.evaluate`) and verification against the original model
(:mod:`.verify`)."""
