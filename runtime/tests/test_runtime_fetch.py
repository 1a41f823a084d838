"""Remote models: the runtime downloads from moto's S3 server (or loopback HTTP), verifies every
sha256, caches, and refuses to become ready on any mismatch, with one log line saying why."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import modelzoo
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlship_runtime.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ManifestFile,
    sha256_file,
)

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def external_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bench MLP (5 MB of weights) with its weights in an external-data file."""
    root = tmp_path_factory.mktemp("external")
    inline = modelzoo.mlp(root / "inline.onnx")
    model = onnx.load(str(inline))
    (root / "weights").mkdir()
    onnx.save_model(model, str(root / "mlp.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights/mlp.bin", size_threshold=1024)
    inline.unlink()
    return root / "mlp.onnx"


def infer(url: str, name: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}
    response = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def wait_exit(server, timeout: float = 60) -> tuple[int, bool]:
    """Poll readiness until the process exits: (exit code, whether it was ever ready)."""
    deadline, ever_ready = time.monotonic() + timeout, False
    while server.proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            ever_ready |= httpx.get(server.url + "/v2/health/ready", timeout=1).status_code == 200
        time.sleep(0.02)
    return server.stop(), ever_ready


def error_lines(server) -> list[str]:
    return [line for line in server.log().splitlines() if " ERROR mlship_runtime" in line]


def test_fetches_external_data_verifies_and_matches_onnxruntime(moto_s3, start_server,
                                                                external_model, tmp_path):
    bucket = moto_s3.new_bucket()
    manifest = moto_s3.upload_model(bucket, "mlp/v1/", external_model, ("weights/mlp.bin",))
    cache = tmp_path / "cache"
    server = start_server(f"s3://{bucket}/mlp/v1/mlp.onnx", "--cache-dir", str(cache),
                          env=moto_s3.env())
    server.wait_ready(60)
    x = np.random.default_rng(5).standard_normal((3, 256)).astype(np.float32)
    expected = ort.InferenceSession(str(external_model)).run(None, {"x": x})[0]
    np.testing.assert_allclose(infer(server.url, "mlp", x), expected, rtol=1e-5, atol=1e-5)
    assert "downloaded 2 of 2 file(s)" in server.log()
    entry = cache / manifest.digest  # keyed by the whole model, not the .onnx alone
    assert sha256_file(entry / "weights" / "mlp.bin") == manifest.files[1].sha256
    assert not (cache / ".partial").exists()
    assert server.stop() == 0


def test_second_start_uses_the_cache_without_downloading(moto_s3, start_server, external_model,
                                                        tmp_path):
    bucket = moto_s3.new_bucket()
    manifest = moto_s3.upload_model(bucket, "p/", external_model, ("weights/mlp.bin",))
    cache = tmp_path / "cache"
    first = start_server(f"s3://{bucket}/p/", "--cache-dir", str(cache), "--model-name", "m",
                         env=moto_s3.env())
    first.wait_ready(60)
    assert first.stop() == 0
    # The model's files are gone from S3: only the cache can serve the second start.
    client = moto_s3.client()
    for key in ("p/mlp.onnx", "p/weights/mlp.bin"):
        client.delete_object(Bucket=bucket, Key=key)
    second = start_server(f"s3://{bucket}/p/", "--cache-dir", str(cache), "--model-name", "m",
                          env=moto_s3.env())
    second.wait_ready(60)
    assert "every file already in the cache" in second.log()
    assert second.stop() == 0
    # With the digest pinned, not even the manifest is needed.
    client.delete_object(Bucket=bucket, Key="p/" + MANIFEST_NAME)
    third = start_server(f"s3://{bucket}/p/mlp.onnx", "--cache-dir", str(cache),
                         "--model-sha256", manifest.digest, env=moto_s3.env())
    third.wait_ready(60)
    assert "found in the cache" in third.log()
    assert third.stop() == 0


def test_object_changed_after_push_is_never_ready(moto_s3, start_server, external_model,
                                                  tmp_path):
    bucket = moto_s3.new_bucket()
    manifest = moto_s3.upload_model(bucket, "p/", external_model, ("weights/mlp.bin",))
    weights = bytearray((external_model.parent / "weights/mlp.bin").read_bytes())
    weights[100] ^= 0xFF
    moto_s3.client().put_object(Bucket=bucket, Key="p/weights/mlp.bin", Body=bytes(weights))
    import hashlib

    tampered = hashlib.sha256(weights).hexdigest()
    server = start_server(f"s3://{bucket}/p/mlp.onnx", "--cache-dir", str(tmp_path / "c"),
                          env=moto_s3.env())
    code, ever_ready = wait_exit(server)
    assert (code, ever_ready) == (11, False), server.log()
    [line] = error_lines(server)
    assert f"s3://{bucket}/p/weights/mlp.bin: sha256 mismatch" in line
    assert f"expected {manifest.files[1].sha256}" in line
    assert f"downloaded {tampered}" in line
    assert not list((tmp_path / "c").rglob("*.bin"))  # nothing unverified stays in the cache


@pytest.mark.parametrize("case", ["missing object", "missing bucket", "unknown key id",
                                  "wrong secret", "pinned digest differs", "cache not writable"])
def test_storage_failures_exit_11_with_one_clear_line(moto_s3, start_server, external_model,
                                                       tmp_path, case):
    bucket = moto_s3.new_bucket()
    manifest = moto_s3.upload_model(bucket, "p/", external_model, ("weights/mlp.bin",))
    source, env, args = f"s3://{bucket}/p/mlp.onnx", moto_s3.env(), []
    cache = tmp_path / "c"
    if case == "missing object":
        moto_s3.client().delete_object(Bucket=bucket, Key="p/weights/mlp.bin")
        expected = f"s3://{bucket}/p/weights/mlp.bin: no such object"
    elif case == "missing bucket":
        source = "s3://mlship-no-such-bucket/p/mlp.onnx"
        expected = "s3://mlship-no-such-bucket: the bucket does not exist"
    elif case == "unknown key id":
        env = moto_s3.env(AWS_ACCESS_KEY_ID="AKIAMLSHIPUNKNOWN000")
        expected = "access key AKIAMLSHIPUNKNOWN000 is not known to"
    elif case == "wrong secret":
        env = moto_s3.env(AWS_SECRET_ACCESS_KEY="not-the-secret")
        expected = f"the secret key does not match access key {moto_s3.access_key}"
    elif case == "cache not writable":
        (tmp_path / "file").write_text("a file, not a directory")
        cache = tmp_path / "file" / "cache"
        expected = f"{cache}: cannot write the model cache: Not a directory"
    else:
        args = ["--model-sha256", "0" * 64]
        expected = f"the model's digest is {manifest.digest} but the configuration " \
                   f"pins {'0' * 64}"
    server = start_server(source, "--cache-dir", str(cache), *args, env=env)
    code, ever_ready = wait_exit(server)
    assert (code, ever_ready) == (11, False), server.log()
    [line] = error_lines(server)
    assert expected in line, line
    assert "Traceback" not in server.log()


def test_web_identity_credentials_through_sts(moto_s3, start_server, models, tmp_path):
    """IRSA: a role ARN and a projected token file, exchanged at STS for session keys."""
    iam = moto_s3.client("iam")
    role = iam.create_role(RoleName=f"mlship-irsa-{tmp_path.name[-8:]}",
                           AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17",
                                                                "Statement": []}))["Role"]["Arn"]
    policy = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_role_policy(RoleName=role.rsplit("/", 1)[-1], PolicyName="s3",
                        PolicyDocument=json.dumps(policy))
    bucket = moto_s3.new_bucket()
    moto_s3.upload_model(bucket, "tiny/", models["tiny"])
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln")
    env = moto_s3.env(AWS_ROLE_ARN=role, AWS_WEB_IDENTITY_TOKEN_FILE=str(token))
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    moto_s3.allow_unauthenticated(1)  # the STS call only; the S3 GETs carry session keys
    server = start_server(f"s3://{bucket}/tiny/tiny.onnx", "--cache-dir", str(tmp_path / "c"),
                          env=env)
    server.wait_ready(60)
    assert server.stop() == 0


