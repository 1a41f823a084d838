"""`mlship deploy` and `mlship diff` against the real loopback control plane.

Deployments really roll: the real deployment controller makes ReplicaSets, the real scheduler
binds pods, kwok turns them Ready. Pods fail when a test says so: a MutatingAdmissionPolicy
(a real admission feature, no webhook) adds the kwok failure annotation of
tests/k8s/kwok-stages.yaml to the pods of model version "2" only, so version 1 runs and a
rollout to version 2 fails the way the test chose. The image is pushed once per session to the
loopback registry; pods never pull it (kwok runs no containers), the digest check reads it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import FAILURE_ANNOTATION, ApiError, ControlPlane, wait_for
from mlship_contract import check_failure, check_success
from typer.testing import CliRunner

from mlship.cli import app

pytestmark = pytest.mark.k8s

REGISTRY = "127.0.0.1:5000"
REPOSITORY = f"mlship-test/deploy-{os.getpid()}"
BASE_IMAGE = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test/base:bookworm")
needs_image = [pytest.mark.docker, pytest.mark.registry]


# ---- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="session")
def pushed_image() -> Iterator[str]:
    """The test base image, tagged into the loopback registry once per session."""
    import docker

    from mlship.image.engine import docker_client
    from mlship.image.push import push_image

    client = docker_client()
    try:
        client.images.get(BASE_IMAGE).tag(f"{REGISTRY}/{REPOSITORY}", tag="1")
    except docker.errors.ImageNotFound:
        message = f"base image {BASE_IMAGE} missing (.ci/install-docker.sh makes it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    reference = f"{REGISTRY}/{REPOSITORY}:1"
    digest = push_image(client, reference)
    yield f"{reference}@{digest}"
    client.images.remove(reference)  # only the local tag; the base image stays


def write_project(directory: Path, model: Path, namespace: str, **sections: Any) -> Path:
    """A project directory with the model and an mlship.yaml deploying into ``namespace``."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, directory / "model.onnx")
    config: dict[str, Any] = {
        "name": "iris",
        "model": {"source": "model.onnx", "version": "1"},
        "namespace": {"name": namespace},
        "image": {"registry": REGISTRY, "repository": REPOSITORY, "tag_policy": "fixed",
                  "tag": "1"},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = directory / "mlship.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def set_version(config: Path, version: str) -> None:
    raw = yaml.safe_load(config.read_text())
    raw["model"]["version"] = version
    config.write_text(yaml.safe_dump(raw))


class Run:
    def __init__(self, result: Any) -> None:
        self.code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stderr\n{self.stderr}\n--- stdout\n{self.stdout[:3000]}"


def mlship(*args: str | Path, env: dict[str, str] | None = None) -> Run:
    return Run(CliRunner().invoke(app, [str(arg) for arg in args], env=env))


def deploy(config: Path, kubeconfig: Path, *extra: str) -> Run:
    return mlship("deploy", "--config", config, "--kubeconfig", kubeconfig, *extra)


def deployment(cp: ControlPlane, namespace: str, name: str = "iris") -> dict[str, Any] | None:
    return cp.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")


def template_version(cp: ControlPlane, namespace: str) -> str:
    live = deployment(cp, namespace) or {}
    return str(live["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"])


def ready_pods(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return [pod for pod in cp.pods(namespace, "app.kubernetes.io/name=iris")
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in pod["status"].get("conditions", []))]


def _compliant_pod(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    """A pod PodSecurity 'restricted' admits: used to probe that a policy is in force."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "probe", "namespace": namespace, "labels": labels},
            "spec": {"containers": [{
                "name": "c", "image": "x",
                "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                    "runAsUser": 1000, "capabilities": {"drop": ["ALL"]},
                                    "seccompProfile": {"type": "RuntimeDefault"}}}]}}


@pytest.fixture
def fail_version_2(control_plane: ControlPlane, k8s_namespace: str) -> Iterator[Any]:
    """Call with annotations: pods of model version "2" in the test namespace get them."""
    created: list[tuple[str, str]] = []

    def install(annotations: dict[str, str]) -> None:
        name = f"mlship-test-{k8s_namespace}"
        entries = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in annotations.items())
        control_plane.apply({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                    "resources": ["pods"]}]},
                "matchConditions": [{"name": "version-2", "expression":
                                     'has(object.metadata.labels) && "app.kubernetes.io/version"'
                                     ' in object.metadata.labels && object.metadata.labels'
                                     '["app.kubernetes.io/version"] == "2"'}],
                "failurePolicy": "Fail", "reinvocationPolicy": "Never",
                "mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {
                    "expression": f"Object{{metadata: Object.metadata{{annotations: "
                                  f"{{{entries}}}}}}}"}}]}})
        control_plane.apply({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingAdmissionPolicyBinding", "metadata": {"name": name},
            "spec": {"policyName": name, "matchResources": {"namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": k8s_namespace}}}}})
        created.append(("MutatingAdmissionPolicy", name))
        created.append(("MutatingAdmissionPolicyBinding", name))
        probe = _compliant_pod(k8s_namespace, {"app.kubernetes.io/version": "2"})
        path = f"/api/v1/namespaces/{k8s_namespace}/pods"

        def in_force() -> bool:  # policies reach admission through an informer
            _, body = control_plane.request("POST", path, probe, query={"dryRun": "All"})
            return set(annotations) <= set(body["metadata"].get("annotations") or {})

        wait_for(in_force, 20, "the MutatingAdmissionPolicy to be in force")

    yield install
    for kind, name in reversed(created):
        control_plane.delete("admissionregistration.k8s.io/v1", kind, name)


@pytest.fixture
def project(tmp_path: Path, iris_model: Path, k8s_namespace: str,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    for variable in [v for v in os.environ if v.startswith("MLSHIP_")
                     and not v.startswith(("MLSHIP_TEST_", "MLSHIP_K8S_"))]:
        monkeypatch.delenv(variable)
    return write_project(tmp_path / "project", iris_model, k8s_namespace)


# ---- deploy, redeploy, diff -----------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.registry
def test_deploy_waits_then_an_unchanged_redeploy_changes_nothing(
        control_plane: ControlPlane, k8s_namespace: str, project: Path,
        pushed_image: str) -> None:
    first = deploy(project, control_plane.kubeconfig, "--json")
    assert first.code == 0, first
    document = check_success(("deploy",), first.stdout)
    actions = {item["name"] if item["kind"] == "ConfigMap" else item["kind"]: item["action"]
               for item in document["objects"]}
    # The fixture made the Namespace; mlship adds its labels to it, and creates the rest; its
    # ApplySet's parent (the inventory of what it applied) comes right after the Namespace.
    settings = next(item["name"] for item in document["objects"]
                    if item["kind"] == "ConfigMap" and item["name"] != "mlship-applyset-iris")
    assert actions == {"Namespace": "configured", "mlship-applyset-iris": "created",
                       "ServiceAccount": "created", settings: "created", "Service": "created",
                       "NetworkPolicy": "created", "Deployment": "created",
                       "PodDisruptionBudget": "created"}
    assert [item["kind"] for item in document["objects"]] == [
        "Namespace", "ConfigMap", "ServiceAccount", "ConfigMap", "Service", "NetworkPolicy",
        "Deployment", "PodDisruptionBudget"]
    assert document["pruned"] == []
    assert document["changed"] is True
    assert document["rollout"]["outcome"] == "complete"
    assert document["rollout"]["available"] == document["rollout"]["desired"] == 2
    assert document["rollout"]["revision"] == 1
    assert {check["name"]: check["status"] for check in document["checks"]} == {
        "image": "passed", "quota": "passed", "limits": "passed", "gpu": "skipped"}
    digest = pushed_image.partition("@")[2]
    assert digest in next(c["detail"] for c in document["checks"] if c["name"] == "image")
    # What the command reported is what the cluster shows: two Ready pods, owned by mlship.
    assert len(ready_pods(control_plane, k8s_namespace)) == 2
    live = deployment(control_plane, k8s_namespace) or {}
    assert "mlship" in {entry["manager"] for entry in live["metadata"]["managedFields"]}

    again = deploy(project, control_plane.kubeconfig, "--json")
    assert again.code == 0, again
    assert again.json()["changed"] is False
    assert {item["action"] for item in again.json()["objects"]} == {"unchanged"}
    assert "no changes: all 8 objects unchanged" in again.stderr
    after = deployment(control_plane, k8s_namespace) or {}
    assert after["metadata"]["generation"] == live["metadata"]["generation"]

    same = mlship("diff", "--config", project, "--kubeconfig", control_plane.kubeconfig,
                  "--exit-code")
    assert same.code == 0, same
    assert same.stdout == ""
    assert "no differences" in same.stderr


def test_diff_shows_what_a_deploy_would_change(control_plane: ControlPlane,
                                               k8s_namespace: str, project: Path) -> None:
    deployed = deploy(project, control_plane.kubeconfig, "--skip-checks")
    assert deployed.code == 0, deployed
    raw = yaml.safe_load(project.read_text())
    raw["replicas"] = 3
    project.write_text(yaml.safe_dump(raw))
    changed = mlship("diff", "--config", project, "--kubeconfig", control_plane.kubeconfig,
                     "--exit-code")
    assert changed.code == 12, changed
    assert f"--- live/Deployment/{k8s_namespace}/iris" in changed.stdout
    assert "-  replicas: 2\n+  replicas: 3\n" in changed.stdout
    assert "managedFields" not in changed.stdout
    assert "resourceVersion" not in changed.stdout
    assert "1 of 8 objects differ: Deployment iris (update)" in changed.stderr
    document = check_success(("diff",), mlship("diff", "--config", project, "--kubeconfig",
                                               control_plane.kubeconfig, "--json").stdout)
    assert {o["kind"]: o["action"] for o in document["objects"]}["Deployment"] == "update"
    assert document["changed"] is True
    # diff changed nothing.
    assert (deployment(control_plane, k8s_namespace) or {})["spec"]["replicas"] == 2


def test_dry_runs_change_nothing(control_plane: ControlPlane, k8s_namespace: str,
                                 project: Path, tmp_path: Path) -> None:
    server = deploy(project, control_plane.kubeconfig, "--dry-run=server", "--skip-checks",
                    "--json")
    assert server.code == 0, server
    check_success(("deploy",), server.stdout)
    actions = {o["kind"]: o["action"] for o in server.json()["objects"]}
    assert actions["Deployment"] == "created"
    assert server.json()["rollout"] is None
    assert "Deployment " + k8s_namespace + "/iris would be created" in server.stderr
    assert deployment(control_plane, k8s_namespace) is None
    # A client dry run contacts no cluster at all: a kubeconfig that does not exist is fine.
    client = deploy(project, tmp_path / "absent.kubeconfig", "--dry-run", "client")
    assert client.code == 0, client
    documents = list(yaml.safe_load_all(client.stdout))
    assert [d["kind"] for d in documents][:3] == ["Namespace", "ConfigMap", "ServiceAccount"]
    assert documents[1]["metadata"]["name"] == "mlship-applyset-iris"  # the ApplySet's parent
    assert len(documents) == 8


# ---- failed rollouts ------------------------------------------------------------------------


@pytest.mark.parametrize(("annotations", "sections", "reason"), [
    ({FAILURE_ANNOTATION: "CrashLoopBackOff", "mlship.test/exit-code": "137",
      "mlship.test/exit-reason": "OOMKilled"}, {},
     "CrashLoopBackOff (last exit code 137, OOMKilled"),
    ({FAILURE_ANNOTATION: "ImagePullBackOff"}, {}, "ImagePullBackOff"),
    ({FAILURE_ANNOTATION: "NotReady"},
     {"probes": {"readiness": {"period_s": 1, "failure_threshold": 1}}},
     "is running but not ready: Readiness probe failed"),
], ids=["crashloop", "imagepull", "readiness"])
def test_failed_rollout_is_rolled_back_with_the_reason(
        control_plane: ControlPlane, k8s_namespace: str, iris_model: Path, tmp_path: Path,
        fail_version_2: Any, annotations: dict[str, str], sections: dict[str, Any],
        reason: str) -> None:
    config = write_project(tmp_path / "p", iris_model, k8s_namespace, **sections)
    assert deploy(config, control_plane.kubeconfig, "--skip-checks").code == 0
    fail_version_2(annotations)
    set_version(config, "2")
    failed = deploy(config, control_plane.kubeconfig, "--skip-checks", "--json")
    assert failed.code == 8, failed
    assert reason in failed.stderr
    # Kubernetes numbers the restored template as a new revision: that is the one named.
    assert (f"rolled back to revision 3 (revision 1's template, image {REGISTRY}/"
            f"{REPOSITORY}:1), 2/2 available") in failed.stderr
    error = check_failure(("deploy",), failed.stdout, 8)
    assert error["error"]["type"] == "RolloutError"
    assert reason in error["error"]["message"]
    # The failed pod by name (gone after the rollback); never `logs deployment/iris`, which
    # would read the healthy pods now. Its log is read before the rollback where it can help.
    pod = re.search(r"pod (iris-[a-z0-9]+-[a-z0-9]+)", error["error"]["message"])
    assert pod, error
    hint = error["error"]["hint"]
    assert pod[1] in hint
    assert "--previous" not in hint
    assert "logs deployment/" not in hint
    log_line = re.search(rf"pod {pod[1]}: (the last \d+ log lines|its log could not be read"
                         rf"|its last run logged nothing|it logged nothing)", failed.stderr)
    if annotations[FAILURE_ANNOTATION] == "ImagePullBackOff":
        assert log_line is None, failed  # no log exists: the pull never ran the container
        assert "could not be pulled" in hint
    else:
        assert log_line, failed
    # The cluster is back on version 1, with its two pods, and mlship still owns the template.
    assert template_version(control_plane, k8s_namespace) == "1"
    assert len(ready_pods(control_plane, k8s_namespace)) == 2
    live = deployment(control_plane, k8s_namespace) or {}
    owners = {e["manager"] for e in live["metadata"]["managedFields"]
              if "f:template" in json.dumps(e.get("fieldsV1", {}))}
    assert owners == {"mlship"}


def test_progress_deadline_exceeded_is_a_failed_rollout(
        control_plane: ControlPlane, k8s_namespace: str, iris_model: Path, tmp_path: Path,
        fail_version_2: Any) -> None:
    config = write_project(tmp_path / "p", iris_model, k8s_namespace)
    assert deploy(config, control_plane.kubeconfig, "--skip-checks").code == 0
    # Probes fail for longer (15 s) than the deadline the cluster gives the rollout (2 s).
    fail_version_2({FAILURE_ANNOTATION: "NotReady"})
    control_plane.request(
        "PATCH", f"/apis/apps/v1/namespaces/{k8s_namespace}/deployments/iris",
        {"spec": {"progressDeadlineSeconds": 2}},
        content_type="application/merge-patch+json", query={"fieldManager": "platform-team"})
    set_version(config, "2")
    failed = deploy(config, control_plane.kubeconfig, "--skip-checks")
    assert failed.code == 8, failed
    assert "failed: progress deadline exceeded" in failed.stderr
    assert "rolled back to revision 3 (revision 1's template, image " in failed.stderr
    assert template_version(control_plane, k8s_namespace) == "1"


def test_timeout_exits_9_and_no_rollback_keeps_the_new_revision(
        control_plane: ControlPlane, k8s_namespace: str, project: Path,
        fail_version_2: Any) -> None:
    assert deploy(project, control_plane.kubeconfig, "--skip-checks").code == 0
    fail_version_2({"pod-ready.stage.kwok.x-k8s.io/delay": "60s"})
    set_version(project, "2")
    slow = deploy(project, control_plane.kubeconfig, "--skip-checks", "--timeout", "2",
                  "--no-rollback")
    assert slow.code == 9, slow
    assert f"rollout of Deployment {k8s_namespace}/iris not complete after 2 s (" in slow.stderr
    assert "not rolled back (--no-rollback)" in slow.stderr
    assert "raise --timeout" in slow.stderr
    assert template_version(control_plane, k8s_namespace) == "2"


def test_rollback_restores_an_earlier_revision(control_plane: ControlPlane,
                                               k8s_namespace: str, project: Path) -> None:
    from mlship.cluster import revisions
    from mlship.kube import connect

    for version in ("1", "2", "3"):
        set_version(project, version)
        assert deploy(project, control_plane.kubeconfig, "--skip-checks").code == 0
    cluster = connect(control_plane.kubeconfig)
    assert revisions.rollback(cluster, k8s_namespace, "iris") == 2
    assert template_version(control_plane, k8s_namespace) == "2"
    control_plane.wait_rollout(k8s_namespace, "iris")
    assert revisions.rollback(cluster, k8s_namespace, "iris", to_revision=1) == 1
    assert template_version(control_plane, k8s_namespace) == "1"
    # Fields mlship owned outside the template survive the rollback's apply.
    live = deployment(control_plane, k8s_namespace) or {}
    assert live["spec"]["replicas"] == 2
    assert live["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    from mlship.errors import RolloutError

    with pytest.raises(RolloutError, match="no revision 9 to roll back to"):
        revisions.rollback(cluster, k8s_namespace, "iris", to_revision=9)


def settings_map(cp: ControlPlane, namespace: str) -> dict[str, Any]:
    """The ConfigMap the live Deployment's template reads its runtime settings from."""
    live = deployment(cp, namespace) or {}
    name = live["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    return cp.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}") or {}


def test_a_rollback_brings_its_own_settings_back_and_unused_ones_are_pruned(
        control_plane: ControlPlane, k8s_namespace: str, project: Path) -> None:
    from mlship.cluster import revisions
    from mlship.kube import connect

    assert deploy(project, control_plane.kubeconfig, "--skip-checks").code == 0
    first = settings_map(control_plane, k8s_namespace)
    assert first["immutable"] is True
    labels = first["metadata"]["labels"]
    stale = f"iris-config-{'0' * 10}"  # a settings map no revision refers to any more
    control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap", "immutable": True,
                         "metadata": {"name": stale, "namespace": k8s_namespace,
                                      "labels": labels}, "data": {"OLD": "1"}})
    # Mutable, with the app's labels but no ApplySet membership (a member, being no longer
    # rendered, would be pruned: tests/cluster/test_prune_delete.py).
    mutable = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"dashboard": "{}"},
               "metadata": {"name": "iris-dashboard", "namespace": k8s_namespace,
                            "labels": {k: v for k, v in labels.items()
                                       if not k.startswith("applyset.kubernetes.io/")}}}
    control_plane.apply(mutable)

    raw = yaml.safe_load(project.read_text())
    raw["runtime"] = {"log_level": "debug"}
    project.write_text(yaml.safe_dump(raw))
    redeployed = deploy(project, control_plane.kubeconfig, "--skip-checks", "--json")
    assert redeployed.code == 0, redeployed
    second = settings_map(control_plane, k8s_namespace)
    assert second["metadata"]["name"] != first["metadata"]["name"]
    assert second["data"]["MLSHIP_RUNTIME_LOG_LEVEL"] == "debug"
    assert redeployed.json()["pruned_config_maps"] == [stale]
    names = {item["metadata"]["name"] for item in control_plane.request(
        "GET", f"/api/v1/namespaces/{k8s_namespace}/configmaps")[1]["items"]}
    # Revision 1's settings stay (its ReplicaSet is kept for rollbacks); mutable maps are left.
    assert {first["metadata"]["name"], second["metadata"]["name"], "iris-dashboard"} <= names
    assert stale not in names

    control_plane.wait_rollout(k8s_namespace, "iris")
    assert revisions.rollback(connect(control_plane.kubeconfig), k8s_namespace, "iris") == 1
    back = settings_map(control_plane, k8s_namespace)
    assert back["metadata"]["name"] == first["metadata"]["name"]
    assert back["data"]["MLSHIP_RUNTIME_LOG_LEVEL"] == first["data"]["MLSHIP_RUNTIME_LOG_LEVEL"]


