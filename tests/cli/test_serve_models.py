"""`mlship serve --models FILE`: a YAML repository file, read by the CLI, served by the runtime."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from mlship.cli import app
from mlship.errors import ExitCode
from mlship.serving.local_server import free_loopback_port

runner = CliRunner()
YAML = """\
models:
  - {name: shift, path: nets/a.onnx, version: 2}
  - {name: score, path: nets/b.onnx}
pipelines:
  - name: both
    steps:
      - model: shift
      - model: score
        inputs: {y2: shift.y}
"""


def _save(nodes, inputs, outputs, initializers, path: Path) -> Path:
    model = helper.make_model(helper.make_graph(nodes, path.stem, inputs, outputs, initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    bias = np.random.default_rng(1).standard_normal((1, 4)).astype(np.float32)
    weights = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    _save([helper.make_node("Add", ["x", "bias"], ["y"])],
          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
          [numpy_helper.from_array(bias, "bias")], tmp_path / "nets" / "a.onnx")
    _save([helper.make_node("MatMul", ["y2", "w"], ["z"])],
          [helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 4])],
          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
          [numpy_helper.from_array(weights, "w")], tmp_path / "nets" / "b.onnx")
    path = tmp_path / "models.yaml"
    path.write_text(YAML)
    return path


def _by_hand(root: Path, x: np.ndarray) -> np.ndarray:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    a, b = (onnxruntime.InferenceSession(str(root / "nets" / name), options,
                                         providers=["CPUExecutionProvider"])
            for name in ("a.onnx", "b.onnx"))
    return b.run(["z"], {"y2": a.run(["y"], {"x": x})[0]})[0]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@contextlib.contextmanager
def _serving(tmp_path: Path, *args: str) -> Iterator[str]:
    """``mlship serve ARGS --port P`` run from elsewhere (paths are relative to their file),
    until ready; its base URL. SIGTERM afterwards must end it with exit code 0."""
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHIP_RUNTIME_")}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "mlship", "serve", *args, "--port",
                                    str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=Path(__file__).parent)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                assert process.poll() is None, log_path.read_text()
                try:
                    if _get(url + "/v2/health/ready") == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


def _pipeline_output(url: str, pipeline: str, x: np.ndarray) -> dict:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()
    request = urllib.request.Request(f"{url}/v2/models/{pipeline}/infer", data=body)
    with urllib.request.urlopen(request, timeout=10) as response:
        (out,) = json.loads(response.read())["outputs"]
    return out


def test_serve_models_yaml_serves_every_model_and_the_pipeline(repository: Path,
                                                               tmp_path: Path) -> None:
    with _serving(tmp_path, "--models", str(repository), "--intra-op-threads", "1") as url:
        x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
        out = _pipeline_output(url, "both", x)
        assert out["name"] == "z"
        np.testing.assert_array_equal(np.array(out["data"], np.float32).reshape(out["shape"]),
                                      _by_hand(repository.parent, x))
        assert _get(url + "/v2/models/shift/versions/2/ready") == 200
        assert _get(url + "/v2/models/score/ready") == 200


@pytest.mark.parametrize(("change", "message"), [
    (lambda text: text.replace("model: score", "model: nope"),
     "models.yaml: pipelines[0].steps[1].model: unknown model \"nope\"; the models are "
     "['score', 'shift']"),
    (lambda text: text.replace("version: 2", "versoin: 2"),
     "models.yaml: models[0]: unknown key 'versoin'; allowed: baseline, batching"),
    (lambda text: text + "  - [\n",
     "models.yaml: line 11, column 1: invalid YAML: expected the node content"),
    (lambda text: text + "models: []\n", "invalid YAML: duplicate key 'models' (first on "
                                          "line "),
])
def test_serve_models_bad_file_exits_2_naming_the_key(repository: Path, change,
                                                     message: str) -> None:
    repository.write_text(change(YAML))
    result = runner.invoke(app, ["serve", "--models", str(repository)])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert message in " ".join(result.output.split())


def test_serve_models_inspects_every_model_file_first(repository: Path) -> None:
    (repository.parent / "nets" / "b.onnx").write_bytes(b"not onnx")
    result = runner.invoke(app, ["serve", "--models", str(repository)])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "b.onnx" in result.output


def test_serve_without_model_or_models_says_so() -> None:
    result = runner.invoke(app, ["serve"], env={"MLSHIP_RUNTIME_MODELS": ""})
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "--models FILE" in result.output


def test_serve_config_serves_what_the_pod_would(repository: Path, tmp_path: Path) -> None:
    """`mlship serve -c mlship.yaml`: models:, pipelines: and runtime settings of the config,
    on loopback; an option given on the command line wins over the config."""
    import yaml

    config = tmp_path / "mlship.yaml"
    config.write_text(yaml.safe_dump({
        "name": "shift", "model": {"source": "nets/a.onnx", "version": "2"},
        "models": [{"name": "score", "source": "nets/b.onnx"}],
        "pipelines": [{"name": "both", "steps": [
            {"model": "shift"}, {"model": "score", "inputs": {"y2": "shift.y"}}]}],
        "runtime": {"port": 1025, "intra_op_threads": 1}}))  # the port is overridden
    with _serving(tmp_path, "-c", str(config)) as url:
        x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
        out = _pipeline_output(url, "both", x)
        np.testing.assert_array_equal(np.array(out["data"], np.float32).reshape(out["shape"]),
                                      _by_hand(repository.parent, x))
        assert _get(url + "/v2/models/shift/versions/2/ready") == 200
        for name in ("shift", "score"):  # the config's threads, not every CPU (the default)
            with urllib.request.urlopen(f"{url}/v2/models/{name}", timeout=10) as response:
                assert json.loads(response.read())["parameters"]["intra_op_threads"] == 1


def test_serve_config_refuses_a_volume_model(tmp_path: Path) -> None:
    config = tmp_path / "mlship.yaml"
    config.write_text("name: iris\nmodel:\n  source: pvc://models/iris.onnx\n")
    result = runner.invoke(app, ["serve", "-c", str(config)])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "pvc://models/iris.onnx: a volume claim exists only in the cluster" in result.stderr
