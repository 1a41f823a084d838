"""`mlship serve`, `mlship predict` and `mlship demo` against the real runtime over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from typer.testing import CliRunner

from mlship.cli import app
from mlship.errors import ExitCode
from mlship.resources import example_model
from mlship.serving.local_server import free_loopback_port

runner = CliRunner()


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "mlship serve exited early"
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server not ready in time")


@pytest.fixture(scope="module")
def served_iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlship serve examples/iris.onnx` as a user runs it, in its own process."""
    port = free_loopback_port()
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHIP_RUNTIME_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlship", "serve", str(example_model()), "--port", str(port),
         "--intra-op-threads", "1"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        log.close()


def _reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(example_model()),
                                           providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, inputs), strict=True))


@pytest.mark.parametrize("binary", [False, True])
def test_predict_from_npy_equals_onnxruntime(served_iris: str, tmp_path: Path,
                                             binary: bool) -> None:
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]],
                    dtype=np.float32)
    np.save(tmp_path / "rows.npy", rows)
    args = ["predict", "--url", served_iris, "--input", str(tmp_path / "rows.npy"), "--json"]
    result = runner.invoke(app, args + (["--binary"] if binary else []))
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema"] == "mlship.predict/v1"
    assert document["model"] == "iris"
    expected = _reference({"input": rows})
    outputs = document["outputs"]
    assert outputs["label"]["data"] == expected["label"].tolist()
    np.testing.assert_allclose(outputs["probabilities"]["data"], expected["probabilities"],
                               rtol=1e-6)
    assert outputs["probabilities"]["shape"] == [3, 3]


def test_predict_generated_from_signature(served_iris: str) -> None:
    result = runner.invoke(app, ["predict", "--url", served_iris, "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "probabilities" in result.stdout
    assert "[4, 3]" in result.stdout


def test_predict_json_mapping_and_human_table(served_iris: str, tmp_path: Path) -> None:
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps({"input": [[5.1, 3.5, 1.4, 0.2]]}))
    result = runner.invoke(app, ["predict", "--url", served_iris, "-i", str(path), "--json"])
    assert result.exit_code == 0, result.output
    expected = _reference({"input": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)})
    assert json.loads(result.stdout)["outputs"]["label"]["data"] == expected["label"].tolist()


def test_predict_unknown_input_is_bad_input(served_iris: str, tmp_path: Path) -> None:
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps({"pixels": [[1, 2, 3, 4]]}))
    result = runner.invoke(app, ["predict", "--url", served_iris, "-i", str(path)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert f"error: {path}: unknown input 'pixels'; the model's inputs are: input" in result.stderr


def test_predict_wrong_shape_reports_the_servers_error(served_iris: str, tmp_path: Path) -> None:
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps({"input": [[1.0, 2.0, 3.0]]}))
    result = runner.invoke(app, ["predict", "--url", served_iris, "-i", str(path), "--json"])
    assert result.exit_code == ExitCode.SERVER
    error = json.loads(result.stdout)["error"]
    assert "HTTP 400" in error["message"]
    assert "input" in error["message"]
    assert "[1, 3]" in error["message"]


def test_predict_without_server_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"
    result = runner.invoke(app, ["predict", "--url", url])
    assert result.exit_code == ExitCode.SERVER
    assert result.stderr.startswith(f"error: cannot reach {url}")
    assert "mlship serve" in result.stderr


def test_serve_broken_model_is_one_line_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(example_model().read_bytes()[:100])
    result = runner.invoke(app, ["serve", str(broken)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert result.stderr.count("error:") == 1
    assert str(broken) in result.stderr


def test_serve_bad_runtime_option_is_bad_input() -> None:
    result = runner.invoke(app, ["serve", str(example_model()), "--provider", "tpu"])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "provider" in result.stderr
    assert "'tpu'" in result.stderr


def test_serve_help_lists_runtime_options() -> None:
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--port", "--provider", "--max-batch-size", "--drain-grace-s"):
        assert option in result.stdout


def test_demo_serves_predicts_and_stops_cleanly() -> None:
    result = runner.invoke(app, ["demo", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema"] == "mlship.demo/v1"
    assert document["server_exit_code"] == 0
    request = json.loads((example_model().parent / "iris-request.json").read_text())
    rows = np.array(request["inputs"][0]["data"], dtype=np.float32)
    expected = _reference({"input": rows})
    assert document["prediction"]["outputs"]["label"]["data"] == expected["label"].tolist()
    assert "4/4 stop" in result.stderr


def test_version_reports_all_three() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("mlship ")
    assert lines[1].startswith("mlship-runtime ")
    assert lines[2] == f"onnxruntime {onnxruntime.__version__}"
