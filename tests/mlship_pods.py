"""Helpers of the tests that run real pods on the test node (marker ``pods``): the app's
project and image, `mlship deploy` as a process, requests through a Service's ClusterIP (what
kube-proxy serves from this host), and bounded load.

Importable as ``mlship_pods`` (tests/ is on sys.path, see mlship_testsupport).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import yaml
from controlplane import ControlPlane
from mlship_contract import Run, check_success, mlship

REGISTRY = "127.0.0.1:5000"
REPOSITORY = f"mlship-test/pods-{os.getpid()}"
BASE_IMAGE = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test/base:bookworm")
X = np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 3.0, 5.0, 2.0], [7.7, 2.6, 6.9, 2.3]],
             dtype=np.float32)


# ---- helpers ----------------------------------------------------------------------------------


def write_project(directory: Path, model_file: Path, namespace: str, **sections: Any) -> Path:
    """mlship.yaml for app ``iris`` in ``namespace``, its image in the loopback registry."""
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "name": "iris", "model": {"source": str(model_file), "version": "1"},
        "namespace": {"name": namespace, "create": False},
        "image": {"registry": REGISTRY, "repository": REPOSITORY, "base": BASE_IMAGE},
        # The test node has 2 cores: keep each pod's share small.
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                      "limits": {"cpu": "1", "memory": "512Mi"}},
        "runtime": {"intra_op_threads": 1},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = directory / "mlship.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def build_and_push(config: Path, env: dict[str, str] | None = None) -> str:
    """`mlship build --push`; the pushed reference (tag) deploy will use."""
    built = mlship("build", "--push", "--config", str(config), "--json", env=env, timeout=900)
    assert built.code == 0, built
    document = check_success(("build",), built.stdout)
    assert document["digest"], document
    return str(document["tags"][0])


def deploy(config: Path, cp: ControlPlane, *extra: str, env: dict[str, str] | None = None) -> Run:
    return mlship("deploy", "--config", str(config), "--kubeconfig", str(cp.kubeconfig),
                  "--timeout", "240", *extra, env=env)


def service_url(cp: ControlPlane, namespace: str, name: str = "iris") -> str:
    service = cp.get(f"/api/v1/namespaces/{namespace}/services/{name}") or {}
    return f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"


def infer(url: str, x: np.ndarray, client: httpx.Client | None = None) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}
    if client is not None:
        return client.post(f"{url}/v2/models/iris/infer", json=body)
    return httpx.post(f"{url}/v2/models/iris/infer", json=body, timeout=30)


def wait_serving(url: str, timeout: float = 30) -> None:
    """Until the Service answers: a rollout is complete when its pods are available, and
    kube-proxy learns of their endpoints a moment later (its rules answer 'refused' until)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def assert_answers_like_onnxruntime(url: str, model: Path) -> None:
    want = ort.InferenceSession(str(model)).run(None, {"x": X})[0]
    for _ in range(4):  # kube-proxy picks a pod per connection: ask more than one
        answer = infer(url, X)
        assert answer.status_code == 200, answer.text
        got = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)


class Load:
    """Bounded load through the Service: ``workers`` clients, each a new connection per request
    (so kube-proxy spreads them over the pods), at most ``limit`` requests or ``seconds``."""

    def __init__(self, url: str, *, workers: int = 4, rps: float = 40, limit: int = 4000,
                 seconds: float = 120) -> None:
        self.url, self.interval, self.limit = url, workers / rps, limit
        self.deadline = time.monotonic() + seconds
        self.codes: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, daemon=True)
                         for _ in range(workers)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def total(self) -> int:
        return sum(self.codes.values())

    def _send(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(limits=limits, timeout=10) as client:
            next_at = time.monotonic()
            while (not self._stop.is_set() and self.total() < self.limit
                   and time.monotonic() < self.deadline):
                try:
                    response = infer(self.url, X[:1], client)
                    outcome = str(response.status_code)
                    failure = None if response.status_code == 200 else response.text[:200]
                except httpx.HTTPError as error:
                    outcome, failure = type(error).__name__, str(error)
                with self._lock:
                    self.codes[outcome] += 1
                    if failure:
                        self.failures.append(failure)
                next_at += self.interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))


