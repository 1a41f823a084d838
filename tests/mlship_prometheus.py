"""A real Prometheus on loopback for the canary-analysis tests (marker ``prometheus``).

Debian's ``prometheus`` binary (.ci/install-prometheus.sh) runs with its own config and TSDB in
a temporary directory, on a free 127.0.0.1 port, scraping every second whatever targets the
test lists (file-based service discovery, so targets can come and go without a restart).

    with PrometheusServer(tmp_path) as prometheus:
        prometheus.set_targets(["127.0.0.1:8081", "127.0.0.1:8082"])
        prometheus.wait_up("127.0.0.1:8081")
        prometheus.url            # http://127.0.0.1:<port>

``extra_scrape_configs`` adds jobs, e.g. Kubernetes pod discovery of the real test node's pods
(tests/rollout/test_real_canary.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

SCRAPE_INTERVAL = "1s"


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """``web_config`` is Prometheus' own --web.config.file (tls_server_config, basic_auth_users);
    with TLS the URL is https and ``ready`` (an ssl context and headers) lets start() probe it.
    ``extra_scrape_configs`` are added to the file-discovered ``mlship`` job."""

    def __init__(self, workdir: Path, *, web_config: dict[str, Any] | None = None,
                 ready: tuple[Any, dict[str, str]] | None = None,
                 extra_scrape_configs: list[dict[str, Any]] | None = None) -> None:
        self.workdir = workdir
        self.extra_scrape_configs = extra_scrape_configs or []
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.web_config = web_config
        self.ready = ready
        scheme = "https" if web_config and "tls_server_config" in web_config else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.targets_file = workdir / "targets.json"
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> PrometheusServer:
        binary = prometheus_binary()
        assert binary, "prometheus not installed (bash .ci/install-prometheus.sh)"
        self.set_targets([])
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                       "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [{"job_name": "mlship", "file_sd_configs": [
                {"files": [str(self.targets_file)], "refresh_interval": "1s"}]},
                *self.extra_scrape_configs],
        }))
        extra = []
        if self.web_config is not None:
            web = self.workdir / "web.yml"
            web.write_text(json.dumps(self.web_config))
            extra.append(f"--web.config.file={web}")
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.workdir / 'data'}", "--storage.tsdb.retention.time=1h",
             "--log.level=warn", *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log_tail()}"
            context, headers = self.ready or (None, {})
            try:
                request = urllib.request.Request(f"{self.url}/-/ready", headers=headers)
                with urllib.request.urlopen(request, timeout=1, context=context) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready in {timeout}s:\n{self.log_tail()}")

    def set_targets(self, targets: list[str]) -> None:
        """Replace the scraped targets (host:port on loopback); atomic for the file watcher."""
        staging = self.targets_file.with_suffix(".tmp")
        staging.write_text(json.dumps([{"targets": targets, "labels": {}}]))
        staging.replace(self.targets_file)

    def query(self, promql: str) -> list[dict[str, Any]]:
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(address, timeout=5) as response:
            return json.loads(response.read())["data"]["result"]

    def wait_up(self, target: str, timeout: float = 30) -> None:
        """Until ``target`` has been scraped successfully."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.query(f'up{{instance="{target}"}} == 1'):
                return
            time.sleep(0.2)
        raise AssertionError(f"prometheus never scraped {target}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
