"""`mlship build --push` and `mlship deploy` with real pods: the image runs under the real
kubelet of the test node (tests/k8s/controlplane/node.py), behind a real Service (kube-proxy).

Each test deploys into its own PodSecurity-"restricted" namespace whose pods go to the real
node; requests reach them through the Service's ClusterIP from this host (kube-proxy's rules,
never a stand-in). The failures are the ones users meet — a tag nobody pushed, a model that
cannot load, a memory limit below what the model needs — and each is told by the kubelet's own
pod status and events, then rolled back while the stable pods keep answering.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from controlplane import ControlPlane
from mlship_contract import Run, check_failure, check_success, mlship

from mlship.errors import ExitCode

pytestmark = [pytest.mark.k8s, pytest.mark.pods, pytest.mark.docker, pytest.mark.registry,
              pytest.mark.slow]

REGISTRY = "127.0.0.1:5000"
REPOSITORY = f"mlship-test/pods-{os.getpid()}"
BASE_IMAGE = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test/base:bookworm")
X = np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 3.0, 5.0, 2.0], [7.7, 2.6, 6.9, 2.3]],
             dtype=np.float32)


# ---- helpers ----------------------------------------------------------------------------------


def write_project(directory: Path, model: Path, namespace: str, **sections: Any) -> Path:
    """mlship.yaml for app ``iris`` in ``namespace``, its image in the loopback registry."""
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "name": "iris", "model": {"source": str(model), "version": "1"},
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


def assert_answers_like_onnxruntime(url: str, model: Path) -> None:
    want = ort.InferenceSession(str(model)).run(None, {"x": X})[0]
    for _ in range(4):  # kube-proxy picks a pod per connection: ask more than one
        answer = infer(url, X)
        assert answer.status_code == 200, answer.text
        got = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)


def running_pods(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return [pod for pod in cp.pods(namespace, "app.kubernetes.io/name=iris")
            if not pod["metadata"].get("deletionTimestamp")]


def template_image(cp: ControlPlane, namespace: str) -> str:
    live = cp.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/iris") or {}
    return str(live["spec"]["template"]["spec"]["containers"][0]["image"])


def assert_rolled_back(failed: Run, cp: ControlPlane, namespace: str, stable_image: str,
                       model: Path, *reasons: str) -> str:
    """Exit 8, the reasons in the one error line and its JSON, revision 1 back and serving."""
    assert failed.code == ExitCode.ROLLOUT, failed
    error = check_failure(("deploy",), failed.stdout, ExitCode.ROLLOUT)["error"]
    assert error["type"] == "RolloutError"
    for reason in reasons:
        assert reason in error["message"], error["message"]
    assert "rolled back to revision 1 (2/2 available)" in failed.stderr
    assert [line for line in failed.stderr.splitlines() if line.startswith("error:")] == \
        [f"error: {error['message']}"]
    assert template_image(cp, namespace) == stable_image
    assert_answers_like_onnxruntime(service_url(cp, namespace), model)
    return str(error["message"])


@pytest.fixture(autouse=True)
def _no_mlship_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in [v for v in os.environ if v.startswith("MLSHIP_")
                     and not v.startswith(("MLSHIP_TEST_", "MLSHIP_K8S_", "MLSHIP_WHEELHOUSE"))]:
        monkeypatch.delenv(variable)


@pytest.fixture(scope="module")
def iris_image(iris_model: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The iris app's image, built and pushed once (its namespace is filled in per test)."""
    config = write_project(tmp_path_factory.mktemp("image"), iris_model, "unused")
    return build_and_push(config)


@pytest.fixture
def stable(control_plane: ControlPlane, pods_namespace: str, iris_model: Path, iris_image: str,
           tmp_path: Path) -> Path:
    """Revision 1 of the iris app running on the real node; returns its mlship.yaml."""
    config = write_project(tmp_path / "stable", iris_model, pods_namespace)
    first = deploy(config, control_plane, "--json")
    assert first.code == 0, first
    return config


# ---- the image runs as rendered -----------------------------------------------------------