# ---- errors: each one line and its exit code ------------------------------------------------


def test_no_kubeconfig(project: Path, tmp_path: Path) -> None:
    missing = deploy(project, tmp_path / "absent.kubeconfig")
    assert missing.code == 7, missing
    assert "absent.kubeconfig: no such kubeconfig file" in missing.stderr
    env = {"HOME": str(tmp_path), "KUBECONFIG": "", "KUBERNETES_SERVICE_HOST": ""}
    nothing = mlship("deploy", "--config", project, env=env)
    assert nothing.code == 7, nothing
    assert "no kubeconfig: --kubeconfig not given, KUBECONFIG not set" in nothing.stderr


def test_unreachable_cluster(control_plane: ControlPlane, project: Path, tmp_path: Path) -> None:
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(control_plane.kubeconfig.read_text().replace(control_plane.server,
                                                                 "https://127.0.0.1:1"))
    result = deploy(project, dead, "--json")
    assert result.code == 7, result
    assert "cannot reach the Kubernetes API" in result.stderr
    check_failure(("deploy",), result.stdout, 7)
    assert "Traceback" not in result.stderr


def test_rbac_forbidden_applies_nothing(control_plane: ControlPlane, k8s_namespace: str,
                                        project: Path) -> None:
    viewer = control_plane.create_user(f"viewer-{k8s_namespace}")
    control_plane.bind_cluster_role(f"viewer-{k8s_namespace}", "view", namespace=k8s_namespace)
    raw = yaml.safe_load(project.read_text())
    raw["namespace"]["create"] = False  # the namespace is the platform team's
    project.write_text(yaml.safe_dump(raw))
    refused = deploy(project, viewer, "--skip-checks", "--json")
    assert refused.code == 7, refused
    assert "forbidden" in refused.stderr
    assert f"viewer-{k8s_namespace}" in refused.stderr
    assert check_failure(("deploy",), refused.stdout, 7)["error"]["type"] == "ForbiddenError"
    assert control_plane.get(f"/api/v1/namespaces/{k8s_namespace}/serviceaccounts/iris") is None


