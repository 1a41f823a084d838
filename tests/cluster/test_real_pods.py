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
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from controlplane import ControlPlane
from mlship_contract import Run, check_failure, check_success, mlship
from mlship_pods import (
    BASE_IMAGE,
    REGISTRY,
    REPOSITORY,
    Load,
    assert_answers_like_onnxruntime,
    build_and_push,
    deploy,
    service_url,
    wait_serving,
    write_project,
)

from mlship.errors import ExitCode

pytestmark = [pytest.mark.k8s, pytest.mark.pods, pytest.mark.docker, pytest.mark.registry,
              pytest.mark.slow]


# ---- helpers ----------------------------------------------------------------------------------


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
    # Kubernetes renumbers the restored template: the message names the new revision.
    assert "rolled back to revision 3 (revision 1's template, image " in failed.stderr
    assert ", 2/2 available" in failed.stderr
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
    wait_serving(service_url(control_plane, pods_namespace))
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
    wait_serving(service_url(control_plane, pods_namespace))
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
    wait_serving(service_url(control_plane, pods_namespace))
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
        f"it logged: cannot serve model /models/{iris_model.name}:", "not a valid ONNX model")
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
