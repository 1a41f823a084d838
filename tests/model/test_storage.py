"""`mlship model push|pull|ls` and `mlship serve s3://...` against moto's S3 server on loopback,
through boto3 exactly as real S3 is used (tests/conftest.py::moto_s3)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlship_contract import Run, check_failure, check_success
from mlship_contract import mlship as run_mlship
from mlship_testsupport import make_model

pytestmark = pytest.mark.s3


def mlship(moto_s3, *args: str, **env: str) -> Run:
    """The CLI in its own process, pointed at the moto endpoint."""
    environ = {k: v for k, v in moto_s3.env(**env).items() if not k.startswith("MLSHIP_")}
    return run_mlship(*args, env=environ, timeout=300)


@pytest.fixture(scope="module")
def external_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8 MiB-weight model whose weights live in weights/w.bin (multipart-sized)."""
    import onnx

    root = tmp_path_factory.mktemp("push")
    model = onnx.load(str(make_model(root / "inline.onnx", features=512, weights=512 * 4096)))
    (root / "weights").mkdir()
    onnx.save_model(model, str(root / "big.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights/w.bin", size_threshold=1024)
    (root / "inline.onnx").unlink()
    return root / "big.onnx"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_push_ls_pull_round_trip_with_external_data(moto_s3, external_model, tmp_path):
    bucket = moto_s3.new_bucket()
    push = mlship(moto_s3, "model", "push", str(external_model), f"s3://{bucket}/big/v1/",
                  "--json")
    assert push.code == 0, push.stderr
    doc = check_success(("model", "push"), push.stdout)
    assert doc["model_uri"] == f"s3://{bucket}/big/v1/big.onnx"
    assert [f["path"] for f in doc["files"]] == ["big.onnx", "weights/w.bin"]
    assert doc["files"][1]["sha256"] == sha256(external_model.parent / "weights/w.bin")
    assert doc["sha256"] == sha256(external_model)
    # The pin covers the external data: one digest over every file, not the .onnx's alone.
    listing = "".join(f"{f['sha256']}  {f['path']}\n" for f in doc["files"])
    whole = hashlib.sha256(f"mlship.model-digest/v1\nmodel big.onnx\n{listing}".encode())
    assert doc["digest"] == whole.hexdigest() != doc["sha256"]
    assert doc["config"]["model"] == {"source": doc["model_uri"], "sha256": doc["digest"],
                                      "size_bytes": doc["total_bytes"]}
    manifest = json.loads(moto_s3.client().get_object(
        Bucket=bucket, Key="big/v1/mlship-manifest.json")["Body"].read())
    assert manifest["signature"]["inputs"] == {"x": "float32[batch, 512]"}
    assert manifest["mlship_version"]
    with moto_s3.unauthenticated():  # ListObjectsV2 with a '/' prefix: see motoserver.py
        listed = mlship(moto_s3, "model", "ls", f"s3://{bucket}/big/", "--json")
    assert listed.code == 0, listed.stderr
    [entry] = check_success(("model", "ls"), listed.stdout)["models"]
    assert (entry["uri"], entry["sha256"], entry["digest"], entry["files"]) == (
        f"s3://{bucket}/big/v1/", sha256(external_model), doc["digest"], 2)
    pull = mlship(moto_s3, "model", "pull", f"s3://{bucket}/big/v1/", "--out",
                  str(tmp_path / "pulled"), "--json")
    assert pull.code == 0, pull.stderr
    check_success(("model", "pull"), pull.stdout)
    for rel in ("big.onnx", "weights/w.bin"):
        assert sha256(tmp_path / "pulled" / rel) == sha256(external_model.parent / rel)
    assert not list((tmp_path / "pulled").rglob(".*partial"))


def test_pushed_model_served_from_s3_matches_onnxruntime(moto_s3, external_model, tmp_path):
    import onnxruntime as ort

    bucket = moto_s3.new_bucket()
    assert mlship(moto_s3, "model", "push", str(external_model), f"s3://{bucket}/m/").code == 0
    port = _free_port()
    environ = {k: v for k, v in moto_s3.env().items() if not k.startswith("MLSHIP_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlship", "serve", f"s3://{bucket}/m/big.onnx", "--port", str(port),
         "--cache-dir", str(tmp_path / "cache"), "--intra-op-threads", "1"],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, server)
        x = np.random.default_rng(3).standard_normal((2, 512)).astype(np.float32)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 512],
                            "data": x.ravel().tolist()}]}
        answer = httpx.post(f"{url}/v2/models/big/infer", json=body, timeout=30).json()
        got = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(
            answer["outputs"][0]["shape"])
        want = ort.InferenceSession(str(external_model)).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0].decode()
    assert server.returncode == 0, log
    assert "downloaded 2 of 2 file(s)" in log