def test_built_image_runs_hardened_on_the_kubelet_and_answers_through_the_service(
        control_plane: ControlPlane, real_node: Any, pods_namespace: str, iris_model: Path,
        iris_image: str, tmp_path: Path) -> None:
    config = write_project(tmp_path / "p", iris_model, pods_namespace)
    deployed = deploy(config, control_plane, "--json")
    assert deployed.code == 0, deployed
    document = check_success(("deploy",), deployed.stdout)
    assert document["rollout"]["outcome"] == "complete"
    assert document["rollout"]["available"] == 2
    pods = running_pods(control_plane, pods_namespace)
    assert len(pods) == 2
    for pod in pods:
        # Scheduled on the real node by the namespace's admission defaults; run by containerd.
        assert pod["spec"]["nodeName"] == real_node.name
        status = pod["status"]
        assert status["phase"] == "Running"
        assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
        container = status["containerStatuses"][0]
        assert container["ready"]
        assert container["started"]
        assert container["restartCount"] == 0
        assert container["containerID"].startswith("containerd://")
        assert container["image"] == iris_image
        assert ipaddress.ip_address(status["podIP"]) in real_node.network.subnet
        spec = pod["spec"]["containers"][0]
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert_answers_like_onnxruntime(service_url(control_plane, pods_namespace), iris_model)


@pytest.mark.s3
def test_model_from_s3_is_downloaded_into_the_pod(
        control_plane: ControlPlane, real_node: Any, pods_namespace: str, iris_model: Path,
        node_moto: Any, tmp_path: Path) -> None:
    bucket = node_moto.new_bucket()
    pushed = mlship("model", "push", str(iris_model), f"s3://{bucket}/iris/", "--json",
                    env=node_moto.env())
    assert pushed.code == 0, pushed
    model = json.loads(pushed.stdout)["config"]["model"]
    gateway, port = real_node.network.gateway, int(node_moto.endpoint.rsplit(":", 1)[1])
    model["s3"] = {"endpoint_url": node_moto.endpoint, "credentials_secret": "s3-credentials",
                   "egress_cidrs": [f"{gateway}/32"], "egress_port": port}
    config = write_project(tmp_path / "s3", iris_model, pods_namespace, model=model)
    raw = yaml.safe_load(config.read_text())
    raw["image"]["repository"] = f"{REPOSITORY}-s3"
    config.write_text(yaml.safe_dump(raw))
    build_and_push(config)
    control_plane.apply({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "s3-credentials", "namespace": pods_namespace},
        "stringData": {"credentials": f"[default]\naws_access_key_id = {node_moto.access_key}\n"
                                      f"aws_secret_access_key = {node_moto.secret_key}\n"}})
    deployed = deploy(config, control_plane)
    assert deployed.code == 0, deployed
    assert_answers_like_onnxruntime(service_url(control_plane, pods_namespace), iris_model)
    # The pods fetched it themselves: moto saw the GETs of the manifest and the model file.
    assert f"GET /{bucket}/iris/iris.onnx" in node_moto.log_path.read_text()


# ---- failures the kubelet reports -----------------------------------------------------------


def test_a_tag_nobody_pushed_is_refused_before_anything_changes(
        control_plane: ControlPlane, pods_namespace: str, stable: Path, iris_image: str,
        iris_model: Path) -> None:
    wrong = f"{REGISTRY}/{REPOSITORY}:no-such-tag"
    refused = deploy(stable, control_plane, "--image", wrong, "--json")
    assert refused.code == ExitCode.REGISTRY, refused
    message = check_failure(("deploy",), refused.stdout, ExitCode.REGISTRY)["error"]["message"]
    assert f"image {wrong}: not in the registry (HTTP 404" in message
    assert template_image(control_plane, pods_namespace) == iris_image
    assert_answers_like_onnxruntime(service_url(control_plane, pods_namespace), iris_model)


def test_a_tag_the_kubelet_cannot_pull_is_rolled_back(
        control_plane: ControlPlane, pods_namespace: str, stable: Path, iris_image: str,
        iris_model: Path) -> None:
    # --skip-checks: the registry this machine sees is not asked; the kubelet's pull fails.
    failed = deploy(stable, control_plane, "--image", f"{REGISTRY}/{REPOSITORY}:no-such-tag",
                    "--skip-checks", "--json")
    message = assert_rolled_back(failed, control_plane, pods_namespace, iris_image, iris_model,
                                 "container model ")
    assert "ErrImagePull" in message or "ImagePullBackOff" in message
    assert f"{REGISTRY}/{REPOSITORY}:no-such-tag: not found" in message
    print(f"exit {failed.code}: {message}")


