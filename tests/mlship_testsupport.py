"""Helpers shared by the test modules (conftest.py holds the fixtures).

Importable as ``mlship_testsupport`` because pytest puts tests/ on sys.path for its
conftest.py; the distinct name cannot clash with runtime/tests.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

VALIDATOR_TOOLS = ("checkov", "kubernetes-validate", "hadolint", "kustomize")


def tools_bin_dir() -> Path:
    """Where .ci/install-validators.sh puts its tools (kept in step with that script)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("MLSHIP_TOOLS_DIR", Path(cache) / "mlship-tools")) / "bin"


def find_tool(name: str) -> str | None:
    """A validator on PATH, else in the tools cache."""
    candidate = tools_bin_dir() / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def make_model(path: Path, *, features: int = 4, dynamic_batch: bool = True,
               weights: int = 0) -> Path:
    """A deterministic ONNX model: y = relu(x @ W) with W of ``weights`` extra floats."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    batch: str | int = "batch" if dynamic_batch else 1
    columns = max(1, weights // features) if weights else features
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, columns])
    w = numpy_helper.from_array(
        np.linspace(-1, 1, features * columns, dtype=np.float32).reshape(features, columns), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                               helper.make_node("Relu", ["h"], ["y"])],
                              "mlship-test", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="mlship-tests", ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


CONFIG_CASES = Path(__file__).resolve().parent / "data" / "configs"
# case -> render target; the config is tests/data/configs/<case>.yaml
CASES = {"cpu": "kubernetes", "gpu": "kubernetes", "s3-hpa": "kubernetes",
         "batch": "kubernetes", "kserve": "kserve", "istio": "kubernetes",
         "gateway": "kubernetes", "drift": "kubernetes",
         "multi-model": "kubernetes", "gcs": "kubernetes", "mesh": "kubernetes"}
