"""Stage 2: the ONNX model -> facts about it (signature, memory, inputs), its variants, drift
baselines and object storage."""
