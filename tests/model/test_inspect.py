"""mlship.inspect: signatures of real ONNX files, and one clear error per broken file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from mlship.cli import app
from mlship.errors import ExitCode, ModelError, ModelFileError
from mlship.model.inspect import inspect_model, max_supported_opset

runner = CliRunner()


def _classifier(path: Path, *, opset: int = 17, batch: str | int = "batch") -> Path:
    weights = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 3])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="mlship-tests", producer_version="1.0")
    helper.set_model_props(model, {"author": "tests", "labels": "a,b,c"})
    model.ir_version = 8
    onnx.save_model(model, path)
    return path


def _mixed_types(path: Path) -> Path:
    """int64 and string inputs, a bool and a float16 output, an unnamed dynamic dim."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["ids_out"]),
         helper.make_node("Identity", ["words"], ["words_out"]),
         helper.make_node("Cast", ["ids"], ["flag"], to=TensorProto.BOOL),
         helper.make_node("Cast", ["ids"], ["half"], to=TensorProto.FLOAT16)],
        "mixed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", None]),
         helper.make_tensor_value_info("words", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["n", None]),
         helper.make_tensor_value_info("words_out", TensorProto.STRING, ["n"]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, ["n", None]),
         helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["n", None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, path)
    return path


def _sklearn_zipmap(path: Path) -> Path:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    path.write_bytes(to_onnx(pipeline, x[:1].astype(np.float32)).SerializeToString())
    return path


def test_classifier_signature(tmp_path: Path) -> None:
    path = _classifier(tmp_path / "clf.onnx")
    signature = inspect_model(path)

    assert signature.name == "clf"
    assert signature.producer_name == "mlship-tests"
    assert signature.ir_version == 8
    assert signature.opsets == {"ai.onnx": 17}
    assert signature.metadata == {"author": "tests", "labels": "a,b,c"}
    assert signature.size_bytes == path.stat().st_size
    import hashlib
    assert signature.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    (x,) = signature.inputs
    assert (x.name, x.type.kind, x.type.dtype) == ("x", "tensor", "float32")
    assert [str(d) for d in x.type.shape] == ["batch", "4"]
    assert x.type.shape[0].is_dynamic
    assert not x.type.shape[1].is_dynamic
    assert signature.dynamic_batch is True
    assert signature.weights_bytes == 4 * 3 * 4
    # a [1,4] input and a [1,3] output around each node, at batch 1
    assert signature.peak_activation_bytes == (4 + 3) * 4
    assert signature.memory_estimate_bytes > signature.weights_bytes


def test_fixed_batch_is_not_dynamic(tmp_path: Path) -> None:
    signature = inspect_model(_classifier(tmp_path / "fixed.onnx", batch=1))
    assert signature.dynamic_batch is False


def test_all_tensor_types_and_unnamed_dims(tmp_path: Path) -> None:
    signature = inspect_model(_mixed_types(tmp_path / "mixed.onnx"))
    dtypes = {spec.name: spec.type.dtype for spec in (*signature.inputs, *signature.outputs)}
    assert dtypes == {"ids": "int64", "words": "string", "ids_out": "int64",
                      "words_out": "string", "flag": "bool", "half": "float16"}
    ids = signature.inputs[0]
    assert str(ids.type) == "int64[n, ?]"
    assert ids.type.shape[1] == ids.type.shape[1].__class__(size=None, symbol=None)


def test_sklearn_sequence_of_maps(tmp_path: Path) -> None:
    signature = inspect_model(_sklearn_zipmap(tmp_path / "iris.onnx"))
    outputs = {spec.name: str(spec.type) for spec in signature.outputs}
    assert outputs["output_label"] == "int64[?]"
    assert outputs["output_probability"] == "sequence(map(int64, float32))"
    assert signature.opsets["ai.onnx.ml"] >= 1


def test_external_data_listed_and_hashed(tmp_path: Path) -> None:
    model = onnx.load(_classifier(tmp_path / "plain.onnx"))
    onnx.save_model(model, tmp_path / "ext.onnx", save_as_external_data=True,
                    location="ext.weights", size_threshold=0)
    signature = inspect_model(tmp_path / "ext.onnx")
    (external,) = signature.external_data
    assert external.path == "ext.weights"
    assert external.size_bytes == (tmp_path / "ext.weights").stat().st_size
    assert signature.weights_bytes == 48
    assert signature.total_bytes == signature.size_bytes + external.size_bytes


