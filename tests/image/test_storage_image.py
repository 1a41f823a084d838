"""The serving image of an ``s3://`` config, built on the real engine: within the size budget,
and run hardened (read-only root, no capabilities) it fetches the pushed model from moto's S3
server on loopback, verifies it, serves it, and refuses a tampered object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml

BASE_IMAGE = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test/base:bookworm")

pytestmark = [pytest.mark.docker, pytest.mark.s3, pytest.mark.slow]


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=900)


def container_env(moto_s3, port: int) -> list[str]:
    env = {"AWS_ACCESS_KEY_ID": moto_s3.access_key, "AWS_SECRET_ACCESS_KEY": moto_s3.secret_key,
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_s3.endpoint,
           "MLSHIP_RUNTIME_PORT": str(port), "MLSHIP_RUNTIME_HOST": "127.0.0.1",
           "MLSHIP_RUNTIME_CACHE_DIR": "/tmp/models"}
    return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]


def test_s3_image_fits_the_budget_fetches_verifies_and_refuses_tampering(moto_s3, iris_model,
                                                                         tmp_path):
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        pytest.fail(f"base image {BASE_IMAGE} missing (.ci/install-docker.sh makes it)")
    bucket = moto_s3.new_bucket()
    pushed = subprocess.run([sys.executable, "-m", "mlship", "model", "push", str(iris_model),
                             f"s3://{bucket}/iris/", "--json"], env=moto_s3.env(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert pushed.returncode == 0, pushed.stderr
    model = json.loads(pushed.stdout)["config"]["model"]
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump({
        "name": "iris", "model": model,
        "image": {"base": BASE_IMAGE, "repository": f"mlship-test/s3-iris-{os.getpid()}"}}))
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("MLSHIP_") or k == "MLSHIP_WHEELHOUSE"}
    build = subprocess.run([sys.executable, "-m", "mlship", "build", "--json"], cwd=tmp_path,
                           env=environ, capture_output=True, text=True, timeout=900, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    doc = json.loads(build.stdout)
    tag = doc["tags"][0]
    try:
        assert doc["added_bytes"] <= doc["size_budget_bytes"] == 110 * 10**6
        assert not any("/models/" in layer["created_by"] for layer in doc["layers"])
        port = _free_port()
        hardened = ["--network", "host", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
                    "--security-opt", "no-new-privileges"]
        cid = docker("run", "-d", *hardened, *container_env(moto_s3, port), tag).stdout.strip()
        try:
            _wait_ready(f"http://127.0.0.1:{port}", cid)
            x = np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 3.0, 5.0, 2.0]], dtype=np.float32)
            answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/iris/infer", timeout=30,
                                json={"inputs": [{"name": "x", "datatype": "FP32",
                                                  "shape": [2, 4], "data": x.ravel().tolist()}]})
            got = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)
            want = ort.InferenceSession(str(iris_model)).run(None, {"x": x})[0]
            np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5)
        finally:
            docker("rm", "-f", cid, check=False)
        moto_s3.client().put_object(Bucket=bucket, Key="iris/iris.onnx", Body=b"tampered")
        tampered = docker("run", *hardened, *container_env(moto_s3, _free_port()), tag,
                          check=False)
        assert tampered.returncode == 11, tampered.stdout + tampered.stderr
        assert f"s3://{bucket}/iris/iris.onnx: sha256 mismatch" in tampered.stderr
    finally:
        docker("image", "rm", "-f", tag, check=False)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, cid: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = docker("inspect", "--format", "{{.State.Running}}", cid, check=False).stdout
        if state.strip() != "true":
            raise AssertionError(docker("logs", cid, check=False).stderr[-3000:])
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready within {timeout}s")
