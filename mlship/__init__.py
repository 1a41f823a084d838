"""mlship: take an ONNX model file to Docker and Kubernetes, and serve it correctly."""

__version__ = "0.1.0"