def test_json_output_is_one_object(tmp_path: Path) -> None:
    path = _sklearn_zipmap(tmp_path / "iris.onnx")
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema"] == "mlship.inspect/v1"
    assert document["ok"] is True
    assert document["name"] == "iris"
    assert [i["name"] for i in document["inputs"]] == ["X"]
    kinds = {o["name"]: o["type"]["kind"] for o in document["outputs"]}
    assert kinds == {"output_label": "tensor", "output_probability": "sequence"}


def test_human_output_is_a_table(tmp_path: Path) -> None:
    path = _classifier(tmp_path / "clf.onnx")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    for expected in ("sha256", "probabilities", "float32", "[batch, 4]", "ai.onnx 17", "labels"):
        assert expected in result.stdout


def _broken_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    valid = _classifier(tmp_path / "valid.onnx").read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(valid[: len(valid) // 2])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    text = tmp_path / "notes.onnx"
    text.write_text("this is a text file, not a model\n")
    model = onnx.load(tmp_path / "valid.onnx")
    onnx.save_model(model, tmp_path / "ext.onnx", save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    return {
        "truncated": (truncated, "not a valid ONNX model"),
        "empty": (empty, "the file is empty"),
        "text": (text, "not a"),
        "missing external data": (tmp_path / "ext.onnx", "external data file 'weights.bin'"),
        "missing file": (tmp_path / "nope.onnx", "no such file"),
    }


@pytest.mark.parametrize("case", ["truncated", "empty", "text", "missing external data",
                                  "missing file"])
def test_broken_file_exit_2_one_line(tmp_path: Path, case: str) -> None:
    path, expected = _broken_files(tmp_path)[case]
    with pytest.raises(ModelFileError):
        inspect_model(path)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == ExitCode.BAD_INPUT == 2
    assert result.stdout == ""
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert str(path) in error_lines[0]
    assert expected in error_lines[0]
    assert "Traceback" not in result.stderr


def test_broken_file_json_error_document(tmp_path: Path) -> None:
    path, _ = _broken_files(tmp_path)["truncated"]
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["error"]["exit_code"] == 2
    assert document["error"]["type"] == "ModelFileError"


def test_opset_newer_than_onnxruntime(tmp_path: Path) -> None:
    ort_version, newest = max_supported_opset()
    path = _classifier(tmp_path / "future.onnx", opset=newest + 1)
    with pytest.raises(ModelError) as caught:
        inspect_model(path)
    message = caught.value.message
    assert f"opset {newest + 1}" in message
    assert f"onnxruntime {ort_version}" in message
    assert f"up to {newest}" in message
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == ExitCode.MODEL


def test_newest_supported_opset_loads_in_onnxruntime(tmp_path: Path) -> None:
    """The bound we compare against is real: onnxruntime accepts a model at that opset."""
    import onnxruntime

    _, newest = max_supported_opset()
    path = _classifier(tmp_path / "newest.onnx", opset=newest)
    inspect_model(path)
    onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _other_formats(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    import json as _json
    import struct
    import zipfile

    import joblib
    from sklearn.linear_model import LogisticRegression

    sklearn_model = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), sklearn_model)
    torch_checkpoint = tmp_path / "model.pt"
    with zipfile.ZipFile(torch_checkpoint, "w") as archive:  # the layout torch.save writes
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/version", b"3\n")
    header = _json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    safetensors = tmp_path / "model.safetensors"
    safetensors.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")
    hdf5 = tmp_path / "model.h5"
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    return {
        "sklearn joblib": (sklearn_model, "skl2onnx"),
        "torch checkpoint": (torch_checkpoint, "torch.onnx.export"),
        "safetensors": (safetensors, "optimum-cli export onnx"),
        "keras h5": (hdf5, "tf2onnx"),
        "tflite": (tflite, "--tflite"),
    }


@pytest.mark.parametrize("case", ["sklearn joblib", "torch checkpoint", "safetensors",
                                  "keras h5", "tflite"])
def test_other_formats_named_with_how_to_convert(tmp_path: Path, case: str) -> None:
    path, how = _other_formats(tmp_path)[case]
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert "not an ONNX model" in result.stderr
    assert how in result.stderr
    assert "Traceback" not in result.stderr
