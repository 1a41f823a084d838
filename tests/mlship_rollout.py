"""Helpers shared by the rollout tests (test_rollout.py, test_rollout_bandit.py).

Models that misbehave on purpose, runtime processes labelled as the canary Deployment would label
them, the app deployed to the loopback control plane, and ``SplitLoad``, which plays the mesh:
it spreads requests over the runtimes in the proportion the rollout sets in the API server.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from mlship_prometheus import PrometheusServer
from typer.testing import CliRunner

from mlship.cli import app
from mlship.render.traffic import GATEWAY_API, ISTIO_API, TRACK_LABEL

NAME = "iris"
NEW_IMAGE = "registry.local/iris:v2"
runner = CliRunner()


# ---- models -----------------------------------------------------------------------------


def faulty_model(path: Path) -> Path:
    """Same signature as the iris test model (x [N,4] -> y [N,4]), but y = table[int(x[:, 0])]
    over a 5-row table: rows whose first value is 5 or more make onnxruntime fail (HTTP 422)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(5, 4), "table")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "zero"], ["first"], axis=1),
         helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
         helper.make_node("Gather", ["table", "index"], ["y"], axis=0)],
        "faulty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[table, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def slow_model(path: Path, matmuls: int = 8, size: int = 512) -> Path:
    """x [N,4] -> y [N,4] through ``matmuls`` size x size MatMuls that depend on x (so they are
    not folded at load): tens of milliseconds per request, whatever the input."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weights = numpy_helper.from_array(
        (rng.standard_normal((size, size)) / size).astype(np.float32), "a")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "z")
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Mul", ["s", "z"], ["s0"]),
             helper.make_node("Add", ["a", "s0"], ["m0"])]
    nodes += [helper.make_node("MatMul", [f"m{i}", "a"], [f"m{i + 1}"]) for i in range(matmuls)]
    nodes += [helper.make_node("ReduceMean", [f"m{matmuls}"], ["mean"], keepdims=0),
              helper.make_node("Mul", ["mean", "z"], ["mean0"]),
              helper.make_node("Add", ["x", "mean0"], ["y"])]
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weights, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


# ---- processes: Prometheus and runtimes --------------------------------------------------


class Runtime:
    """A runtime process on loopback serving ``model`` as app ``iris``, scraped by Prometheus."""

    def __init__(self, model: Path, prometheus: PrometheusServer, *labels: str) -> None:
        from mlship.serving.client import RuntimeClient
        from mlship.serving.local_server import LocalServer

        self.server = LocalServer(model, "--model-name", NAME, "--intra-op-threads", "1",
                                  *labels)
        self.url = self.server.url
        self.target = self.url.removeprefix("http://")
        assert RuntimeClient(self.url).wait_ready(60), self.server.stderr_tail()

    def stop(self) -> None:
        self.server.stop()
        self.server.__exit__(None, None, None)


# ---- the app in the cluster ----------------------------------------------------------------


def write_config(directory: Path, model: Path, namespace: str, rollout: dict[str, Any]) -> Path:
    config = directory / "mlship.yaml"
    config.write_text(yaml.safe_dump({
        "name": NAME, "model": {"source": str(model)}, "replicas": 2,
        "namespace": {"name": namespace, "create": False}, "rollout": rollout}))
    return config


def deploy(control_plane: Any, config_path: Path) -> dict[str, Any]:
    """What `mlship deploy` does for the test: render, server-side apply as mlship, wait."""
    from mlship.config.load import load_config
    from mlship.kube import connect
    from mlship.model.inspect import inspect_model
    from mlship.render.bundle import render

    config = load_config(config_path)
    bundle = render(config, inspect_model(Path(config.model.source)))
    cluster = connect(control_plane.kubeconfig)
    for path, text in bundle.files.items():
        if path.startswith("k8s/") and not path.endswith("kustomization.yaml"):
            for document in yaml.safe_load_all(text):
                cluster.apply(document)
    control_plane.wait_rollout(config.namespace.name, NAME)
    return deployment(control_plane, config.namespace.name, NAME)


def deployment(control_plane: Any, namespace: str, name: str) -> dict[str, Any]:
    return control_plane.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}") or {}


def state_of(control_plane: Any, namespace: str) -> dict[str, Any] | None:
    annotations = deployment(control_plane, namespace, NAME)["metadata"].get("annotations", {})
    text = annotations.get("mlship.dev/rollout")
    return json.loads(text) if text else None


def image_of(obj: dict[str, Any]) -> str:
    return obj["spec"]["template"]["spec"]["containers"][0]["image"]


def route_weights(control_plane: Any, namespace: str, traffic: str) -> tuple[int, int]:
    """(stable, canary) weights of the default route, read from the API server."""
    api, kind = (ISTIO_API, "VirtualService") if traffic == "istio" else \
        (GATEWAY_API, "HTTPRoute")
    route = control_plane.get(control_plane.resource_path(api, kind, namespace, NAME)) or {}
    if traffic == "istio":
        backends = route["spec"]["http"][-1]["route"]
    else:
        backends = route["spec"]["rules"][-1]["backendRefs"]
    return backends[0]["weight"], backends[1]["weight"]


def canary_share(control_plane: Any, namespace: str, traffic: str) -> float:
    """The canary's share of requests as the cluster currently routes them, in %."""
    if traffic != "replicas":
        return float(route_weights(control_plane, namespace, traffic)[1])
    service = control_plane.get(f"/api/v1/namespaces/{namespace}/services/{NAME}") or {}
    track = service["spec"]["selector"].get(TRACK_LABEL)
    if track is not None:
        return 100.0 if track == "canary" else 0.0
    ready = [(deployment(control_plane, namespace, name).get("status") or {})
             .get("readyReplicas", 0) for name in (NAME, f"{NAME}-canary")]
    return 100.0 * ready[1] / max(1, sum(ready))


