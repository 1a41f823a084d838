"""Several models and pipelines in one process (``--models FILE``), over real HTTP.

The acceptance check: a two-model pipeline answers exactly what running its two models one
after the other with onnxruntime in this process gives, bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from mlship_runtime import codec
from mlship_runtime.metrics import Metrics
from mlship_runtime.pipeline import plan_pipeline
from mlship_runtime.repository import RepositoryError, parse
from mlship_runtime.router import merge_expositions
from mlship_runtime.session import ModelSession
from mlship_runtime.settings import RuntimeSettings
from onnx import TensorProto, helper, numpy_helper

RUNTIME_ROOT = Path(__file__).resolve().parents[1]


# ---- models: A x -> y = x + bias; B y2 -> z = relu(y2 @ w). Names differ, so mapping matters.


def _save(nodes, name, inputs, outputs, initializers, path):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _tensor(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def build_models(root: Path) -> dict[str, Path]:
    bias = np.random.default_rng(11).standard_normal((1, 4)).astype(np.float32)
    weights = np.random.default_rng(12).standard_normal((4, 3)).astype(np.float32)
    return {
        "a": _save([helper.make_node("Add", ["x", "bias"], ["y"])], "a",
                   [_tensor("x", TensorProto.FLOAT, ["N", 4])],
                   [_tensor("y", TensorProto.FLOAT, ["N", 4])],
                   [numpy_helper.from_array(bias, "bias")], root / "a.onnx"),
        "b": _save([helper.make_node("MatMul", ["y2", "w"], ["h"]),
                    helper.make_node("Relu", ["h"], ["z"])], "b",
                   [_tensor("y2", TensorProto.FLOAT, ["N", 4])],
                   [_tensor("z", TensorProto.FLOAT, ["N", 3])],
                   [numpy_helper.from_array(weights, "w")], root / "b.onnx"),
        # y = 2x for any width: feeding it to B passes the load-time check (-1 fits 4), so a
        # request of the wrong width fails inside the pipeline, at step 2.
        "loose": _save([helper.make_node("Add", ["x", "x"], ["y"])], "loose",
                       [_tensor("x", TensorProto.FLOAT, ["N", "K"])],
                       [_tensor("y", TensorProto.FLOAT, ["N", "K"])], [], root / "loose.onnx"),
        # Its input is named like A's output: a pipeline A -> same feeds it without a mapping.
        "same": _save([helper.make_node("Neg", ["y"], ["negated"])], "same",
                      [_tensor("y", TensorProto.FLOAT, ["N", 4])],
                      [_tensor("negated", TensorProto.FLOAT, ["N", 4])], [],
                      root / "same.onnx"),
        "ints": _save([helper.make_node("Identity", ["ids"], ["out"])], "ints",
                      [_tensor("ids", TensorProto.INT64, ["N", 4])],
                      [_tensor("out", TensorProto.INT64, ["N", 4])], [], root / "ints.onnx"),
    }


def by_hand(paths, x):
    """A then B with onnxruntime in this process: the pipeline's expected answer."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the server runs them
    a = ort.InferenceSession(str(paths["a"]), options, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(paths["b"]), options, providers=["CPUExecutionProvider"])
    (y,) = a.run(["y"], {"x": x})
    (z,) = b.run(["z"], {"y2": y})
    return y, z


REPOSITORY = {
    "models": [
        {"name": "a", "path": "a.onnx", "version": "1"},
        {"name": "b", "path": "b.onnx", "execution": "thread", "max_batch_size": 8},
        {"name": "loose", "path": "loose.onnx"},
    ],
    "pipelines": [
        {"name": "ab", "steps": [{"model": "a"}, {"model": "b", "inputs": {"y2": "a.y"}}],
         "outputs": {"score": "b.z", "shifted": "a.y"}},
        {"name": "loose-b",
         "steps": [{"model": "loose"}, {"model": "b", "inputs": {"y2": "loose.y"}}]},
    ],
}


