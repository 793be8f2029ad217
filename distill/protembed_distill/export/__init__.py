"""Checkpoint -> model folder: the ONNX graph and its parity (:mod:`.onnx`), the int8 and fp16 variants
(:mod:`.variants`), the folder and its card (:mod:`.model_folder`), and the reference vectors the server
checks itself against (:mod:`.reference_vectors`)."""