class SplitLoad:
    """Bounded load: ``rps`` requests per second, each to the canary with the probability the
    cluster gives it (re-read every 0.3 s), else to the stable; first input value 0..9."""

    def __init__(self, stable: Runtime, canary: Runtime, share: Callable[[], float], *,
                 rps: float = 40, limit: int = 3000, workers: int = 4) -> None:
        self.urls = {"stable": stable.url, "canary": canary.url}
        self.share_of = share
        self.share = 0.0
        self.shares_seen: set[float] = set()
        self.interval = workers / rps
        self.limit = limit
        self.codes: Counter[tuple[str, int]] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._watch, daemon=True)]
        self._threads += [threading.Thread(target=self._send, args=(seed,), daemon=True)
                          for seed in range(workers)]

    def __enter__(self) -> SplitLoad:
        self.share = self.share_of()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _watch(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self.share = self.share_of()
            except Exception:  # a read racing a change: keep the last share
                continue
            self.shares_seen.add(self.share)

    def _send(self, seed: int) -> None:
        rng = random.Random(seed)
        clients = {track: httpx.Client(base_url=url, timeout=10) for track, url in
                   self.urls.items()}
        next_at = time.monotonic()
        while not self._stop.is_set() and sum(self.codes.values()) < self.limit:
            track = "canary" if rng.uniform(0, 100) < self.share else "stable"
            row = [float(rng.randrange(10)), 1.0, 2.0, 3.0]
            try:
                code = clients[track].post(f"/v2/models/{NAME}/infer", json={"inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": row}]}
                ).status_code
            except httpx.HTTPError:
                code = 0
            with self._lock:
                self.codes[(track, code)] += 1
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        for client in clients.values():
            client.close()

    def count(self, track: str) -> int:
        return sum(n for (where, _), n in self.codes.items() if where == track)


def rollout_config(traffic: str, **analysis: Any) -> dict[str, Any]:
    return {"traffic": traffic, "steps": [25, 50, 100], "interval": "2s",
            "analysis": {"window": "5s", "min_requests": 8, "max_inconclusive": 4,
                         **analysis}}


STARTS = ("canary", "ab", "bluegreen", "bandit")


def invoke(*argv: str) -> Any:
    """`mlship rollout ARGV`. The test images are names only (kwok runs no container), so the
    start commands skip the registry check (tests/rollout/test_prechecks.py runs it)."""
    extra = ["--skip-checks"] if argv and argv[0] in STARTS else []
    return runner.invoke(app, ["rollout", *argv, *extra])