def test_a_namespace_editor_can_deploy(control_plane: ControlPlane, k8s_namespace: str,
                                       project: Path) -> None:
    """The usual production set-up: the ClusterRole edit in one namespace, nothing more."""
    user = f"editor-{k8s_namespace}"
    editor = control_plane.create_user(user)
    control_plane.bind_cluster_role(user, "edit", namespace=k8s_namespace)
    raw = yaml.safe_load(project.read_text())
    raw["namespace"]["create"] = False
    project.write_text(yaml.safe_dump(raw))
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    apps = k8s.AppsV1Api(ControlPlane.client_for(editor))
    wait_for(lambda: apps.list_namespaced_deployment(k8s_namespace) is not None, 10,
             "edit rights", retry_on=(ApiException,))
    result = deploy(project, editor, "--skip-checks")
    assert result.code == 0, result
    assert "rollout complete" in result.stderr


def test_conflict_with_another_manager_then_force(control_plane: ControlPlane,
                                                  k8s_namespace: str, project: Path) -> None:
    assert deploy(project, control_plane.kubeconfig, "--skip-checks").code == 0
    # (Not the settings ConfigMap: it is immutable, nobody can take its data over.)
    control_plane.apply({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": "iris", "namespace": k8s_namespace,
                                      "labels": {"app.kubernetes.io/version": "someone"}}},
                        field_manager="someone-else", force=True)
    set_version(project, "2")
    conflict = deploy(project, control_plane.kubeconfig, "--skip-checks", "--json")
    assert conflict.code == 7, conflict
    assert "conflict" in conflict.stderr
    assert ".metadata.labels.app.kubernetes.io/version" in conflict.stderr
    assert "--force-conflicts" in conflict.stderr
    assert check_failure(("deploy",), conflict.stdout, 7)["error"]["type"] == \
        "ApplyConflictError"
    # The server dry run of every object came first: the ServiceAccount, applied before the
    # Service, kept its version label, and the Deployment did not change.
    account = control_plane.get(f"/api/v1/namespaces/{k8s_namespace}/serviceaccounts/iris")
    assert (account or {})["metadata"]["labels"]["app.kubernetes.io/version"] == "1"
    assert template_version(control_plane, k8s_namespace) == "1"
    forced = deploy(project, control_plane.kubeconfig, "--skip-checks", "--force-conflicts")
    assert forced.code == 0, forced
    service = control_plane.get(f"/api/v1/namespaces/{k8s_namespace}/services/iris") or {}
    assert service["metadata"]["labels"]["app.kubernetes.io/version"] == "2"
    assert template_version(control_plane, k8s_namespace) == "2"


