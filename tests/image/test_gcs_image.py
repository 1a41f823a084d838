"""The serving image of a ``gs://`` config, built on the real engine: within the size budget
(the GCS client and its RS256 signer are stdlib code, no new dependency), and run hardened
(read-only root, no capabilities) it fetches the pushed model from fake-gcs-server on
loopback, verifies it, serves it, and refuses a tampered object."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from test_storage_image import BASE_IMAGE, _free_port, _wait_ready, docker

pytestmark = [pytest.mark.docker, pytest.mark.gcs, pytest.mark.slow]


def container_env(fake_gcs, port: int) -> list[str]:
    env = {"STORAGE_EMULATOR_HOST": fake_gcs.endpoint, "GCE_METADATA_HOST": "127.0.0.1:9",
           "MLSHIP_RUNTIME_PORT": str(port), "MLSHIP_RUNTIME_HOST": "127.0.0.1",
           "MLSHIP_RUNTIME_CACHE_DIR": "/tmp/models"}
    return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]


def test_gcs_image_fits_the_budget_fetches_verifies_and_refuses_tampering(fake_gcs, iris_model,
                                                                          tmp_path):
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        pytest.fail(f"base image {BASE_IMAGE} missing (.ci/install-docker.sh makes it)")
    bucket = fake_gcs.new_bucket()
    pushed = subprocess.run([sys.executable, "-m", "mlship", "model", "push", str(iris_model),
                             f"gs://{bucket}/iris/", "--json"], env={**os.environ,
                                                                     **fake_gcs.env()},
                            capture_output=True, text=True, timeout=120, check=False)
    assert pushed.returncode == 0, pushed.stderr
    model = json.loads(pushed.stdout)["config"]["model"]
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump({
        "name": "iris", "model": model,
        "image": {"base": BASE_IMAGE, "repository": f"mlship-test/gcs-iris-{os.getpid()}"}}))
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("MLSHIP_") or k == "MLSHIP_WHEELHOUSE"}
    build = subprocess.run([sys.executable, "-m", "mlship", "build", "--json"], cwd=tmp_path,
                           env=environ, capture_output=True, text=True, timeout=900, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    doc = json.loads(build.stdout)
    tag = doc["tags"][0]
    try:
        print(f"gs:// image: {doc['added_bytes'] / 1e6:.1f} MB added over the base")
        assert doc["added_bytes"] <= doc["size_budget_bytes"] == 110 * 10**6
        port = _free_port()
        hardened = ["--network", "host", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
                    "--security-opt", "no-new-privileges"]
        cid = docker("run", "-d", *hardened, *container_env(fake_gcs, port), tag).stdout.strip()
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
        fake_gcs.put(bucket, "iris/iris.onnx", b"tampered")
        tampered = docker("run", *hardened, *container_env(fake_gcs, _free_port()), tag,
                          check=False)
        assert tampered.returncode == 11, tampered.stdout + tampered.stderr
        assert f"gs://{bucket}/iris/iris.onnx: sha256 mismatch" in tampered.stderr
    finally:
        docker("image", "rm", "-f", tag, check=False)
