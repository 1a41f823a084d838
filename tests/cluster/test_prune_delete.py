"""The ApplySet inventory against the real API server: a deploy labels what it applies and
records the kinds in its parent; the next deploy prunes what the render dropped (and nothing
else); `mlship delete` removes everything mlship applied, a rollout's canary included."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import wait_for
from mlship_contract import check_success
from typer.testing import CliRunner

from mlship.cli import app

pytestmark = pytest.mark.k8s
PART_OF = "applyset.kubernetes.io/part-of"


def mlship(*args: str | Path) -> Any:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    result.document = json.loads(result.stdout) if "--json" in args and result.stdout else None
    return result


def _project(directory: Path, model: Path, namespace: str, **sections: Any) -> Path:
    directory.mkdir(exist_ok=True)
    shutil.copyfile(model, directory / "model.onnx")
    config = {"name": "iris", "model": {"source": "model.onnx", "version": "1"},
              "namespace": {"name": namespace},
              "image": {"registry": "127.0.0.1:5000", "repository": "mlship-test/prune",
                        "tag_policy": "fixed", "tag": "1"}, **sections}
    (directory / "mlship.yaml").write_text(yaml.safe_dump(config))
    return directory / "mlship.yaml"


def _applyset_id(namespace: str) -> str:
    """kubectl's formula (KEP-3659): base64url(sha256(<name>.<namespace>.<Kind>.<group>))."""
    digest = hashlib.sha256(f"mlship-applyset-iris.{namespace}.ConfigMap.".encode()).digest()
    return f"applyset-{base64.urlsafe_b64encode(digest).decode().rstrip('=')}-v1"


def _get(cp, path: str) -> dict[str, Any] | None:
    return cp.get(path)


