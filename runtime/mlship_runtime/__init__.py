"""mlship-runtime: one ONNX model served over the Open Inference Protocol v2 (REST).

Importing the package is cheap and side-effect free (no logging set-up, no onnxruntime import):
the server is started by ``mlship_runtime.server.run`` or ``python -m mlship_runtime``.
"""

__version__ = "0.1.0"