def test_a_failure_after_the_dry_run_names_what_was_applied(
        control_plane: ControlPlane, k8s_namespace: str, project: Path) -> None:
    """A policy that refuses only real (not dry-run) Deployment writes: the rare half-apply."""
    name = f"mlship-test-frozen-{k8s_namespace}"
    control_plane.apply({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{
                     "apiGroups": ["apps"], "apiVersions": ["v1"],
                     "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
                 "validations": [{"expression": "request.dryRun == true",
                                  "message": "deployments are frozen"}]}})
    control_plane.apply({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": k8s_namespace}}}}})
    try:
        probe = {"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "probe", "namespace": k8s_namespace},
                 "spec": {"selector": {"matchLabels": {"a": "b"}},
                          "template": {"metadata": {"labels": {"a": "b"}},
                                       "spec": {"containers": [{"name": "c", "image": "x"}]}}}}

        def frozen() -> bool:
            try:
                control_plane.apply(probe)
            except ApiError as err:
                return err.status == 422
            control_plane.delete("apps/v1", "Deployment", "probe", k8s_namespace)
            return False

        wait_for(frozen, 20, "the ValidatingAdmissionPolicy to be in force")
        result = deploy(project, control_plane.kubeconfig, "--skip-checks", "--json")
    finally:
        control_plane.delete("admissionregistration.k8s.io/v1",
                             "ValidatingAdmissionPolicyBinding", name)
        control_plane.delete("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy",
                             name)
    assert result.code == 7, result
    message = check_failure(("deploy",), result.stdout, 7)["error"]["message"]
    assert message.startswith(f"applied 6 of 8 objects (Namespace {k8s_namespace} configured, "
                              f"ConfigMap {k8s_namespace}/mlship-applyset-iris created, "
                              f"ServiceAccount {k8s_namespace}/iris created, ")
    assert f"then Deployment {k8s_namespace}/iris failed: " in message
    assert "deployments are frozen" in message
    assert message.endswith(f"not applied: PodDisruptionBudget {k8s_namespace}/iris")
    assert "policy of the cluster refused it" in result.json()["error"]["hint"]
    details = result.json()["error"]["details"]
    assert len(details["applied"]) == 6
    assert details["failed"] == f"Deployment {k8s_namespace}/iris"
    assert details["not_applied"] == [f"PodDisruptionBudget {k8s_namespace}/iris"]
    assert control_plane.get(f"/api/v1/namespaces/{k8s_namespace}/services/iris") is not None
    assert deployment(control_plane, k8s_namespace) is None


# ---- pre-deploy checks ----------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.registry
def test_missing_image_stops_before_anything_is_applied(
        control_plane: ControlPlane, k8s_namespace: str, project: Path,
        pushed_image: str) -> None:
    missing = deploy(project, control_plane.kubeconfig, "--image",
                     f"{REGISTRY}/{REPOSITORY}:never-pushed")
    assert missing.code == 6, missing
    assert f"image {REGISTRY}/{REPOSITORY}:never-pushed: not in the registry (HTTP 404" \
        in missing.stderr
    assert deployment(control_plane, k8s_namespace) is None
    pinned = deploy(project, control_plane.kubeconfig, "--image", pushed_image, "--json")
    assert pinned.code == 0, pinned
    assert pinned.json()["image"] == pushed_image.replace(":1@", "@")
    live = deployment(control_plane, k8s_namespace) or {}
    container = live["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == pushed_image.replace(":1@", "@")
    assert container["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.registry
def test_every_failed_check_is_reported_at_once(control_plane: ControlPlane,
                                                k8s_namespace: str, project: Path) -> None:
    """A missing image, a quota too small and a LimitRange too tight: one run names all three,
    with the exit code of the first in check order (the image's, 6)."""
    control_plane.apply({"apiVersion": "v1", "kind": "ResourceQuota",
                         "metadata": {"name": "compute", "namespace": k8s_namespace},
                         "spec": {"hard": {"requests.cpu": "1"}}})
    control_plane.apply({"apiVersion": "v1", "kind": "LimitRange",
                         "metadata": {"name": "small", "namespace": k8s_namespace},
                         "spec": {"limits": [{"type": "Container",
                                              "max": {"memory": "256Mi"}}]}})
    raw = yaml.safe_load(project.read_text())
    raw["resources"] = {"requests": {"cpu": "900m", "memory": "256Mi"},
                        "limits": {"cpu": "1", "memory": "512Mi"}}
    project.write_text(yaml.safe_dump(raw))
    missing = f"{REGISTRY}/{REPOSITORY}:never-pushed"
    refused = deploy(project, control_plane.kubeconfig, "--image", missing, "--json")
    assert refused.code == 6, refused
    error = check_failure(("deploy",), refused.stdout, 6)["error"]
    assert error["type"] == "RegistryError"
    assert error["message"].startswith(
        f"3 pre-deploy checks failed: (1) image {missing}: not in the registry (HTTP 404")
    assert (f"(2) ResourceQuota {k8s_namespace}/compute: requests.cpu: the rollout needs "
            f"1800m (up to 2 pods of iris x 900m during the rolling update), 1000m of 1000m "
            f"remaining (0m used by others)") in error["message"]
    assert (f"(3) LimitRange {k8s_namespace}/small: Deployment {k8s_namespace}/iris container "
            f"model: limits.memory 512Mi is above the max 256Mi") in error["message"]
    assert [(f["type"], f["exit_code"]) for f in error["details"]["failures"]] == [
        ("RegistryError", 6), ("PreflightError", 7), ("PreflightError", 7)]
    assert deployment(control_plane, k8s_namespace) is None  # nothing was applied


@pytest.mark.docker
@pytest.mark.registry
def test_quota_counts_the_rolling_update_peak(control_plane: ControlPlane, k8s_namespace: str,
                                              project: Path, pushed_image: str) -> None:
    control_plane.apply({"apiVersion": "v1", "kind": "ResourceQuota",
                         "metadata": {"name": "compute", "namespace": k8s_namespace},
                         "spec": {"hard": {"requests.cpu": "600m"}}})
    first = deploy(project, control_plane.kubeconfig)
    assert first.code == 0, first  # 2 pods x 250m = 500m of 600m
    assert "check quota: passed: fits ResourceQuota compute" in first.stderr

    def counted() -> bool:
        quota = control_plane.get(
            f"/api/v1/namespaces/{k8s_namespace}/resourcequotas/compute") or {}
        return quota.get("status", {}).get("used", {}).get("requests.cpu") == "500m"

    wait_for(counted, 20, "the quota controller to count the pods")
    set_version(project, "2")  # a new template: one surge pod next to the two old ones
    refused = deploy(project, control_plane.kubeconfig, "--json")
    assert refused.code == 7, refused
    assert check_failure(("deploy",), refused.stdout, 7)["error"]["message"] == (
        f"ResourceQuota {k8s_namespace}/compute: requests.cpu: the rollout needs 750m (up to "
        f"3 pods of iris x 250m during the rolling update), 600m of 600m remaining (0m used "
        f"by others)")
    assert refused.json()["error"]["type"] == "PreflightError"
    assert template_version(control_plane, k8s_namespace) == "1"


def test_limit_range_is_checked(control_plane: ControlPlane, k8s_namespace: str,
                                project: Path) -> None:
    from mlship.cluster import apply as release
    from mlship.cluster.checks import PreflightError
    from mlship.cluster.quota import check_limit_ranges
    from mlship.config.load import load_config
    from mlship.kube import connect
    from mlship.model.signatures import model_signatures
    from mlship.render.bundle import render

    control_plane.apply({"apiVersion": "v1", "kind": "LimitRange",
                         "metadata": {"name": "small", "namespace": k8s_namespace},
                         "spec": {"limits": [{"type": "Container",
                                              "max": {"memory": "256Mi"}}]}})
    loaded = load_config(project)
    objects = release.plan(render(loaded, model_signatures(loaded, project)[0]))
    with pytest.raises(PreflightError) as caught:
        check_limit_ranges(connect(control_plane.kubeconfig), objects)
    assert caught.value.message == (
        f"LimitRange {k8s_namespace}/small: Deployment {k8s_namespace}/iris container model: "
        f"limits.memory 512Mi is above the max 256Mi")


# ---- GPU nodes and drivers ------------------------------------------------------------------

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@pytest.fixture
def gpu_nodes(control_plane: ControlPlane) -> Iterator[Any]:
    """Add kwok GPU nodes (tainted, so no other test's pods land there); removed afterwards."""
    added: list[str] = []

    def add(name: str, gpus: str, labels: dict[str, str]) -> None:
        control_plane.add_node(name, extra_resources={"nvidia.com/gpu": gpus}, labels=labels,
                               taints=[GPU_TAINT])
        added.append(name)

        def only_the_gpu_taint() -> bool:
            # The node controller lifts its node.kubernetes.io/not-ready taint a moment after
            # the node turns Ready; until then no pod (and no check) may use the node.
            node = control_plane.get(f"/api/v1/nodes/{name}") or {}
            return [taint.get("key") for taint in node.get("spec", {}).get("taints") or []] \
                == [GPU_TAINT["key"]]

        wait_for(only_the_gpu_taint, 30, f"node {name} to lose its not-ready taint")

    yield add
    for name in added:
        control_plane.delete("v1", "Node", name)


def gpu_project(tmp_path: Path, model: Path, namespace: str) -> Path:
    # onnxruntime-gpu 1.26 (CUDA 12) -> nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 -> 12.6.
    return write_project(tmp_path / "gpu", model, namespace, runtime={"provider": "cuda"},
                         gpu={"enabled": True, "node_selector": {"mlship.test/pool": namespace}})


def test_gpu_nodes_and_their_drivers_are_checked(control_plane: ControlPlane,
                                                 k8s_namespace: str, iris_model: Path,
                                                 tmp_path: Path, gpu_nodes: Any) -> None:
    from mlship.cluster import apply as release
    from mlship.cluster.checks import PreflightError, check_gpu_nodes
    from mlship.config.load import load_config
    from mlship.kube import connect
    from mlship.model.signatures import model_signatures
    from mlship.render.bundle import render

    config = gpu_project(tmp_path, iris_model, k8s_namespace)
    loaded = load_config(config)
    objects = release.plan(render(loaded, model_signatures(loaded, config)[0]))
    cluster = connect(control_plane.kubeconfig)
    pool = {"mlship.test/pool": k8s_namespace}
    with pytest.raises(PreflightError, match=re.escape("no schedulable node offers "
                                                       "nvidia.com/gpu >= 1 and admits")):
        check_gpu_nodes(cluster, objects, loaded.base_image)
    old = f"gpu-old-{k8s_namespace}"[:63]
    gpu_nodes(old, "2", {**pool, "nvidia.com/cuda.driver-version.full": "535.104.05",
                         "nvidia.com/cuda.runtime-version.major": "12",
                         "nvidia.com/cuda.runtime-version.minor": "2"})
    with pytest.raises(PreflightError) as caught:
        check_gpu_nodes(cluster, objects, loaded.base_image)
    assert caught.value.message == (
        f"Deployment {k8s_namespace}/iris: the image "
        f"nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 needs CUDA 12.6 (driver >= 560.28.03), "
        f"but no GPU node's driver supports it: {old} (driver 535.104.05, CUDA 12.2)")
    # The deprecated labels of older feature discovery, without the CUDA version: the table.
    new = f"gpu-new-{k8s_namespace}"[:63]
    gpu_nodes(new, "2", {**pool, "nvidia.com/cuda.driver.major": "560",
                         "nvidia.com/cuda.driver.minor": "35", "nvidia.com/cuda.driver.rev": "03"})
    passed = check_gpu_nodes(cluster, objects, loaded.base_image)
    assert passed.status == "passed"
    assert f"driver runs CUDA 12.6 on {new}" in passed.detail
    assert old not in passed.detail.split("driver runs")[1]


@pytest.mark.docker
@pytest.mark.registry
def test_a_gpu_model_deploys_onto_a_gpu_node(control_plane: ControlPlane, k8s_namespace: str,
                                             iris_model: Path, tmp_path: Path,
                                             gpu_nodes: Any, pushed_image: str) -> None:
    node = f"gpu-{k8s_namespace}"[:63]
    gpu_nodes(node, "2", {"mlship.test/pool": k8s_namespace,
                          "nvidia.com/cuda.runtime-version.major": "12",
                          "nvidia.com/cuda.runtime-version.minor": "8"})
    result = deploy(gpu_project(tmp_path, iris_model, k8s_namespace), control_plane.kubeconfig,
                    "--json")
    assert result.code == 0, result
    gpu = next(c for c in check_success(("deploy",), result.stdout)["checks"]
               if c["name"] == "gpu")
    assert gpu["status"] == "passed"
    assert f"driver runs CUDA 12.6 on {node}" in gpu["detail"]
    pods = ready_pods(control_plane, k8s_namespace)
    assert len(pods) == 2
    assert {pod["spec"]["nodeName"] for pod in pods} == {node}


# ---- what deploy sends is valid -------------------------------------------------------------

# API groups kubernetes-validate has schemas for (v1 is the core group, written without one).
BUILTIN_GROUPS = {"v1", "apps", "batch", "autoscaling", "policy", "networking.k8s.io",
                  "rbac.authorization.k8s.io"}


@pytest.mark.validators
def test_every_object_deploy_sends_passes_kubernetes_validate(
        control_plane: ControlPlane, k8s_namespace: str, project: Path, tmp_path: Path,
        render_case: Any) -> None:
    """Planned objects of every representative config, with --namespace/--image overrides,
    and the Deployment rollback applies: kubernetes-validate --strict, newest schema."""
    from mlship_testsupport import CASES, find_tool

    from mlship.cluster import apply as release
    from mlship.cluster import revisions
    from mlship.kube import connect

    sent = [obj for case, target in CASES.items() if target == "kubernetes"
            for obj in release.plan(render_case(case))]
    raw = yaml.safe_load(project.read_text())
    raw["monitoring"] = {"service_monitor": True, "prometheus_rule": True}
    project.write_text(yaml.safe_dump(raw))
    for version in ("1", "2"):
        set_version(project, version)
        result = deploy(project, control_plane.kubeconfig, "--skip-checks", "--namespace",
                        k8s_namespace, "--image", f"{REGISTRY}/{REPOSITORY}:{version}", "--json")
        assert result.code == 0, result
        assert {"ServiceMonitor", "PrometheusRule"} <= {o["kind"] for o in
                                                          result.json()["objects"]}
    client = deploy(project, control_plane.kubeconfig, "--dry-run=client", "--json")
    sent += list(client.json()["manifests"])
    rollback, revision = revisions.rollback_object(connect(control_plane.kubeconfig),
                                                 k8s_namespace, "iris")
    assert revision == 1
    assert rollback is not None
    sent.append(rollback)
    files = []
    for index, obj in enumerate(sent):
        if obj["apiVersion"].partition("/")[0] not in BUILTIN_GROUPS:
            continue  # CRD kinds: the API server validates them in deploy's server dry run
        path = tmp_path / f"{index:02d}-{obj['kind'].lower()}.yaml"
        path.write_text(yaml.safe_dump(obj))
        files.append(str(path))
    tool = find_tool("kubernetes-validate")
    assert tool
    checked = subprocess.run([tool, "--strict", *files], capture_output=True, text=True,
                             check=False, timeout=600)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("passed for resource") == len(files)
    assert {"Deployment", "CronJob", "HorizontalPodAutoscaler", "Namespace"} <= {
        obj["kind"] for obj in sent}