def test_deploy_prunes_what_the_render_dropped_and_delete_removes_the_rest(
        control_plane, k8s_namespace: str, iris_model: Path, tmp_path: Path) -> None:
    ns, kube = k8s_namespace, control_plane.kubeconfig
    config = _project(tmp_path / "p", iris_model, ns,
                      autoscaling={"enabled": True, "min_replicas": 1, "max_replicas": 3})
    first = mlship("deploy", "-c", config, "--kubeconfig", kube, "--skip-checks", "--json")
    assert first.exit_code == 0, first.stderr
    applyset = _applyset_id(ns)
    parent = _get(control_plane, f"/api/v1/namespaces/{ns}/configmaps/mlship-applyset-iris")
    assert parent is not None
    assert parent["metadata"]["labels"]["applyset.kubernetes.io/id"] == applyset
    annotations = parent["metadata"]["annotations"]
    assert annotations["applyset.kubernetes.io/tooling"].startswith("mlship/v")
    kinds = annotations["applyset.kubernetes.io/contains-group-kinds"].split(",")
    assert kinds == sorted(kinds)
    assert {"Deployment.apps", "HorizontalPodAutoscaler.autoscaling", "Namespace",
            "PodDisruptionBudget.policy", "Service"} <= set(kinds)
    hpa = f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/iris"
    pdb = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/iris"
    assert _get(control_plane, hpa)["metadata"]["labels"][PART_OF] == applyset
    # Not mlship's: a ConfigMap of someone else, and a member of another ApplySet.
    control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "notes", "namespace": ns}, "data": {"a": "1"}})
    control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "theirs", "namespace": ns,
                                      "labels": {PART_OF: "applyset-someone-else-v1"}}})
    # A rollout's canary, made by the rollout's own code: the app's labels, no membership.
    from mlship.kube import connect
    from mlship.render.traffic import canary_deployment

    cluster = connect(kube)
    stable = cluster.get("apps/v1", "Deployment", "iris", ns)
    cluster.apply(canary_deployment(stable, "127.0.0.1:5000/mlship-test/prune:2", "r2", 1),
                  force=True)
    canary = _get(control_plane, f"/apis/apps/v1/namespaces/{ns}/deployments/iris-canary")
    assert PART_OF not in canary["metadata"]["labels"]

    _project(tmp_path / "p", iris_model, ns, autoscaling={"enabled": False}, replicas=1,
             disruption_budget={"enabled": False})
    diff = mlship("diff", "-c", config, "--kubeconfig", kube, "--json")
    assert diff.exit_code == 0, diff.stderr
    document = check_success(("diff",), diff.stdout)
    pruned = {(e["kind"], e["name"]) for e in document["objects"] if e["action"] == "prune"}
    assert pruned == {("HorizontalPodAutoscaler", "iris"), ("PodDisruptionBudget", "iris")}
    preview = mlship("deploy", "-c", config, "--kubeconfig", kube, "--skip-checks",
                     "--dry-run", "server", "--json")
    assert preview.exit_code == 0, preview.stderr
    assert sorted(check_success(("deploy",), preview.stdout)["pruned"]) == [
        f"HorizontalPodAutoscaler {ns}/iris", f"PodDisruptionBudget {ns}/iris"]
    assert _get(control_plane, hpa) is not None  # a dry run deletes nothing

    second = mlship("deploy", "-c", config, "--kubeconfig", kube, "--skip-checks", "--json")
    assert second.exit_code == 0, second.stderr
    assert sorted(check_success(("deploy",), second.stdout)["pruned"]) == [
        f"HorizontalPodAutoscaler {ns}/iris", f"PodDisruptionBudget {ns}/iris"]
    assert "pruned 2 object(s) an earlier deploy applied" in second.stderr
    assert _get(control_plane, hpa) is None
    assert _get(control_plane, pdb) is None
    narrowed = _get(control_plane, f"/api/v1/namespaces/{ns}/configmaps/mlship-applyset-iris")
    kinds = narrowed["metadata"]["annotations"]["applyset.kubernetes.io/contains-group-kinds"]
    assert "HorizontalPodAutoscaler.autoscaling" not in kinds
    for kept in ("deployments/iris", "deployments/iris-canary"):
        assert _get(control_plane, f"/apis/apps/v1/namespaces/{ns}/{kept}") is not None
    for kept in ("notes", "theirs"):
        assert _get(control_plane, f"/api/v1/namespaces/{ns}/configmaps/{kept}") is not None

    listed = mlship("delete", "-c", config, "--kubeconfig", kube, "--dry-run", "--json")
    assert listed.exit_code == 0, listed.stderr
    planned = check_success(("delete",), listed.stdout)["objects"]
    assert ("Deployment", "iris-canary", "would delete") in {
        (o["kind"], o["name"], o["action"]) for o in planned}
    assert [o["kind"] for o in planned][-2:] == ["ConfigMap", "Namespace"]  # parent, then ns
    assert planned[-2]["name"] == "mlship-applyset-iris"
    assert planned[-1]["action"] == "kept"
    assert _get(control_plane, f"/apis/apps/v1/namespaces/{ns}/deployments/iris") is not None

    gone = mlship("delete", "-c", config, "--kubeconfig", kube, "--json")
    assert gone.exit_code == 0, gone.stderr
    actions = {(o["kind"], o["name"]): o["action"]
               for o in check_success(("delete",), gone.stdout)["objects"]}
    assert actions[("Deployment", "iris")] == actions[("Deployment", "iris-canary")] == "deleted"
    assert actions[("ConfigMap", "mlship-applyset-iris")] == "deleted"
    assert actions[("Namespace", ns)] == "kept"
    left = control_plane.get(f"/api/v1/namespaces/{ns}/configmaps")["items"]
    assert {item["metadata"]["name"] for item in left} == {"notes", "theirs",
                                                           "kube-root-ca.crt"}
    for kind in ("deployments", "services"):
        group = "apis/apps/v1" if kind == "deployments" else "api/v1"
        assert control_plane.get(f"/{group}/namespaces/{ns}/{kind}")["items"] == []
    again = mlship("delete", "-c", config, "--kubeconfig", kube)
    assert again.exit_code == 0, again.stderr
    assert "nothing to delete" in again.stderr or "1 kept" in again.stderr


def test_delete_namespace_takes_the_namespace_mlship_applied(control_plane, k8s_namespace,
                                                            iris_model, tmp_path) -> None:
    ns, kube = k8s_namespace, control_plane.kubeconfig
    config = _project(tmp_path / "p", iris_model, ns)
    assert mlship("deploy", "-c", config, "--kubeconfig", kube, "--skip-checks",
                  "--no-wait").exit_code == 0
    result = mlship("delete", "-c", config, "--kubeconfig", kube, "--delete-namespace",
                    "--timeout", "120", "--json")
    assert result.exit_code == 0, result.stderr
    objects = check_success(("delete",), result.stdout)["objects"]
    assert objects[-1] == {"kind": "Namespace", "name": ns, "namespace": None,
                           "action": "deleted"}
    wait_for(lambda: control_plane.get(f"/api/v1/namespaces/{ns}") is None, 60,
             f"namespace {ns} to go")