def test_an_image_whose_model_cannot_load_crash_loops_and_is_rolled_back(
        control_plane: ControlPlane, pods_namespace: str, stable: Path, iris_image: str,
        iris_model: Path, tmp_path: Path) -> None:
    # The good image with its model file overwritten: what a corrupted artifact looks like.
    broken = f"{REGISTRY}/{REPOSITORY}:broken-model"
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "model.onnx").write_bytes(b"\x08\x07not an onnx model" * 64)
    (tmp_path / "ctx" / "Dockerfile").write_text(
        f"FROM {iris_image}\nCOPY model.onnx /models/{iris_model.name}\n")
    for argv in (["docker", "build", "-q", "-t", broken, str(tmp_path / "ctx")],
                 ["docker", "push", "-q", broken]):
        subprocess.run(argv, check=True, capture_output=True, timeout=300)
    failed = deploy(stable, control_plane, "--image", broken, "--json")
    message = assert_rolled_back(
        failed, control_plane, pods_namespace, iris_image, iris_model,
        "container model CrashLoopBackOff (last exit code 3, Error;",
        f"it logged: cannot serve model /models/{iris_model.name}:", "INVALID_PROTOBUF")
    print(f"exit {failed.code}: {message}")


def big_model(path: Path, megabytes: int) -> Path:
    """iris' signature (x [N,4] -> y [N,4]) carrying ``megabytes`` of weights it barely uses:
    what it needs in memory is its weights, twice over while onnxruntime loads them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side = int((megabytes * 2**20 / 4) ** 0.5)
    weights = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((side, side)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["w"], ["m"], keepdims=0),
         helper.make_node("Mul", ["m", "zero"], ["m0"]),
         helper.make_node("Add", ["x", "m0"], ["y"])],
        "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weights, numpy_helper.from_array(np.array(0, np.float32), "zero")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    return path


def test_a_memory_limit_below_the_models_needs_is_oom_killed_and_rolled_back(
        control_plane: ControlPlane, pods_namespace: str, stable: Path, iris_image: str,
        iris_model: Path, tmp_path: Path) -> None:
    from mlship.model.inspect import inspect_model

    model = big_model(tmp_path / "big.onnx", 48)
    limit = 96 * 2**20
    assert inspect_model(model).memory_estimate_bytes > limit  # mlship's own estimate says so
    config = write_project(
        tmp_path / "big", model, pods_namespace, model={"source": str(model), "version": "2"},
        image={"registry": REGISTRY, "repository": REPOSITORY, "base": BASE_IMAGE,
               "size_budget_mb": 250},
        resources={"requests": {"cpu": "50m", "memory": "96Mi"},
                   "limits": {"cpu": "1", "memory": "96Mi"}})
    build_and_push(config)
    failed = deploy(config, control_plane, "--json")
    message = assert_rolled_back(failed, control_plane, pods_namespace, iris_image, iris_model,
                                 "container model CrashLoopBackOff (last exit code 137, "
                                 "OOMKilled;")
    print(f"exit {failed.code}: {message}")


# ---- a rolling update under load --------------------------------------------------------------


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


def test_a_rolling_update_under_load_fails_no_request(
        control_plane: ControlPlane, pods_namespace: str, stable: Path) -> None:
    before = {pod["metadata"]["name"] for pod in running_pods(control_plane, pods_namespace)}
    raw = yaml.safe_load(stable.read_text())
    raw["model"]["version"] = "2"  # a new pod template: every pod is replaced
    stable.write_text(yaml.safe_dump(raw))
    url = service_url(control_plane, pods_namespace)
    with Load(url) as load:
        time.sleep(2)
        updated = deploy(stable, control_plane, "--json")
        time.sleep(8)  # the old pods' preStop, drain and exit happen after the rollout
    assert updated.code == 0, updated
    assert check_success(("deploy",), updated.stdout)["rollout"]["revision"] == 2
    after = {pod["metadata"]["name"] for pod in running_pods(control_plane, pods_namespace)}
    assert not before & after
    assert load.total() > 200
    assert dict(load.codes) == {"200": load.total()}, load.failures[:5]
