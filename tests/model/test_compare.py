"""`mlship compare OLD NEW` on real model pairs: a pretrained CNN classifier (PP-OCR's text
direction classifier, from the rapidocr-onnxruntime wheel) against its fp16 and int8 variants
as `mlship optimize` makes them, and scikit-learn iris classifiers (labels and probabilities).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlship_contract import check_failure, check_success, mlship
from typer.testing import CliRunner

from mlship.cli import app
from mlship.errors import ExitCode

runner = CliRunner()
SHAPE = ["--shape", "x=-1,3,48,192"]


def _classifier() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    assert spec is not None, "rapidocr-onnxruntime is a test extra: pip install '.[test]'"
    assert spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / \
        "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The classifier and its fp16 and int8 variants, written by `mlship optimize`."""
    out = tmp_path_factory.mktemp("variants")
    model = _classifier()
    result = runner.invoke(app, ["optimize", str(model), *SHAPE, "--out", str(out),
                                 "--variants", "fp16,int8", "--runs", "1", "--force", "--json"])
    assert result.exit_code == 0, result.output
    stem = model.stem
    return {"original": model, "fp16": out / f"{stem}.fp16.onnx",
            "int8": out / f"{stem}.int8.onnx"}


def _compare(*args: str, cwd: Path) -> tuple[int, dict]:
    result = mlship("compare", *args, "--json", cwd=cwd)
    if result.code in (0, ExitCode.DIFFERENCES):
        return result.code, check_success(("compare",), result.stdout)
    return result.code, check_failure(("compare",), result.stdout, result.code)


@pytest.mark.slow
def test_fp16_agrees_int8_does_not(variants: dict[str, Path], tmp_path: Path) -> None:
    original = str(variants["original"])
    code, same = _compare(original, original, *SHAPE, "--samples", "16", cwd=tmp_path)
    assert code == 0
    assert same["passed"]
    (output,) = same["outputs"].values()
    assert (output["kind"], output["compared"], output["disagreed"]) == ("top1", 16, 0)
    assert output["max_abs_deviation"] == 0.0

    code, fp16 = _compare(original, str(variants["fp16"]), *SHAPE, "--samples", "16",
                          cwd=tmp_path)
    (output,) = fp16["outputs"].values()
    assert code == 0, output
    assert output["top1_agreement"] == 1.0
    assert 0 < output["max_abs_deviation"] < 0.01

    code, int8 = _compare(original, str(variants["int8"]), *SHAPE, "--samples", "16",
                          cwd=tmp_path)
    (output,) = int8["outputs"].values()
    assert code == ExitCode.DIFFERENCES, output
    assert not int8["passed"]
    assert output["disagreed"] >= 1
    assert output["top1_agreement"] < 1.0
    assert output["agreement"] == 1 - output["disagreed"] / 16

    # The same pair within rollout.shadow's tolerance from mlship.yaml: passes.
    share = output["disagreed"] / 16
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump({
        "name": "cls", "model": {"source": original},
        "rollout": {"shadow": {"tolerance": {"max_disagreement": share}}}}))
    code, lenient = _compare(original, str(variants["int8"]), *SHAPE, "--samples", "16",
                             cwd=tmp_path)
    assert code == 0
    assert lenient["tolerances"]["default"]["max_disagreement"] == share


@pytest.mark.slow
def test_recorded_inputs_from_a_folder_numeric_outputs(variants: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """A folder of recorded requests, each its own request; numeric comparison asked for in
    mlship.yaml for the one output."""
    rng = np.random.default_rng(3)
    inputs = tmp_path / "requests"
    inputs.mkdir()
    for index in range(3):
        np.savez(inputs / f"r{index}.npz", x=rng.standard_normal((2, 3, 48, 192))
                 .astype(np.float32))
    (inputs / "notes.txt").write_text("not a request")
    output_name = "save_infer_model/scale_0.tmp_1"
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump({
        "name": "cls", "model": {"source": str(variants["original"])},
        "rollout": {"shadow": {"outputs": {output_name: {"compare": "numeric",
                                                         "relative": 0.02}}}}}))
    code, document = _compare(str(variants["original"]), str(variants["fp16"]), "--input",
                              str(inputs), cwd=tmp_path)
    assert code == 0, document
    assert document["requests"] == 3
    assert "3 file(s)" in document["inputs"]["source"]
    output = document["outputs"][output_name]
    assert output["kind"] == "numeric"
    assert 0 < output["max_deviation"] < 0.02


def _iris(path: Path, estimator: str) -> Path:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500) if estimator == "logistic" else \
        DecisionTreeClassifier(max_depth=1, random_state=0)
    model.fit(features, labels)
    onx = to_onnx(model, features[:1].astype(np.float32), target_opset=17,
                  options={id(model): {"zipmap": False}})
    path.write_bytes(onx.SerializeToString())
    return path


def test_labels_and_probabilities_of_two_classifiers(tmp_path: Path) -> None:
    """A logistic regression against a depth-1 tree on the iris measurements: the labels
    (int64, exact) and probabilities (top-1) disagree on the rows the stump gets wrong."""
    from sklearn.datasets import load_iris

    old = _iris(tmp_path / "old.onnx", "logistic")
    new = _iris(tmp_path / "new.onnx", "stump")
    features, _ = load_iris(return_X_y=True)
    requests = tmp_path / "requests"
    requests.mkdir()
    for index in range(0, 150, 10):
        (requests / f"{index:03d}.json").write_text(json.dumps(
            {"X": features[index:index + 10].tolist()}))
    code, document = _compare(str(old), str(new), "--input", str(requests), cwd=tmp_path)
    assert code == ExitCode.DIFFERENCES
    label, probabilities = document["outputs"]["label"], document["outputs"]["probabilities"]
    assert label["kind"] == "exact"
    assert probabilities["kind"] == "top1"
    # A stump tells one class from the two others only: the requests holding rows it puts
    # in the wrong class disagree on both outputs alike.
    assert label["disagreed"] == probabilities["disagreed"] > 0

    code, same = _compare(str(old), str(old), "--input", str(requests), cwd=tmp_path)
    assert code == 0
    assert same["outputs"]["label"]["agreement"] == 1.0


def test_bad_inputs_exit_2(tmp_path: Path) -> None:
    old = _iris(tmp_path / "old.onnx", "logistic")
    (tmp_path / "empty").mkdir()
    for args in (["absent.onnx", str(old)], [str(old), str(old), "--input", "empty"],
                 [str(old), str(old), "--input", "absent.npz"]):
        code, document = _compare(*args, cwd=tmp_path)
        assert code == ExitCode.BAD_INPUT, document
        assert "Traceback" not in document["error"]["message"]