def test_https_style_source_needs_and_checks_a_digest(start_server, models, tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(models["tiny"], served / "tiny.onnx")
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/tiny.onnx"
    try:
        unpinned = start_server(url, "--cache-dir", str(tmp_path / "c"))
        assert wait_exit(unpinned) == (11, False)
        assert "refusing to serve a model that cannot be verified" in error_lines(unpinned)[0]
        wrong = start_server(url, "--cache-dir", str(tmp_path / "c"), "--model-sha256", "1" * 64)
        assert wait_exit(wrong) == (11, False)
        assert f"expected {'1' * 64}" in error_lines(wrong)[0]
        right = start_server(url, "--cache-dir", str(tmp_path / "c"), "--model-sha256",
                             sha256_file(models["tiny"]))
        right.wait_ready(60)
        assert right.stop() == 0
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(("document", "problem"), [
    ({"format": "other"}, "not an mlship model manifest"),
    ({"format": "mlship.model-manifest/v1", "model": "m.onnx",
      "files": [{"path": "../m.onnx", "size_bytes": 1, "sha256": "a" * 64}]}, "unsafe"),
    ({"format": "mlship.model-manifest/v1", "model": "m.onnx",
      "files": [{"path": "m.onnx", "size_bytes": 1, "sha256": "xyz"}]}, "64 lowercase hex"),
    ({"format": "mlship.model-manifest/v1", "model": "other.onnx",
      "files": [{"path": "m.onnx", "size_bytes": 1, "sha256": "a" * 64}]}, "not among"),
])
def test_manifest_rejects_what_cannot_be_trusted(document, problem):
    with pytest.raises(ManifestError, match=problem):
        Manifest.from_json(json.dumps(document), "s3://b/p/mlship-manifest.json")


def test_manifest_round_trips():
    manifest = Manifest("m.onnx", (ManifestFile("m.onnx", 3, "a" * 64),
                                   ManifestFile("w/x.bin", 5, "b" * 64)), "0.1.0", "now",
                        {"inputs": {"x": "float32[N, 4]"}})
    again = Manifest.from_json(manifest.to_json(), "here")
    assert again == manifest
    assert again.total_bytes == 8