class RepositoryServer:
    """``python -m mlship_runtime --models FILE`` on a free loopback port."""

    def __init__(self, config: Path | str, log_path: Path, *args: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHIP_RUNTIME_")}
        env["PYTHONPATH"] = str(RUNTIME_ROOT)
        # cwd is not the file's directory: model paths are relative to the file.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlship_runtime", "--models", str(config), "--host",
             "127.0.0.1", "--port", str(self.port), "--intra-op-threads", "1", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=RUNTIME_ROOT)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"not ready within {timeout}s:\n{self.log()}")

    def wait_exit_never_ready(self, timeout: float = 60) -> int:
        """Poll readiness until the process exits; fail if it was ever ready."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                status = httpx.get(self.url + "/v2/health/ready", timeout=1).status_code
                assert status == 503, f"a bad repository file became ready:\n{self.log()}"
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        return self.stop()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self._log.close()
        return code


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(paths, tmp_path_factory):
    config = paths["a"].parent / "models.json"
    config.write_text(json.dumps(REPOSITORY))
    process = RepositoryServer(config, tmp_path_factory.mktemp("logs") / "repo.log")
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0, process.log()


def infer(server, model, inputs, *, binary=False, outputs=None):
    body, headers = codec.encode_request(inputs, binary=binary, binary_outputs=binary,
                                         outputs=outputs, request_id="r-1")
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", content=body,
                          headers=headers, timeout=20)
    assert response.status_code == 200, response.text
    return codec.decode_response(response.content, response.headers)


def series(server, name, model):
    """The value of one sample of /metrics, e.g. series(s, "mlship_batch_size_sum", "b")."""
    pattern = re.compile(rf'^{name}\{{model="{re.escape(model)}"\}} (\S+)$', re.MULTILINE)
    match = pattern.search(httpx.get(server.url + "/metrics").text)
    assert match, f"{name} for {model} not in /metrics"
    return float(match.group(1))


# ---- the acceptance check -------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_pipeline_returns_what_chaining_the_two_models_by_hand_returns(server, paths, binary):
    x = np.random.default_rng(7).standard_normal((5, 4)).astype(np.float32)
    y, z = by_hand(paths, x)
    got = infer(server, "ab", {"x": x}, binary=binary)
    assert list(got) == ["score", "shifted"]
    assert got["score"].dtype == np.float32
    np.testing.assert_array_equal(got["score"], z)  # bit for bit, not approximately
    np.testing.assert_array_equal(got["shifted"], y)
    assert np.any(z > 0)
    assert np.any(z == 0)  # Relu ran on B's MatMul of A's output, not on something else


def test_each_step_runs_through_its_models_batcher(server, paths):
    before = {m: series(server, "mlship_batch_size_sum", m) for m in ("a", "b")}
    x = np.ones((3, 4), dtype=np.float32)
    infer(server, "ab", {"x": x})
    assert {m: series(server, "mlship_batch_size_sum", m) - before[m] for m in ("a", "b")} == \
        {"a": 3, "b": 3}
    # Only the pipeline's output from step 1 is asked for: step 2 (model b) does not run.
    got = infer(server, "ab", {"x": x}, outputs=["shifted"])
    assert list(got) == ["shifted"]
    np.testing.assert_array_equal(got["shifted"], by_hand(paths, x)[0])
    assert series(server, "mlship_batch_size_sum", "b") - before["b"] == 3


def test_concurrent_pipeline_and_direct_requests_get_their_own_rows(server, paths):
    rng = np.random.default_rng(8)
    batches = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(24)]

    def one(i):
        if i % 2:  # direct to b, sharing b's batcher with the pipeline's step 2
            return infer(server, "b", {"y2": by_hand(paths, batches[i])[0]})["z"]
        return infer(server, "ab", {"x": batches[i]}, binary=True)["score"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(len(batches))))
    for x, got in zip(batches, results, strict=True):
        np.testing.assert_allclose(got, by_hand(paths, x)[1], rtol=1e-6)


# ---- several models, each with its own endpoints -------------------------------------------


def test_each_model_has_its_own_metadata_infer_and_readiness(server, paths):
    a = httpx.get(server.url + "/v2/models/a").json()
    b = httpx.get(server.url + "/v2/models/b").json()
    assert (a["name"], a["versions"], a["inputs"]) == (
        "a", ["1"], [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}])
    assert (b["name"], b["versions"], b["outputs"]) == (
        "b", [], [{"name": "z", "datatype": "FP32", "shape": [-1, 3]}])
    # Per-model settings from the file: b runs in a thread, a (tiny) on the event loop.
    assert (a["parameters"]["execution"], b["parameters"]["execution"]) == ("loop", "thread")
    assert a["parameters"]["intra_op_threads"] == 1  # the process option, for every model
    x = np.random.default_rng(9).standard_normal((2, 4)).astype(np.float32)
    y, z = by_hand(paths, x)
    np.testing.assert_array_equal(infer(server, "a", {"x": x})["y"], y)
    np.testing.assert_array_equal(infer(server, "b", {"y2": y})["z"], z)
    for path in ("/v2/models/a/ready", "/v2/models/a/versions/1/ready", "/v2/models/b/ready",
                 "/v2/models/ab/ready", "/v2/models/loose-b/ready"):
        assert httpx.get(server.url + path).status_code == 200, path
    response = httpx.get(server.url + "/v2/models/a/versions/2")
    assert response.status_code == 404
    assert "unknown version '2'" in response.json()["error"]


def test_pipeline_metadata_comes_from_its_first_step_and_declared_outputs(server):
    meta = httpx.get(server.url + "/v2/models/ab").json()
    assert meta["name"] == "ab"
    assert meta["platform"] == "ensemble"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1, 3]},
                               {"name": "shifted", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["parameters"]["steps"] == [{"name": "a", "model": "a"},
                                           {"name": "b", "model": "b"}]
    loose = httpx.get(server.url + "/v2/models/loose-b").json()  # outputs: the last step's
    assert loose["outputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, 3]}]


def test_metrics_have_every_model_and_one_header_per_family(server):
    infer(server, "a", {"x": np.zeros((1, 4), dtype=np.float32)})
    text = httpx.get(server.url + "/metrics").text
    headers = [line for line in text.splitlines() if line.startswith("#")]
    assert len(headers) == len(set(headers))
    # A family's samples follow its own header, all in one group (the text format's rule).
    family, seen = None, set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            family = line.split()[2]
            assert family not in seen
            seen.add(family)
        elif line and not line.startswith("#"):
            assert line.startswith(family), (family, line)
    for model in ("a", "b", "loose", "ab", "loose-b"):
        assert f'mlship_ready{{model="{model}"}} 1' in text
    assert re.search(r'mlship_requests_total\{model="a",endpoint="infer",code="200"\} \d+', text)
    assert 'mlship_model_info{model="b",provider="cpu",version=""} 1' in text
    # A pipeline's own series count requests; its runs are counted under its steps' models.
    assert 'mlship_batch_size_count{model="ab"}' not in text
    assert 'mlship_batch_size_count{model="b"}' in text


def test_process_wide_endpoints(server, paths):
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/health"):
        assert httpx.get(server.url + path).status_code == 200, path
    assert httpx.get(server.url + "/v2").json()["name"] == "mlship-runtime"
    index = httpx.post(server.url + "/v2/repository/index", json={}).json()
    assert index == [{"name": "a", "state": "READY", "version": "1"},
                     {"name": "b", "state": "READY"}, {"name": "loose", "state": "READY"},
                     {"name": "ab", "state": "READY"}, {"name": "loose-b", "state": "READY"}]
    x = [[0.5, -1.0, 2.0, 0.25]]
    response = httpx.post(server.url + "/predict", json={"instances": x})
    assert response.status_code == 400
    assert "/predict?model=NAME" in response.json()["error"]
    y, z = by_hand(paths, np.array(x, dtype=np.float32))
    got = httpx.post(server.url + "/predict?model=a", json={"instances": x}).json()
    np.testing.assert_array_equal(np.array(got["predictions"], dtype=np.float32), y)
    got = httpx.post(server.url + "/predict?model=ab", json={"instances": x}).json()
    np.testing.assert_array_equal(np.array([got["predictions"][0]["score"]], np.float32), z)


def test_the_bare_address_of_several_models_answers_with_the_server_metadata(server):
    response = httpx.get(server.url + "/")
    assert response.status_code == 200
    assert response.json() == httpx.get(server.url + "/v2").json()


@pytest.mark.parametrize(("method", "path", "status", "fragment"), [
    ("GET", "/v2/models/zzz", 404, "unknown model 'zzz'; this server serves ['a', 'ab', 'b'"),
    ("GET", "/v2/models/zzz/ready", 404, "unknown model 'zzz'"),
    ("POST", "/v2/models/zzz/infer", 404, "unknown model 'zzz'"),
    ("POST", "/predict?model=zzz", 404, "unknown model 'zzz'"),
    ("GET", "/v2/nothing", 404, "no route for GET /v2/nothing"),
    ("POST", "/v2/health/ready", 405, "use GET"),
    ("GET", "/v2/repository/index", 405, "use POST"),
    ("GET", "/v2/models/ab/infer", 405, "use POST"),
])
def test_routing_errors_are_json(server, method, path, status, fragment):
    response = httpx.request(method, server.url + path, json={})
    assert response.status_code == status
    assert fragment in response.json()["error"]


def test_pipeline_errors_name_the_step_and_keep_4xx(server):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [1] * 5}]}
    response = httpx.post(server.url + "/v2/models/loose-b/infer", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == ("pipeline 'loose-b' step 2 'b' (model 'b'): input "
                                        "'y2': expected shape [-1, 4], got [1, 5]")
    body = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 4], "data": [1] * 4}]}
    response = httpx.post(server.url + "/v2/models/ab/infer", json=body)
    assert response.status_code == 400
    assert "input 'x': expected datatype FP32, got INT64" in response.json()["error"]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}],
            "outputs": [{"name": "z"}]}
    response = httpx.post(server.url + "/v2/models/ab/infer", json=body)
    assert response.status_code == 400
    assert "unknown output 'z'; the pipeline's outputs are ['score', 'shifted']" in \
        response.json()["error"]


@pytest.mark.parametrize("model", ["b", "ab"])
def test_tritonclient_in_a_multi_model_process(server, paths, model):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(model)
        meta = client.get_model_metadata(model)
        (entry,) = meta["inputs"]
        x = np.random.default_rng(10).standard_normal((3, 4)).astype(np.float32)
        item = triton.InferInput(entry["name"], list(x.shape), "FP32")
        item.set_data_from_numpy(x, binary_data=True)
        wanted = meta["outputs"][0]["name"]
        result = client.infer(model, [item], outputs=[
            triton.InferRequestedOutput(wanted, binary_data=True)])
        expected = by_hand(paths, x)[1] if model == "ab" else _run_b(paths, x)
        np.testing.assert_array_equal(result.as_numpy(wanted), expected)
    finally:
        client.close()


def _run_b(paths, y2):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    b = ort.InferenceSession(str(paths["b"]), options, providers=["CPUExecutionProvider"])
    return b.run(["z"], {"y2": y2})[0]


def test_a_file_with_one_model_keeps_predict_without_a_name(paths, tmp_path):
    config = tmp_path / "one.json"
    config.write_text(json.dumps({"models": [{"path": str(paths["a"])}]}))
    process = RepositoryServer(config, tmp_path / "one.log")
    try:
        process.wait_ready()
        x = [[0.5, -1.0, 2.0, 0.25]]
        response = httpx.post(process.url + "/predict", json={"instances": x})
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(np.array(response.json()["predictions"], np.float32),
                                      by_hand(paths, np.array(x, np.float32))[0])
    finally:
        assert process.stop() == 0


# ---- bad repository files: one clear line, a documented exit code, never ready -------------


def _pipeline(second):
    return {"models": [{"name": "a", "path": "a.onnx"}, {"name": "b", "path": "b.onnx"},
                       {"name": "ints", "path": "ints.onnx"}],
            "pipelines": [{"name": "p", "steps": [{"model": "a"}, second]}]}


BAD_FILES = {
    "unknown model in a pipeline": (
        _pipeline({"model": "nope"}), 2,
        ['pipelines[0].steps[1].model: unknown model "nope"; the models are '
         "['a', 'b', 'ints']"]),
    "dtype mismatch": (
        _pipeline({"model": "ints", "inputs": {"ids": "a.y"}}), 2,
        ["pipelines[0].steps[1].inputs.ids: 'a.y' is FP32 [-1, 4] but input 'ids' of model "
         "'ints' needs INT64 [-1, 4]"]),
    "unknown tensor": (
        _pipeline({"model": "b", "inputs": {"y2": "a.nope"}}), 2,
        ["pipelines[0].steps[1].inputs.y2: step 'a' (model 'a') has no output 'nope'; its "
         "outputs are ['y']"]),
    "unknown input of the step's model": (
        _pipeline({"model": "b", "inputs": {"y3": "a.y"}}), 2,
        ["pipelines[0].steps[1].inputs.y3: model 'b' has no input 'y3'"]),
    "input not fed": (
        _pipeline({"model": "b"}), 2,
        ["pipelines[0].steps[1].inputs: input 'y2' of model 'b' is not fed"]),
    "missing model file": (
        {"models": [{"name": "a", "path": "a.onnx"}, {"path": "missing.onnx"}]}, 3,
        ["cannot serve model", "missing.onnx"]),
    "bad per-model value": (
        {"models": [{"path": "a.onnx"}, {"path": "b.onnx", "max_batch_size": 0}]}, 2,
        ["models[1].max_batch_size: expected >= 1, got 0"]),
    "unknown key": (
        {"models": [{"path": "a.onnx", "batch_size": 4}]}, 2,
        ["models[0]: unknown key 'batch_size'; allowed: baseline, batching, execution,"]),
    "not JSON": ("{models: [", 2, ["not valid JSON"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_repository_file_exits_with_one_clear_line_never_ready(paths, tmp_path, case):
    document, code, fragments = BAD_FILES[case]
    config = paths["a"].parent / f"bad-{tmp_path.name}.json"
    config.write_text(document if isinstance(document, str) else json.dumps(document))
    process = RepositoryServer(config, tmp_path / "bad.log")
    assert process.wait_exit_never_ready() == code, process.log()
    errors = [line for line in process.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1, process.log()
    if code == 2:
        assert f"invalid model repository {config}: " in errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize(("name", "fragment"), [
    ("models.yaml", "the runtime reads the repository file as JSON only"),
    ("absent.json", "cannot read the repository file: No such file or directory"),
])
def test_yaml_or_missing_repository_file_exits_2(paths, tmp_path, name, fragment):
    config = tmp_path / name
    if name.endswith(".yaml"):
        config.write_text("models:\n  - path: a.onnx\n")
    process = RepositoryServer(config, tmp_path / "bad.log")
    assert process.wait_exit_never_ready() == 2
    (error,) = [line for line in process.log().splitlines() if " ERROR " in line]
    assert f"invalid model repository {config}: {fragment}" in error


def test_the_document_itself_can_be_passed_inline_as_rendered_images_do(paths, tmp_path):
    """MLSHIP_RUNTIME_MODELS='{...}' (what `mlship render` writes) serves like the file."""
    document = {"models": [{"name": "a", "path": str(paths["a"])},
                           {"name": "b", "path": str(paths["b"])}],
                "pipelines": REPOSITORY["pipelines"][:1]}
    process = RepositoryServer(json.dumps(document), tmp_path / "inline.log")
    try:
        process.wait_ready()
        x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
        y, z = by_hand(paths, x)
        outputs = infer(process, "ab", {"x": x})
        np.testing.assert_array_equal(outputs["score"], z)
        np.testing.assert_array_equal(outputs["shifted"], y)
    finally:
        assert process.stop() == 0, process.log()


def test_a_broken_inline_document_exits_2_naming_the_variable(tmp_path):
    process = RepositoryServer('{"models": [', tmp_path / "inline.log")
    assert process.wait_exit_never_ready() == 2
    (error,) = [line for line in process.log().splitlines() if " ERROR " in line]
    assert "invalid model repository MLSHIP_RUNTIME_MODELS: not valid JSON" in error


def test_model_and_models_together_are_invalid_settings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mlship_runtime", "--model", "m.onnx", "--models", "r.json"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(RUNTIME_ROOT)})
    assert result.returncode == 2
    assert "models: give either model (one .onnx file) or models" in result.stderr


# ---- the file format and the pipeline check, in this process -------------------------------


def test_parse_resolves_paths_and_layers_settings(tmp_path):
    defaults = RuntimeSettings(models="r.json", intra_op_threads=2, batching=False)
    repository = parse({"models": [
        {"path": "sub/first.onnx", "version": 3, "batching": True},
        {"name": "other", "path": "/abs/second.onnx", "intra_op_threads": 1,
         "baseline": "b.json"},
        {"path": "s3://bucket/key/third.onnx"}]}, "r.json", tmp_path, defaults)
    first, other, third = repository.models
    assert first.name == "first"
    assert first.settings.model == str(tmp_path / "sub" / "first.onnx")
    assert (first.settings.model_version, first.settings.batching) == ("3", True)
    assert (first.settings.intra_op_threads, first.settings.models) == (2, None)
    assert (other.name, other.settings.model, other.settings.intra_op_threads) == (
        "other", "/abs/second.onnx", 1)
    assert other.settings.baseline == str(tmp_path / "b.json")
    assert other.settings.batching is False
    assert (third.name, third.settings.model) == ("third", "s3://bucket/key/third.onnx")


@pytest.mark.parametrize(("document", "message"), [
    ([], "r.json: the document: expected an object, got []"),
    ({"models": []}, "r.json: models: expected a non-empty list of models, got []"),
    ({"models": [{"path": "a.onnx"}], "extra": 1},
     "r.json: the document: unknown key 'extra'; allowed: models, pipelines"),
    ({"models": [{"name": "a"}]}, "r.json: models[0].path: required"),
    ({"models": [{"path": "a.onnx", "batching": "yes"}]},
     'r.json: models[0].batching: expected bool, got "yes"'),
    ({"models": [{"path": "a.onnx", "max_queue_size": True}]},
     "r.json: models[0].max_queue_size: expected int, got true"),
    ({"models": [{"path": "a.onnx", "sha256": "abc"}]},
     "r.json: models[0].sha256: expected 64 hex digits, got 'abc'"),
    ({"models": [{"path": "a.onnx"}, {"path": "x/a.onnx"}]},
     "r.json: models[1].name: 'a' is already the name of models[0]"),
    ({"models": [{"path": "my model.onnx"}]},
     "r.json: models[0].path: the model name 'my model' must be 1-63 of [A-Za-z0-9._-]"),
    ({"models": [{"path": "a.onnx"}], "pipelines": [{"name": "a", "steps": [{"model": "a"}]}]},
     "r.json: pipelines[0].name: 'a' is already the name of models[0]"),
    ({"models": [{"path": "a.onnx"}], "pipelines": [
        {"name": "p", "steps": [{"model": "a"}]},
        {"name": "q", "steps": [{"model": "p"}]}]},
     'r.json: pipelines[1].steps[0].model: unknown model "p" (a step runs a model; '
     "pipelines do not nest)"),
    ({"models": [{"path": "a.onnx"}], "pipelines": [
        {"name": "p", "steps": [{"model": "a", "inputs": {"x": "request.x"}}]}]},
     "r.json: pipelines[0].steps[0].inputs: the first step takes the request's inputs"),
    ({"models": [{"path": "a.onnx"}], "pipelines": [
        {"name": "p", "steps": [{"model": "a"}, {"model": "a", "name": "request"}]}]},
     "r.json: pipelines[0].steps[1].name: expected a step name unique in the pipeline"),
    ({"models": [{"path": "a.onnx"}], "pipelines": [
        {"name": "p", "steps": [{"model": "a"}, {"model": "a"}]}]},
     "r.json: pipelines[0].steps[1].name: expected a step name unique"),
    ({"models": [{"path": "a.onnx"}], "pipelines": [
        {"name": "p", "steps": [{"model": "a"}, {"model": "a", "name": "a2",
                                                 "inputs": {"x": "later.y"}}]}]},
     "r.json: pipelines[0].steps[1].inputs.x: expected STEP.TENSOR where STEP is one of "
     "'request', 'a'"),
    ({"models": [{"path": "a.onnx"}], "pipelines": [
        {"name": "p", "steps": [{"model": "a"}], "outputs": {}}]},
     "r.json: pipelines[0].outputs: expected at least one OUTPUT: STEP.TENSOR"),
])
def test_parse_errors_name_the_key_path(tmp_path, document, message):
    with pytest.raises(RepositoryError) as caught:
        parse(document, "r.json", tmp_path, RuntimeSettings(models="r.json"))
    assert str(caught.value).startswith(message), str(caught.value)


def test_per_model_process_options_are_refused_with_a_file(tmp_path):
    with pytest.raises(RepositoryError, match="model_version is set as a process option"):
        parse({"models": [{"path": "a.onnx"}]}, "r.json", tmp_path,
              RuntimeSettings(models="r.json", model_version="2"))


def test_plan_maps_by_name_and_skips_steps_nobody_needs(paths):
    document = {"models": [{"path": "a.onnx"}, {"path": "same.onnx"}, {"name": "v1.enc",
                                                                         "path": "a.onnx"}],
                "pipelines": [{"name": "p", "steps": [
                    {"model": "v1.enc"}, {"model": "same", "inputs": {"y": "v1.enc.y"}},
                    {"model": "a", "name": "again", "inputs": {"x": "request.x"}}],
                    "outputs": {"n": "same.negated", "again": "again.y"}}]}
    repository = parse(document, "r.json", paths["a"].parent,
                       RuntimeSettings(models="r.json", intra_op_threads=1))
    sessions = {entry.name: ModelSession(entry.settings) for entry in repository.models}
    (spec,) = repository.pipelines
    plan = plan_pipeline(spec, sessions, "r.json")
    assert [step.feeds for step in plan.steps] == [
        (("x", (-1, "x")),), (("y", (0, "y")),), (("x", (-1, "x")),)]
    assert plan.needs(["again"]) == [[], [], ["y"]]
    assert plan.needs(["n"]) == [["y"], ["negated"], []]
    implicit = parse({"models": document["models"], "pipelines": [
        {"name": "q", "steps": [{"model": "a"}, {"model": "same"}]}]}, "r.json",
        paths["a"].parent, RuntimeSettings(models="r.json"))
    plan = plan_pipeline(implicit.pipelines[0], sessions, "r.json")
    assert plan.steps[1].feeds == (("y", (0, "y")),)  # same name as a's output: no mapping
    assert plan.metadata["outputs"] == [{"name": "negated", "datatype": "FP32",
                                         "shape": [-1, 4]}]


def test_merge_expositions_keeps_one_header_per_family():
    first, second = Metrics("a"), Metrics("b")
    first.request("infer", 200, 0.001)
    second.request("infer", 200, 0.002)
    merged = merge_expositions([(first.render(), frozenset()),
                                (second.render(), frozenset({"mlship_batch_size"}))]).decode()
    lines = merged.splitlines()
    assert lines.count("# TYPE mlship_requests_total counter") == 1
    start = lines.index("# TYPE mlship_requests_total counter")
    assert lines[start + 1:start + 3] == [
        'mlship_requests_total{model="a",endpoint="infer",code="200"} 1',
        'mlship_requests_total{model="b",endpoint="infer",code="200"} 1']
    assert 'mlship_batch_size_count{model="a"} 0' in lines
    assert 'mlship_batch_size_count{model="b"} 0' not in lines
