"""Build the example model and request used by mlship's README demo and docs.

Writes ``examples/iris.onnx`` (scikit-learn LogisticRegression on iris, converted with skl2onnx,
ZipMap off so the outputs are plain tensors ``label`` INT64 [N] and ``probabilities`` FP32 [N,3])
and ``examples/iris-request.json`` (a V2 infer request for two flowers). Run it from anywhere:
``python examples/make_examples.py``. Deterministic: same versions in, same bytes out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent


def main() -> None:
    features, labels = load_iris(return_X_y=True)
    classifier = LogisticRegression(max_iter=500).fit(features, labels)
    onx = to_onnx(classifier, features[:1].astype(np.float32), target_opset=17,
                  options={id(classifier): {"zipmap": False}})
    # Friendly, stable names: the demo and docs refer to them.
    renames = {onx.graph.input[0].name: "input",
               onx.graph.output[0].name: "label", onx.graph.output[1].name: "probabilities"}
    for node in onx.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in (*onx.graph.input, *onx.graph.output):
        value.name = renames.get(value.name, value.name)
    onx.doc_string = "iris LogisticRegression (scikit-learn), mlship example"
    (HERE / "iris.onnx").write_bytes(onx.SerializeToString())
    request = {"id": "iris-1", "inputs": [{
        "name": "input", "datatype": "FP32", "shape": [2, 4],
        "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}]}
    (HERE / "iris-request.json").write_text(json.dumps(request, indent=2) + "\n")
    print(f"wrote {HERE / 'iris.onnx'} and {HERE / 'iris-request.json'}")


if __name__ == "__main__":
    main()
