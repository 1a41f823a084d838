"""A real Google Cloud Storage emulator for tests: fake-gcs-server (built from its Go module by
.ci/install-gcs.sh) on a free 127.0.0.1 port, in memory, as a child process.

Used by runtime/tests/conftest.py and tests/conftest.py (one implementation, loaded by path).
The emulator speaks the JSON API (media download, media upload, list) the runtime's client
uses, and takes no credentials: ``STORAGE_EMULATOR_HOST`` switches them off, as in Google's
client libraries. The OAuth2 side (service-account JWTs, the metadata server) is tested
against loopback token endpoints in runtime/tests/test_runtime_gcs.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlship_runtime.manifest import MANIFEST_NAME, Manifest, ManifestFile, model_digest, sha256_file

BINARY = "fake-gcs-server"
INSTALL_HINT = "bash .ci/install-gcs.sh (go install github.com/fsouza/fake-gcs-server)"


def binary() -> str | None:
    explicit = os.environ.get("MLSHIP_FAKE_GCS_SERVER")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    cached = Path.home() / ".cache" / "mlship-tools" / "bin" / BINARY
    return shutil.which(BINARY) or (str(cached) if os.access(cached, os.X_OK) else None)


def gcs_missing() -> str | None:
    """None when an emulator can be started, else why not."""
    return None if binary() else f"{BINARY} not found ({INSTALL_HINT})"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GcsServer:
    endpoint: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes] | None
    log_path: Path
    buckets: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.endpoint.removeprefix("http://")

    def env(self, **extra: str) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint, **extra}

    def _call(self, method: str, path: str, body: bytes | None = None,
              content_type: str = "application/json") -> Any:
        request = urllib.request.Request(f"{self.endpoint}{path}", data=body, method=method,
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read()
        return json.loads(data) if data else None

    def new_bucket(self) -> str:
        name = f"mlship-{uuid.uuid4().hex[:12]}"
        self._call("POST", "/storage/v1/b?project=mlship-test", json.dumps({"name": name})
                   .encode())
        self.buckets.append(name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        from urllib.parse import quote

        self._call("POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name="
                   f"{quote(key, safe='')}", data, "application/octet-stream")

    def get(self, bucket: str, key: str) -> bytes:
        from urllib.parse import quote

        url = f"{self.endpoint}/storage/v1/b/{bucket}/o/{quote(key, safe='')}?alt=media"
        with urllib.request.urlopen(url, timeout=30) as response:
            return bytes(response.read())

    def delete(self, bucket: str, key: str) -> None:
        from urllib.parse import quote

        self._call("DELETE", f"/storage/v1/b/{bucket}/o/{quote(key, safe='')}")

    def upload_model(self, bucket: str, prefix: str, model: Path,
                     external: tuple[str, ...] = ()) -> Manifest:
        """What ``mlship model push`` writes: the files, then the manifest."""
        files = tuple(ManifestFile(rel, (model.parent / rel).stat().st_size,
                                   sha256_file(model.parent / rel))
                      for rel in (model.name, *external))
        for item in files:
            self.put(bucket, prefix + item.path, (model.parent / item.path).read_bytes())
        manifest = Manifest(model.name, files, "test", "2026-01-01T00:00:00Z")
        self.put(bucket, prefix + MANIFEST_NAME, manifest.to_json().encode())
        assert manifest.digest == model_digest(model.name, files)
        return manifest

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def start(log_path: Path) -> GcsServer:
    """fake-gcs-server on a free loopback port; raises RuntimeError with its log when it does
    not come up."""
    executable = binary()
    if executable is None:
        raise RuntimeError(gcs_missing())
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [executable, "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1", "-port",
             str(port), "-public-host", f"127.0.0.1:{port}", "-external-url", endpoint,
             "-log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
    server = GcsServer(endpoint, process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError):
            server._call("GET", "/storage/v1/b?project=mlship-test")
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"fake-gcs-server did not start: {log_path.read_text()[-2000:]}")
