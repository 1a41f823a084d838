"""Stage 2: the ONNX model -> facts about it (signature, memory, inputs), variants, baselines, storage."""
