"""The rendered Dockerfile builds offline from the documented context, and the image behaves:
non-root, healthy through its own HEALTHCHECK, stops promptly on SIGTERM as PID 1, and a
model-only change reuses every layer but the last.

The runtime here is a stand-in wheel (``mlship_runtime`` answering the health endpoints),
so the test checks the Dockerfile, not the runtime.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlship.config.load import validate_config
from mlship.render.bundle import render, write_bundle

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test/base:bookworm")
FAKE_MAIN = '''
import os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path in ("/v2/health/ready", "/v2/health/live") and os.path.exists(
            os.environ["MLSHIP_RUNTIME_MODEL"])
        self.send_response(200 if ok else 503)
        self.end_headers()

server = HTTPServer(("0.0.0.0", int(os.environ["MLSHIP_RUNTIME_PORT"])), Health)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server.serve_forever()
'''


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=600)


def _fake_runtime_wheel(wheels: Path) -> Path:
    files = {
        "mlship_runtime/__init__.py": '__version__ = "0.0.0"\n',
        "mlship_runtime/__main__.py": FAKE_MAIN,
        "mlship_runtime/healthcheck.py":
            (REPO / "runtime" / "mlship_runtime" / "healthcheck.py").read_text(),
        "mlship_runtime-0.0.0.dist-info/METADATA":
            "Metadata-Version: 2.1\nName: mlship-runtime\nVersion: 0.0.0\n",
        "mlship_runtime-0.0.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: mlship-tests\n"
                                                 "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(data)}")
            archive.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data)
        record.append("mlship_runtime-0.0.0.dist-info/RECORD,,")
        archive.writestr(zipfile.ZipInfo("mlship_runtime-0.0.0.dist-info/RECORD",
                                         (2020, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = wheels / "mlship_runtime-0.0.0-py3-none-any.whl"
    wheel.write_bytes(buffer.getvalue())
    return wheel


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory, iris_model: Path, iris_signature) -> Path:
    if _docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        message = f"base image {BASE_IMAGE} missing (.ci/install-docker.sh makes it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("context")
    config = validate_config({"name": "iris", "model": {"source": "iris.onnx"},
                              "image": {"base": BASE_IMAGE}})
    write_bundle(render(config, iris_signature), root)
    wheel = _fake_runtime_wheel(root / "wheels")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (root / "requirements.lock").write_text(f"mlship-runtime==0.0.0 --hash=sha256:{digest}\n")
    (root / "model").mkdir()
    (root / "model" / "iris.onnx").write_bytes(iris_model.read_bytes())
    (root / "unrelated.txt").write_text("must not reach the build context\n")
    return root


def _build(context: Path, tag: str) -> str:
    result = _docker("build", "--network=none", "-t", tag, "--build-arg", "REVISION=abc123",
                     "--build-arg", "CREATED=2026-01-01T00:00:00Z", str(context), check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


def _dangling() -> set[str]:
    return set(_docker("images", "-q", "--filter", "dangling=true").stdout.split())


@pytest.fixture(scope="module")
def image(context: Path) -> Iterator[str]:
    tag = f"mlship-test/render:{os.getpid()}"
    before = _dangling()
    _build(context, tag)
    yield tag
    _docker("image", "rm", "-f", tag, check=False)
    # The classic builder leaves the builder stage behind as an untagged image.
    for leftover in _dangling() - before:
        _docker("image", "rm", leftover, check=False)


def test_image_metadata(image: str, iris_signature) -> None:
    fmt = ("{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Healthcheck.Test}}|"
           "{{index .Config.Labels \"org.opencontainers.image.revision\"}}|"
           "{{index .Config.Labels \"dev.mlship.model.sha256\"}}")
    user, entrypoint, health, revision, sha = _docker(
        "image", "inspect", "--format", fmt, image).stdout.strip().split("|")
    assert user == "10001:10001"
    assert entrypoint == '["/opt/venv/bin/python","-m","mlship_runtime"]'
    assert health == '["CMD","/opt/venv/bin/python","-m","mlship_runtime.healthcheck"]'
    assert revision == "abc123"
    assert sha == iris_signature.sha256


def test_model_is_the_last_layer_and_no_tools_ship(image: str) -> None:
    history = _docker("history", "--no-trunc", "--format", "{{.Size}}|{{.CreatedBy}}",
                      image).stdout.splitlines()
    with_content = [line for line in history if not line.startswith("0B|")]
    # BuildKit writes "COPY model/ /models/", the classic builder "COPY dir:<hash> in /models/"
    assert "COPY" in with_content[0]
    assert with_content[0].rstrip().endswith("/models/")
    probe = ("import os, shutil, sys; "
             "sys.exit(bool(os.path.exists('/opt/venv/bin/pip') or shutil.which('curl') "
             "or shutil.which('gcc') or os.path.exists('/unrelated.txt')))")
    result = _docker("run", "--rm", "--network=none", "--entrypoint", "/opt/venv/bin/python",
                     image, "-c", probe, check=False)
    assert result.returncode == 0, result.stderr


def test_container_gets_healthy_and_stops_on_sigterm(image: str) -> None:
    name = f"mlship-test-{os.getpid()}"
    _docker("run", "-d", "--name", name, "--network=none", "--read-only",
            "--tmpfs", "/tmp", image)
    try:
        status = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = _docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout
            if status.strip() == "healthy":
                break
            time.sleep(1)
        assert status.strip() == "healthy"
        _docker("stop", "--time", "20", name)
        # 0, not 137: the runtime (PID 1) handled SIGTERM and drained; a SIGKILL after the
        # 20 s grace would show as 137.
        exit_code = _docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert exit_code == "0"
    finally:
        _docker("rm", "-f", name, check=False)


def test_model_only_change_reuses_dependency_layers(context: Path, image: str) -> None:
    (context / "model" / "iris.onnx").write_bytes(
        (context / "model" / "iris.onnx").read_bytes() + b"\n")
    tag = f"{image}-model2"
    try:
        log = _build(context, tag)
    finally:
        _docker("image", "rm", "-f", tag, check=False)
    lines = log.splitlines()
    venv = next(i for i, line in enumerate(lines) if "python3 -m venv" in line)
    if lines[venv].startswith("#"):  # BuildKit: "#9 [builder 4/4] RUN ..." then "#9 CACHED"
        step = lines[venv].split()[0]
        assert f"{step} CACHED" in lines, log[-2000:]
    else:  # classic builder: "Step 5/20 : RUN ..." then " ---> Using cache"
        assert "Using cache" in lines[venv + 1], log[-2000:]