def test_object_changed_after_push_fails_pull_with_both_digests(moto_s3, external_model,
                                                                tmp_path):
    bucket = moto_s3.new_bucket()
    assert mlship(moto_s3, "model", "push", str(external_model), f"s3://{bucket}/m/").code == 0
    moto_s3.client().put_object(Bucket=bucket, Key="m/weights/w.bin", Body=b"tampered")
    pull = mlship(moto_s3, "model", "pull", f"s3://{bucket}/m/", "--out", str(tmp_path / "o"),
                  "--json")
    assert pull.code == 11, pull.stderr
    error = check_failure(("model", "pull"), pull.stdout, 11)["error"]
    assert error["type"] == "StorageError"
    assert error["message"] == (
        f"s3://{bucket}/m/weights/w.bin: sha256 mismatch: the manifest says "
        f"{sha256(external_model.parent / 'weights/w.bin')}, the downloaded file has "
        f"{hashlib.sha256(b'tampered').hexdigest()}")
    assert not (tmp_path / "o" / "weights" / "w.bin").exists()


@pytest.mark.parametrize("case", ["missing bucket", "missing object", "unknown key id",
                                  "wrong secret", "ls of a missing bucket"])
def test_storage_errors_are_one_line_with_exit_11(moto_s3, iris_model, case):
    bucket = moto_s3.new_bucket()
    args, env = ["model", "push", str(iris_model), f"s3://{bucket}/iris/"], {}
    if case == "missing bucket":
        args[-1] = "s3://mlship-absent-bucket/iris/"
        expected = "error: s3://mlship-absent-bucket: the bucket does not exist at " \
                   f"{moto_s3.endpoint}"
    elif case == "missing object":
        args = ["model", "pull", f"s3://{bucket}/nothing/here/"]
        expected = f"error: s3://{bucket}/nothing/here/mlship-manifest.json: no such object"
    elif case == "ls of a missing bucket":
        args = ["model", "ls", "s3://mlship-absent-bucket"]
        expected = "error: s3://mlship-absent-bucket: the bucket does not exist at " \
                   f"{moto_s3.endpoint}"
    elif case == "unknown key id":
        env = {"AWS_ACCESS_KEY_ID": "AKIAMLSHIPUNKNOWN000"}
        expected = f"error: s3://{bucket}/iris/iris.onnx: access key AKIAMLSHIPUNKNOWN000 is " \
                   f"not known to {moto_s3.endpoint}"
    else:
        env = {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
        expected = f"error: s3://{bucket}/iris/iris.onnx: the secret key does not match " \
                   f"access key {moto_s3.access_key} at {moto_s3.endpoint}"
    run = mlship(moto_s3, *args, "--json", **env)
    assert run.code == 11, run.stderr
    lines = run.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert [lines[i] for i in errors] == [expected], run.stderr  # one line, never wrapped
    assert lines[errors[0] + 1].lstrip().startswith("hint:"), run.stderr
    assert "Traceback" not in run.stderr
    assert check_failure(("model", args[1]), run.stdout, 11)["error"]["type"] == "StorageError"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.communicate()[0].decode())
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not ready within {timeout}s")



@pytest.mark.parametrize("signature", ["not an object", [1, 2], 7],
                         ids=["a string", "a list", "a number"])
def test_a_malformed_manifest_is_one_line_with_exit_2(moto_s3, iris_model, tmp_path,
                                                      signature):
    """A manifest in the bucket is input like any file: one line naming it, exit 2 (it used
    to be an internal error when its signature was not an object)."""
    bucket = moto_s3.new_bucket()
    pushed = mlship(moto_s3, "model", "push", str(iris_model), f"s3://{bucket}/iris/")
    assert pushed.code == 0, pushed.stderr
    key = "iris/mlship-manifest.json"
    client = moto_s3.client()
    manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    manifest["signature"] = signature
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
    run = mlship(moto_s3, "model", "pull", f"s3://{bucket}/iris/", "--out",
                 str(tmp_path / "pulled"), "--json")
    assert run.code == 2, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"error: s3://{bucket}/{key}: not a valid mlship model manifest: "
                               "signature must be an object, not "), run.stderr
    assert "Traceback" not in run.stderr
    assert check_failure(("model", "pull"), run.stdout, 2)["error"]["type"] == "BadInputError"
    assert not (tmp_path / "pulled" / "iris.onnx").exists()
