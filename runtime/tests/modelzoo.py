"""Small ONNX models built with onnx.helper, shared by the runtime tests and bench/.

Each factory writes one model to a path and returns that path. Weights come from a fixed seed so
in-process onnxruntime and the server see the same model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]

ALL_TYPES = {
    "bool": TensorProto.BOOL, "uint8": TensorProto.UINT8, "uint16": TensorProto.UINT16,
    "uint32": TensorProto.UINT32, "uint64": TensorProto.UINT64, "int8": TensorProto.INT8,
    "int16": TensorProto.INT16, "int32": TensorProto.INT32, "int64": TensorProto.INT64,
    "float16": TensorProto.FLOAT16, "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
    "string": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="mlship-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def tiny_classifier(path: Path, seed: int = 0) -> Path:
    """x [N,4] float -> MatMul -> Softmax -> probabilities [N,3] (weights from ``seed``)."""
    weights = np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        [_init("w", weights)])
    return _save(graph, path)


def fixed_shape(path: Path) -> Path:
    """x [1,4] float -> y [1,4] = 2x: no dynamic dimension, so never batched."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return _save(graph, path)


def mixed_inputs(path: Path) -> Path:
    """ids int64 [N,3] and text string [N,1] -> total int64 [N,1] and echo string [N,1]."""
    axes = _init("axes", np.array([1], dtype=np.int64))
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["ids", "axes"], ["total"], keepdims=1),
         helper.make_node("Identity", ["text"], ["echo"])], "mixed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3]),
         helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("total", TensorProto.INT64, ["N", 1]),
         helper.make_tensor_value_info("echo", TensorProto.STRING, ["N", 1])],
        [axes])
    return _save(graph, path)


def all_types(path: Path) -> Path:
    """One Identity per V2 datatype: in_<t> [N,2] -> out_<t> [N,2]."""
    nodes = [helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"]) for t in ALL_TYPES]
    graph = helper.make_graph(
        nodes, "alltypes",
        [helper.make_tensor_value_info(f"in_{t}", code, ["N", 2]) for t, code in ALL_TYPES.items()],
        [helper.make_tensor_value_info(f"out_{t}", code, ["N", 2])
         for t, code in ALL_TYPES.items()])
    return _save(graph, path)


def slow(path: Path, matmuls: int = 8, size: int = 384) -> Path:
    """x [N,1] -> y [N,1]: ``matmuls`` size x size MatMuls that depend on x, so ORT cannot fold
    them at load; each run costs roughly the same whatever N is."""
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((size, size)) / size).astype(np.float32)
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Mul", ["s", "zero"], ["s0"]),
             helper.make_node("Add", ["a", "s0"], ["m0"])]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "a"], [f"m{i + 1}"]))
    nodes += [helper.make_node("ReduceMean", [f"m{matmuls}"], ["mean"], keepdims=0),
              helper.make_node("Mul", ["mean", "zero"], ["mean0"]),
              helper.make_node("Add", ["x", "mean0"], ["y"])]
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [_init("a", a), _init("zero", np.array(0.0, dtype=np.float32))])
    return _save(graph, path)


def mlp(path: Path, width: int = 1024, features: int = 256, classes: int = 10) -> Path:
    """x [N,256] -> 3 x (Dense(1024) + Relu) -> Dense(10) -> logits [N,10]."""
    rng = np.random.default_rng(2)
    nodes, inits, previous, fan_in = [], [], "x", features
    for layer in range(3):
        inits += [_init(f"w{layer}", (rng.standard_normal((fan_in, width)) / np.sqrt(fan_in))
                        .astype(np.float32)),
                  _init(f"b{layer}", np.zeros(width, dtype=np.float32))]
        nodes += [helper.make_node("Gemm", [previous, f"w{layer}", f"b{layer}"], [f"h{layer}"]),
                  helper.make_node("Relu", [f"h{layer}"], [f"r{layer}"])]
        previous, fan_in = f"r{layer}", width
    inits += [_init("wo", (rng.standard_normal((width, classes)) / np.sqrt(width))
                    .astype(np.float32)), _init("bo", np.zeros(classes, dtype=np.float32))]
    nodes.append(helper.make_node("Gemm", [previous, "wo", "bo"], ["logits"]))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return _save(graph, path)


def sklearn_zipmap(path: Path) -> Path:
    """StandardScaler + LogisticRegression on iris via skl2onnx, ZipMap left on: outputs
    ``output_label`` int64 [N] and ``output_probability`` (a sequence of maps)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    pipeline.fit(features, labels)
    onx = to_onnx(pipeline, features[:1].astype(np.float32), target_opset=17)
    path.write_bytes(onx.SerializeToString())
    return path


def gather(path: Path) -> Path:
    """idx int64 [N] -> rows float [N,2] of a 5-row table: idx >= 5 passes the signature check
    but onnxruntime rejects it at run time."""
    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0)], "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["N", 2])],
        [_init("table", table)])
    return _save(graph, path)


def warmup_fails(path: Path) -> Path:
    """x [N,4], s int64 [2] -> Reshape(x, s, allowzero=1): the generated all-zero ``s`` makes
    every warm-up run fail, though the model loads."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1)], "warmupfails",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    return _save(graph, path)


def data_loop(path: Path) -> Path:
    """x float [N,64], n int64 [N] -> y [N,64]: a Loop of max(n) steps (MatMul + Tanh), so the
    run time comes from the input's values, not its size: what a warm-up cannot foresee."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["acc_in", "w"], ["mm"]),
         helper.make_node("Tanh", ["mm"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [None, 64])],
        [_init("w", np.eye(64, dtype=np.float32) * 0.5)])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["go"], value=_init("t", np.array(True))),
         helper.make_node("ReduceMax", ["n"], ["steps"], keepdims=0),
         helper.make_node("Loop", ["steps", "go", "x"], ["y"], body=body)], "dataloop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64]),
         helper.make_tensor_value_info("n", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])])
    return _save(graph, path)


def external_data(path: Path, location: str, data: Path | None = None) -> Path:
    """x [N,4] -> x + bias, ``bias`` float [4] stored as external data at ``location`` (relative
    to the model's folder, or anywhere: what a hostile model could name). ``data`` is written
    with the bias' 16 bytes unless given."""
    bias = np.arange(4, dtype=np.float32)
    target = data if data is not None else path.parent / location
    if data is None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bias.tobytes())
    tensor = TensorProto(name="bias", data_type=TensorProto.FLOAT, dims=[4],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])], "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [tensor])
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="mlship-tests")
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())  # onnx.save would resolve the location
    return path
