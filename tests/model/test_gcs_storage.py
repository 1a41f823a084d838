"""`mlship model push|pull|ls` and `mlship serve gs://...` against fake-gcs-server on loopback
(tests/conftest.py::fake_gcs), through the same JSON API calls real Cloud Storage answers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from mlship_contract import Run, check_failure, check_success, clean_env
from mlship_contract import mlship as run_mlship
from mlship_testsupport import make_model

pytestmark = pytest.mark.gcs


def mlship(fake_gcs, *args: str, **env: str) -> Run:
    return run_mlship(*args, env=fake_gcs.env(**env), timeout=300)


@pytest.fixture(scope="module")
def gcs_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 MiB-weight model whose weights live in weights/w.bin."""
    import onnx

    root = tmp_path_factory.mktemp("gcs-push")
    model = onnx.load(str(make_model(root / "inline.onnx", features=256, weights=256 * 2048)))
    (root / "weights").mkdir()
    onnx.save_model(model, str(root / "big.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights/w.bin", size_threshold=1024)
    (root / "inline.onnx").unlink()
    return root / "big.onnx"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_push_ls_pull_round_trip(fake_gcs, gcs_model, tmp_path):
    bucket = fake_gcs.new_bucket()
    push = mlship(fake_gcs, "model", "push", str(gcs_model), f"gs://{bucket}/big/v1/", "--json")
    assert push.code == 0, push.stderr
    doc = check_success(("model", "push"), push.stdout)
    assert doc["model_uri"] == f"gs://{bucket}/big/v1/big.onnx"
    assert doc["manifest_uri"] == f"gs://{bucket}/big/v1/mlship-manifest.json"
    assert [f["path"] for f in doc["files"]] == ["big.onnx", "weights/w.bin"]
    assert doc["config"]["model"] == {"source": doc["model_uri"], "sha256": doc["digest"],
                                      "size_bytes": doc["total_bytes"]}
    manifest = json.loads(fake_gcs.get(bucket, "big/v1/mlship-manifest.json"))
    assert manifest["files"][1]["sha256"] == sha256(gcs_model.parent / "weights/w.bin")
    assert fake_gcs.get(bucket, "big/v1/weights/w.bin") == \
        (gcs_model.parent / "weights/w.bin").read_bytes()
    listed = mlship(fake_gcs, "model", "ls", f"gs://{bucket}/big/", "--json")
    assert listed.code == 0, listed.stderr
    [entry] = check_success(("model", "ls"), listed.stdout)["models"]
    assert (entry["uri"], entry["digest"], entry["files"]) == (
        f"gs://{bucket}/big/v1/", doc["digest"], 2)
    pull = mlship(fake_gcs, "model", "pull", f"gs://{bucket}/big/v1/", "--out",
                  str(tmp_path / "pulled"), "--json")
    assert pull.code == 0, pull.stderr
    check_success(("model", "pull"), pull.stdout)
    for rel in ("big.onnx", "weights/w.bin"):
        assert sha256(tmp_path / "pulled" / rel) == sha256(gcs_model.parent / rel)


def test_pushed_model_served_with_its_digest_and_a_tampered_one_refused(fake_gcs, gcs_model,
                                                                        tmp_path):
    import onnxruntime as ort

    bucket = fake_gcs.new_bucket()
    push = mlship(fake_gcs, "model", "push", str(gcs_model), f"gs://{bucket}/m/", "--json")
    assert push.code == 0, push.stderr
    digest = json.loads(push.stdout)["digest"]

    def serve(cache: Path) -> tuple[subprocess.Popen[bytes], str]:
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "mlship", "serve", f"gs://{bucket}/m/big.onnx", "--port",
             str(port), "--cache-dir", str(cache), "--intra-op-threads", "1",
             "--model-sha256", digest],
            env=clean_env(fake_gcs.env()),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return process, f"http://127.0.0.1:{port}"

    server, url = serve(tmp_path / "cache")
    try:
        _wait_ready(url, server)
        x = np.random.default_rng(3).standard_normal((2, 256)).astype(np.float32)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 256],
                            "data": x.ravel().tolist()}]}
        answer = httpx.post(f"{url}/v2/models/big/infer", json=body, timeout=30).json()
        got = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(
            answer["outputs"][0]["shape"])
        want = ort.InferenceSession(str(gcs_model)).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0].decode()
    assert server.returncode == 0, log
    assert "downloaded 2 of 2 file(s)" in log

    weights = bytearray((gcs_model.parent / "weights/w.bin").read_bytes())
    weights[10] ^= 0x01
    fake_gcs.put(bucket, "m/weights/w.bin", bytes(weights))
    refused, _ = serve(tmp_path / "fresh-cache")
    log = refused.communicate(timeout=120)[0].decode()
    assert refused.returncode == 11, log
    assert f"gs://{bucket}/m/weights/w.bin: sha256 mismatch: expected " \
           f"{sha256(gcs_model.parent / 'weights/w.bin')}" in log
    pull = mlship(fake_gcs, "model", "pull", f"gs://{bucket}/m/", "--out", str(tmp_path / "o"),
                  "--json")
    assert pull.code == 11, pull.stderr
    assert check_failure(("model", "pull"), pull.stdout, 11)["error"]["message"] == (
        f"gs://{bucket}/m/weights/w.bin: sha256 mismatch: the manifest says "
        f"{sha256(gcs_model.parent / 'weights/w.bin')}, the downloaded file has "
        f"{hashlib.sha256(weights).hexdigest()}")
    assert not (tmp_path / "o" / "weights" / "w.bin").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.communicate()[0].decode())
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"not ready within {timeout}s")


