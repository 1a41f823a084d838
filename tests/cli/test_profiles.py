"""Input profiles through the CLI: what users see when shapes matter.

Models with dynamic spatial dims and image-size metadata (as Ultralytics exports them), an
all-zero output for optimize, a scikit-learn export for optimize's defaults, a float64 .npy
for an FP32 input, and a busy port.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from mlship_contract import clean_env, mlship
from onnx import TensorProto, helper, numpy_helper

from mlship.resources import example_model
from mlship.serving.client import RuntimeClient
from mlship.serving.local_server import free_loopback_port


def detector(path: Path) -> Path:
    """images [batch, 3, height, width] -> a 3x3 conv with stride 2 -> Concat with a resized
    copy of itself: runs only when height and width are even and >= 2, and records
    ``imgsz: [64, 96]`` in its metadata as Ultralytics exports do."""
    weight = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w")
    nodes = [helper.make_node("Conv", ["images", "w"], ["a"], name="conv", strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["images"], ["pooled"], name="pool",
                              kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Concat", ["pooled", "pooled"], ["b"], name="twice", axis=1),
             helper.make_node("Sub", ["a", "a"], ["zero"], name="zero"),
             helper.make_node("Concat", ["a", "b", "zero"], ["y"], name="all", axis=1)]
    graph = helper.make_graph(
        nodes, "detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                       ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 14, "h2", "w2"]),
         helper.make_tensor_value_info("zero", TensorProto.FLOAT, ["batch", 4, "h2", "w2"])],
        initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {"imgsz": "[64, 96]", "stride": "32",
                                   "names": "x" * 10_000})
    onnx.save(model, str(path))
    return path


def test_inspect_runs_the_model_at_the_profile_its_metadata_records(tmp_path: Path) -> None:
    model = detector(tmp_path / "det.onnx")
    run = mlship("inspect", str(model), "--json")
    assert run.code == 0, run
    document = run.json()
    assert document["profile"] == {"shapes": {"images": [1, 3, 64, 96]}, "given": False,
                                   "source": "derived: image size [64, 96] from the model's "
                                             "metadata"}
    assert document["memory"]["measured"] is True
    assert len(document["metadata"]["names"]) == 10_000  # whole in --json
    text = mlship("inspect", str(model))
    assert text.code == 0, text
    assert "images=1x3x64x96 (derived: image size [64, 96]" in " ".join(text.stdout.split())
    assert "(10,000 characters; --json has all)" in text.stdout  # truncated in the table
    assert max(len(line) for line in text.stdout.splitlines()) < 300


def test_a_given_profile_is_used_and_one_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    model = detector(tmp_path / "det.onnx")
    given = mlship("inspect", str(model), "--shape", "images=1x3x32x48", "--batch", "2",
                   "--json")
    assert given.code == 0, given
    assert given.json()["profile"]["shapes"] == {"images": [1, 3, 32, 48]}
    assert given.json()["memory"]["batch"] == 2
    wrong = mlship("inspect", str(model), "--shape", "images=1x4x32x48")
    assert wrong.code == 2, wrong
    assert wrong.stderr.splitlines()[0] == (
        "error: --shape: input 'images' is FP32 [-1, 3, -1, -1], so [1, 4, 32, 48] does not "
        "fit it")
    odd = mlship("inspect", str(model), "--shape", "images=1x3x33x47")  # fits, does not run
    assert odd.code == 3, odd
    assert "the model does not run at the given profile images=[1x3x33x47]" in odd.stderr


def test_init_writes_the_profile_and_sizes_memory_from_the_run(tmp_path: Path) -> None:
    model = detector(tmp_path / "det.onnx")
    run = mlship("init", "det.onnx", cwd=tmp_path)
    assert run.code == 0, run
    text = (tmp_path / "mlship.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["model"]["profile"] == {"shapes": {"images": [1, 3, 64, 96]}, "sample": None}
    assert "Found by init: derived: image size [64, 96] from the model's metadata." in text
    assert "(measured running the model at batch 8)" in text
    render = mlship("render", cwd=tmp_path)
    assert render.code == 0, render
    configmap = yaml.safe_load((tmp_path / "mlship-out" / "k8s" / "configmap.yaml").read_text())
    assert configmap["data"]["MLSHIP_RUNTIME_INPUT_SHAPES"] == "images=1x3x64x96"
    assert model.is_file()


def test_render_refuses_a_profile_that_does_not_fit_the_model(tmp_path: Path) -> None:
    detector(tmp_path / "det.onnx")
    (tmp_path / "mlship.yaml").write_text(
        "name: det\nmodel:\n  source: det.onnx\n  profile:\n    shapes: {image: [1, 3, 8, 8]}\n")
    run = mlship("render", cwd=tmp_path)
    assert run.code == 2, run
    assert run.stderr.splitlines()[0] == (
        "error: mlship.yaml: model.profile.shapes: unknown input 'image'; the model's inputs "
        "are ['images']")


def test_serve_is_ready_at_the_derived_profile_and_predict_generates_there(
        tmp_path: Path) -> None:
    model = detector(tmp_path / "det.onnx")
    port = free_loopback_port()
    process = subprocess.Popen([sys.executable, "-m", "mlship", "serve", str(model), "--port",
                                str(port)], env=clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        client = RuntimeClient(f"http://127.0.0.1:{port}", timeout_s=30)
        assert client.wait_ready(timeout_s=60)
        metadata = client.metadata("det")
        assert metadata["parameters"]["input_profile"]["shapes"] == {"images": [1, 3, 64, 96]}
        predicted = mlship("predict", "--url", client.base_url, "--json")
        assert predicted.code == 0, predicted
        assert predicted.json()["outputs"]["y"]["shape"] == [1, 14, 32, 48]
        overridden = mlship("predict", "--url", client.base_url, "--shape",
                            "images=1x3x16x16", "--json")
        assert overridden.json()["outputs"]["y"]["shape"] == [1, 14, 8, 8]
    finally:
        process.send_signal(signal.SIGTERM)
        log = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, log
    assert "ready in" in log
    assert "images=[1x3x64x96] (derived: image size [64, 96]" in log


def test_predict_converts_a_float64_npy_for_an_fp32_input_and_says_so(tmp_path: Path) -> None:
    rows = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float64)
    np.save(tmp_path / "rows.npy", rows)
    port = free_loopback_port()
    process = subprocess.Popen([sys.executable, "-m", "mlship", "serve", str(example_model()),
                                "--port", str(port)], env=clean_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert RuntimeClient(f"http://127.0.0.1:{port}").wait_ready(timeout_s=60)
        run = mlship("predict", "--url", f"http://127.0.0.1:{port}", "--input",
                     str(tmp_path / "rows.npy"), "--json")
        np.save(tmp_path / "words.npy", np.array([["a", "b", "c", "d"]]))
        words = mlship("predict", "--url", f"http://127.0.0.1:{port}", "--input",
                       str(tmp_path / "words.npy"))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert run.code == 0, run
    assert "input 'input' converted from float64 to float32 (FP32)" in run.stderr
    assert run.json()["outputs"]["label"]["data"] == [0]
    assert words.code == 2, words  # strings are not numbers of another width: refused
    assert "converting would change the values' kind" in words.stderr


def test_serve_on_a_busy_port_exits_1_with_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "mlship", "serve", str(example_model()),
                                 "--port", str(port)], env=clean_env(), capture_output=True,
                                text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(f"cannot listen on 127.0.0.1:{port}: Address already in use; pass "
                             "another --port")
    assert "terminate called" not in result.stderr


def test_optimize_on_a_scikit_learn_export_skips_what_does_not_apply(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    features, labels = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(features, labels)
    path = tmp_path / "forest.onnx"
    path.write_bytes(to_onnx(forest, features[:1].astype(np.float32),
                             options={"zipmap": False}).SerializeToString())
    run = mlship("optimize", str(path), "--out", str(tmp_path / "out"), "--runs", "1",
                 "--json")
    assert run.code == 0, run
    statuses = {v["name"]: v["status"] for v in run.json()["variants"]}
    assert statuses["int8"] == "skipped", statuses
    assert "int8: skipped, does not apply: " in run.stderr
    asked = mlship("optimize", str(path), "--out", str(tmp_path / "out2"), "--runs", "1",
                   "--variants", "int8")
    assert asked.code == 3, asked  # asked for by name: a failure, as before


@pytest.mark.parametrize("threshold", ["10%", "0.001"])
def test_optimize_judges_an_all_zero_output_by_the_absolute_tolerance(
        tmp_path: Path, threshold: str) -> None:
    model = detector(tmp_path / "det.onnx")
    run = mlship("optimize", str(model), "--out", str(tmp_path / "out"), "--runs", "1",
                 "--variants", "optimized", "--max-deviation", threshold, "--json")
    assert run.code == 0, run
    document = run.json()
    assert document["inputs"]["source"].startswith("generated at images=[1x3x64x96]")
    assert {v["status"] for v in document["variants"]} == {"written"}
    assert "inf%" not in run.stderr
    assert json.loads(run.stdout)  # no Infinity in the JSON
