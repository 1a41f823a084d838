"""A runtime process on a free loopback port, for `mlship demo` (and the smoke checks).

The server runs as a child process exactly as it runs in the image (``python -m
mlship_runtime``), so what the demo shows — readiness after warm-up, a clean drain on
SIGTERM — is the behaviour a cluster gets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

STOP_TIMEOUT_S = 30


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """``with LocalServer(model) as server: ... server.stop()`` — never outlives the block."""

    def __init__(self, model: Path, *extra_args: str) -> None:
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("MLSHIP_RUNTIME_")}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mlship_runtime", "--model", str(model),
             "--host", "127.0.0.1", "--port", str(self.port), *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.pid = self._process.pid

    def stop(self) -> int:
        """SIGTERM, then wait for the drain; the process's exit code."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()

    def stderr_tail(self, lines: int = 5) -> str:
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._log.close()
