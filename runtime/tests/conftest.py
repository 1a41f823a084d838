"""Fixtures for the runtime tests: model files, and the real server started as a subprocess.

Servers listen on a free 127.0.0.1 port; session-scoped ones are shared by read-only tests, the
``start_server`` factory gives a test its own (for limits, signals and failures).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import modelzoo
from netprobe import free_port

RUNTIME_ROOT = Path(__file__).resolve().parents[1]
# Never ask an instance metadata service (169.254.169.254, off loopback) for credentials: the
# runtime's chain and boto3 both end there. A test that means it points it at loopback.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# Nor Google's metadata server: the GCS credential chain ends there too. Port 9 on loopback
# refuses the connection at once; a test that means it starts its own fake.
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:9")


class ServerProcess:
    """A ``python -m mlship_runtime`` child; ``stop()`` sends SIGTERM and returns the exit code."""

    def __init__(self, model: Path, *args: str, env: dict[str, str] | None = None,
                 log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "PYTHONPATH": str(RUNTIME_ROOT), **(env or {})}
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlship_runtime", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(self.port), "--intra-op-threads", "1", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def wait_live(self, timeout: float = 20) -> None:
        self._wait("/v2/health/live", timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        self._wait("/v2/health/ready", timeout)

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"{path} not 200 within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self._log.close()
        return code


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "tiny": modelzoo.tiny_classifier(root / "tiny.onnx"),
        "fixed": modelzoo.fixed_shape(root / "fixed.onnx"),
        "mixed": modelzoo.mixed_inputs(root / "mixed.onnx"),
        "alltypes": modelzoo.all_types(root / "alltypes.onnx"),
        "slow": modelzoo.slow(root / "slow.onnx"),
        "sklearn": modelzoo.sklearn_zipmap(root / "sklearn.onnx"),
        "gather": modelzoo.gather(root / "gather.onnx"),
    }


@pytest.fixture(scope="session")
def _session_servers(tmp_path_factory: pytest.TempPathFactory,
                     models: dict[str, Path]) -> Iterator[dict[str, ServerProcess]]:
    logs = tmp_path_factory.mktemp("logs")
    servers = {
        "tiny": ServerProcess(models["tiny"], "--model-version", "3", "--max-body-bytes",
                              str(1024 * 1024), log_path=logs / "tiny.log"),
        "mixed": ServerProcess(models["mixed"], log_path=logs / "mixed.log"),
        "alltypes": ServerProcess(models["alltypes"], log_path=logs / "alltypes.log"),
        "sklearn": ServerProcess(models["sklearn"], log_path=logs / "sklearn.log"),
        "fixed": ServerProcess(models["fixed"], log_path=logs / "fixed.log"),
        "gather": ServerProcess(models["gather"], log_path=logs / "gather.log"),
    }
    try:
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture
def servers(_session_servers: dict[str, ServerProcess]) -> dict[str, ServerProcess]:
    return _session_servers


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(model: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(model, *args, env=env,
                               log_path=tmp_path / f"server{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server on loopback (runtime/tests/motoserver.py); skipped without moto on a
    laptop, failed under CI=true."""
    import motoserver

    missing = motoserver.moto_missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"[s3] required under CI=true: {missing}", pytrace=False)
        pytest.skip(f"[s3] {missing}")
    server = motoserver.start(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory):
    """fake-gcs-server on loopback (runtime/tests/gcsserver.py); skipped without it on a
    laptop, failed under CI=true."""
    import gcsserver

    missing = gcsserver.gcs_missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"[gcs] required under CI=true: {missing}", pytrace=False)
        pytest.skip(f"[gcs] {missing}")
    server = gcsserver.start(tmp_path_factory.mktemp("gcs") / "gcs.log")
    yield server
    server.stop()