@pytest.mark.parametrize("case", ["missing bucket", "missing manifest", "region flag",
                                  "no credentials"])
def test_gcs_errors_are_one_line_with_a_hint(fake_gcs, iris_model, tmp_path, case):
    bucket = fake_gcs.new_bucket()
    args, env, code = ["model", "push", str(iris_model), f"gs://{bucket}/iris/"], {}, 11
    if case == "missing bucket":
        args[-1] = "gs://mlship-absent-bucket/iris/"
        expected = "error: gs://mlship-absent-bucket: the bucket does not exist at " \
                   f"{fake_gcs.endpoint}"
    elif case == "missing manifest":
        args = ["model", "pull", f"gs://{bucket}/nothing/"]
        expected = f"error: gs://{bucket}/nothing/mlship-manifest.json: no such object"
    elif case == "region flag":
        args += ["--region", "eu-west-1"]
        expected, code = f"error: --region: applies to s3:// only, not gs://{bucket}/iris/", 2
    else:  # no emulator: the real chain, with nothing to find and a refusing metadata host
        env = {"STORAGE_EMULATOR_HOST": "", "HOME": str(tmp_path),
               "GOOGLE_APPLICATION_CREDENTIALS": "", "GCE_METADATA_HOST": "127.0.0.1:9",
               "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}
        expected = "error: no Google credentials found (no GOOGLE_APPLICATION_CREDENTIALS"
    run = mlship(fake_gcs, *args, "--json", **env)
    assert run.code == code, run.stderr
    lines = run.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    assert errors[0].startswith(expected), run.stderr
    assert any(line.lstrip().startswith("hint:") for line in lines), run.stderr
    assert "Traceback" not in run.stderr


def test_serve_from_mlship_yaml_reaches_the_configured_emulator(fake_gcs, gcs_model, tmp_path):
    """`mlship serve -c` with model.source gs://… and model.gcs.emulator: the config, not this
    environment, says where the emulator is."""
    bucket = fake_gcs.new_bucket()
    push = mlship(fake_gcs, "model", "push", str(gcs_model), f"gs://{bucket}/c/", "--json")
    assert push.code == 0, push.stderr
    pushed = json.loads(push.stdout)
    config = tmp_path / "mlship.yaml"
    config.write_text(yaml.safe_dump({"name": "big", "model": {
        **pushed["config"]["model"], "gcs": {"endpoint_url": fake_gcs.endpoint,
                                             "emulator": True}}}))
    port = _free_port()
    environ = {key: value for key, value in clean_env().items()
               if key != "STORAGE_EMULATOR_HOST"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlship", "serve", "-c", str(config), "--port", str(port),
         "--cache-dir", str(tmp_path / "cache"), "--intra-op-threads", "1"],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", server)
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0].decode()
    assert server.returncode == 0, log
    assert "downloaded 2 of 2 file(s)" in log
