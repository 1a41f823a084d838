"""`mlship rollout canary` by replica ratio on real pods: the canary Deployment's pods run on the
test node's kubelet, requests go through the app's Service (kube-proxy spreads them over the
stable and canary pods as their count says), and a real Prometheus finds the pods through the
API server (``PodTargets``: Kubernetes service discovery done by the test, as Debian's
Prometheus is built without it) and scrapes them at their bridge address. No emulated traffic
split: what the analysis judges is what the pods answered.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane
from mlship_contract import check_failure, check_success, mlship
from mlship_pods import (
    REPOSITORY,
    Load,
    assert_answers_like_onnxruntime,
    build_and_push,
    deploy,
    service_url,
    wait_serving,
    write_project,
)
from mlship_prometheus import PrometheusServer
from mlship_rollout import faulty_model

from mlship.errors import ExitCode

pytestmark = [pytest.mark.k8s, pytest.mark.pods, pytest.mark.prometheus, pytest.mark.docker,
              pytest.mark.registry, pytest.mark.slow]

ROLLOUT = {"traffic": "replicas", "steps": [50, 100], "interval": "2s",
           "analysis": {"window": "6s", "min_requests": 8, "max_inconclusive": 6}}


@pytest.fixture(autouse=True)
def _no_mlship_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in [v for v in os.environ if v.startswith("MLSHIP_")
                     and not v.startswith(("MLSHIP_TEST_", "MLSHIP_K8S_", "MLSHIP_WHEELHOUSE"))]:
        monkeypatch.delenv(variable)


@pytest.fixture(scope="module")
def images(iris_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """stable, good canary (the same model, another tag) and faulty canary images, pushed."""
    root = tmp_path_factory.mktemp("canary-images")
    built = {}
    # The faulty model has the stable's file name: the pods' settings name the model file
    # from mlship.yaml's model.source, and the canary runs with the stable's settings.
    (root / "faulty").mkdir()
    faulty = faulty_model(root / "faulty" / iris_model.name)
    for name, model, tag in (("stable", iris_model, "stable"), ("good", iris_model, "good"),
                             ("faulty", faulty, "faulty")):
        config = write_project(root / name, model, "unused", image={
            "repository": f"{REPOSITORY}-canary", "tag_policy": "fixed", "tag": tag})
        built[name] = build_and_push(config)
    return built


class PodTargets:
    """What Kubernetes service discovery would do (Debian's Prometheus is built without it):
    every 0.5 s the namespace's running pods on the real node become Prometheus' targets, at
    their bridge address and ``http`` port (kwok pods' fake IPs are never scraped)."""

    def __init__(self, control_plane: ControlPlane, node: Any, namespace: str,
                 prometheus: PrometheusServer) -> None:
        self.control_plane, self.node, self.namespace = control_plane, node, namespace
        self.prometheus = prometheus
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def targets(self) -> list[str]:
        found = []
        for pod in self.control_plane.pods(self.namespace):
            ip = (pod.get("status") or {}).get("podIP")
            if (pod["spec"].get("nodeName") != self.node.name or not ip
                    or ipaddress.ip_address(ip) not in self.node.network.subnet
                    or pod["status"].get("phase") != "Running"):
                continue
            ports = [p["containerPort"] for c in pod["spec"]["containers"]
                     for p in c.get("ports", []) if p.get("name") == "http"]
            found += [f"{ip}:{port}" for port in ports]
        return sorted(found)

    def _run(self) -> None:
        last: list[str] | None = None
        while not self._stop.wait(0.5):
            try:
                targets = self.targets()
            except Exception:  # an API hiccup: keep the last targets
                continue
            if targets != last:
                self.prometheus.set_targets(targets)
                self.seen.update(targets)
                last = targets

    def __enter__(self) -> PodTargets:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def prometheus(control_plane: ControlPlane, real_node: Any, pods_namespace: str,
               tmp_path: Path) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping the test namespace's pods every second."""
    with PrometheusServer(tmp_path / "prometheus") as server, \
            PodTargets(control_plane, real_node, pods_namespace, server):
        yield server


def stable_app(control_plane: ControlPlane, namespace: str, model: Path, image: str,
               tmp_path: Path) -> Path:
    config = write_project(tmp_path / "app", model, namespace, replicas=2, rollout=ROLLOUT,
                           image={"repository": f"{REPOSITORY}-canary", "tag_policy": "fixed",
                                  "tag": image.rsplit(":", 1)[1]})
    deployed = deploy(config, control_plane)
    assert deployed.code == 0, deployed
    wait_serving(service_url(control_plane, namespace))
    return config


def canary(config: Path, control_plane: ControlPlane, prometheus: PrometheusServer,
           image: str) -> Any:
    return mlship("rollout", "canary", "--image", image, "-c", str(config), "--kubeconfig",
                  str(control_plane.kubeconfig), "--prometheus-url", prometheus.url, "--json",
                  "--timeout", "150",
                  timeout=600)


def live(control_plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return control_plane.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}") or {}


def image_of(deployment: dict[str, Any]) -> str:
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def test_good_canary_is_promoted_on_what_the_pods_served(
        control_plane: ControlPlane, pods_namespace: str, prometheus: PrometheusServer,
        images: dict[str, str], iris_model: Path, tmp_path: Path) -> None:
    config = stable_app(control_plane, pods_namespace, iris_model, images["stable"], tmp_path)
    with Load(service_url(control_plane, pods_namespace), rps=30) as load:
        result = canary(config, control_plane, prometheus, images["good"])
    assert result.code == 0, result
    state = check_success(("rollout", "canary"), result.stdout)["rollout"]
    assert state["phase"] == "promoted"
    passed = [entry for entry in state["history"] if entry.get("status") == "pass"]
    assert [entry["weight"] for entry in passed] == [50, 100]
    for entry in passed:  # measured by Prometheus from the canary pods' own metrics
        assert entry["values"]["success rate"] == 1.0
        assert entry["values"]["requests"] >= 8
    assert image_of(live(control_plane, pods_namespace, "iris")) == images["good"]
    assert live(control_plane, pods_namespace, "iris-canary")["spec"]["replicas"] == 0
    # Every request through the Service was answered, before, during and after the promotion.
    assert dict(load.codes) == {"200": load.total()}, load.failures[:5]
    assert_answers_like_onnxruntime(service_url(control_plane, pods_namespace), iris_model)
    # The canary's pods are gone by now (promotion waits for them), so their series are stale
    # for an instant query; a range keeps the samples they were scraped with.
    scraped = prometheus.query("count by (track) (last_over_time(mlship_requests_total[15m]))")
    assert "canary" in {series["metric"].get("track") for series in scraped}


def test_faulty_canary_is_aborted_and_the_stable_pods_are_untouched(
        control_plane: ControlPlane, pods_namespace: str, prometheus: PrometheusServer,
        images: dict[str, str], iris_model: Path, tmp_path: Path) -> None:
    config = stable_app(control_plane, pods_namespace, iris_model, images["stable"], tmp_path)
    before = live(control_plane, pods_namespace, "iris")
    with Load(service_url(control_plane, pods_namespace), rps=30) as load:
        result = canary(config, control_plane, prometheus, images["faulty"])
    assert result.code == ExitCode.ROLLOUT, result
    message = check_failure(("rollout", "canary"), result.stdout, ExitCode.ROLLOUT)["error"][
        "message"]
    assert "aborted at step 1/2 (50 %)" in message
    assert "success rate" in message
    # The failures the metrics counted were real answers of the canary's pods (422), and only
    # theirs: the stable pods answered everything else.
    assert load.codes["422"] > 0
    assert set(load.codes) <= {"200", "422"}, load.failures[:5]
    after = live(control_plane, pods_namespace, "iris")
    changed = {key: (before["spec"].get(key), after["spec"].get(key))
               for key in set(before["spec"]) | set(after["spec"])
               if before["spec"].get(key) != after["spec"].get(key)}
    assert not changed, changed
    # Replica-ratio steps scale the stable down and back (generation moves), but its pod
    # template, and so its revision and pods, never change.
    revision = "deployment.kubernetes.io/revision"
    assert after["metadata"]["annotations"][revision] == \
        before["metadata"]["annotations"][revision]
    assert live(control_plane, pods_namespace, "iris-canary")["spec"]["replicas"] == 0
    # "Traffic is back on stable" is only true once no canary pod is left to answer: a
    # terminating one still serves through its preStop sleep.
    canary_pods = control_plane.get(
        f"/api/v1/namespaces/{pods_namespace}/pods?labelSelector=mlship.dev/track%3Dcanary")
    assert canary_pods is not None
    assert canary_pods["items"] == [], canary_pods
    assert_answers_like_onnxruntime(service_url(control_plane, pods_namespace), iris_model)
    raw = yaml.safe_load(config.read_text())
    assert raw["rollout"]["traffic"] == "replicas"
    print(f"exit {result.code}: {message}")


def test_canary_whose_pods_crash_ends_with_the_pods_reason(
        control_plane: ControlPlane, pods_namespace: str, prometheus: PrometheusServer,
        images: dict[str, str], iris_model: Path, tmp_path: Path) -> None:
    """The canary's pods crash-loop (its model file is not ONNX): the rollout stops on the
    kubelet's reason, not at --timeout, and the stable Deployment is untouched."""
    crashing = f"{images['stable'].rsplit(':', 1)[0]}:crashing"
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "model.onnx").write_bytes(b"\x08\x07not an onnx model" * 64)
    (context / "Dockerfile").write_text(
        f"FROM {images['stable']}\nCOPY model.onnx /models/{iris_model.name}\n")
    for argv in (["docker", "build", "-q", "-t", crashing, str(context)],
                 ["docker", "push", "-q", crashing]):
        subprocess.run(argv, check=True, capture_output=True, timeout=300)
    config = stable_app(control_plane, pods_namespace, iris_model, images["stable"], tmp_path)
    before = live(control_plane, pods_namespace, "iris")
    result = canary(config, control_plane, prometheus, crashing)
    assert result.code == ExitCode.ROLLOUT, result
    message = check_failure(("rollout", "canary"), result.stdout, ExitCode.ROLLOUT)["error"][
        "message"]
    assert "CrashLoopBackOff" in message, message
    assert "not a valid ONNX model" in message, message
    assert "raise --timeout" not in message, message
    after = live(control_plane, pods_namespace, "iris")
    assert after["spec"] == before["spec"]
    assert live(control_plane, pods_namespace, "iris-canary")["spec"]["replicas"] == 0
    # "Traffic is back on stable" is only true once no canary pod is left to answer: a
    # terminating one still serves through its preStop sleep.
    canary_pods = control_plane.get(
        f"/api/v1/namespaces/{pods_namespace}/pods?labelSelector=mlship.dev/track%3Dcanary")
    assert canary_pods is not None
    assert canary_pods["items"] == [], canary_pods
    assert_answers_like_onnxruntime(service_url(control_plane, pods_namespace), iris_model)
    print(f"exit {result.code}: {message}")
