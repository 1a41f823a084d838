"""Network helpers of the runtime tests, importable by name (``conftest`` is ambiguous when the
whole suite runs: tests/ has one too): a free loopback port, and a kubelet-like live probe.
"""

from __future__ import annotations

import http.client
import socket
import threading


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveProbe:
    """``/v2/health/live`` probed from a thread every ``interval`` s while an attack runs, each
    time on a new connection with a 1 s timeout, as a kubelet probes with timeoutSeconds: 1;
    ``check()`` asserts that no probe failed."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.interval = interval
        self.count = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LiveProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = http.client.HTTPConnection(*self.address, timeout=1)
                conn.request("GET", "/v2/health/live")
                status = conn.getresponse().status
                conn.close()
                if status != 200:
                    self.failures.append(f"status {status}")
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.count += 1
            self._stop.wait(self.interval)

    def check(self) -> None:
        assert self.count > 0, "no probe ran"
        assert not self.failures, f"live probes failed: {self.failures[:5]}"
