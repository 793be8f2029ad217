"""The compact student: a pre-LN transformer encoder with per-teacher heads (:mod:`.model`), and its
weights read back out of an exported ONNX graph (:mod:`.onnx_weights`)."""
