"""mlship.kube against the real loopback control plane: every failure is one ClusterError line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlship.errors import ClusterError, ExitCode
from mlship.kube import ApplyConflictError, ForbiddenError, connect

pytestmark = pytest.mark.k8s


def _config_map(namespace: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": namespace}, "data": data}


def test_apply_twice_leaves_the_object_unchanged(control_plane, k8s_namespace):
    cluster = connect(control_plane.kubeconfig)
    first = cluster.apply(_config_map(k8s_namespace, {"a": "1"}))
    second = cluster.apply(_config_map(k8s_namespace, {"a": "1"}))
    assert first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
    managers = {entry["manager"] for entry in second["metadata"]["managedFields"]}
    assert managers == {"mlship"}


def test_dry_run_changes_nothing(control_plane, k8s_namespace):
    cluster = connect(control_plane.kubeconfig)
    preview = cluster.apply(_config_map(k8s_namespace, {"a": "1"}), dry_run=True)
    assert preview["data"] == {"a": "1"}
    assert cluster.get("v1", "ConfigMap", "settings", k8s_namespace) is None


def test_conflict_names_the_field_and_force_takes_it_over(control_plane, k8s_namespace):
    control_plane.apply(_config_map(k8s_namespace, {"a": "other"}))  # manager mlship-test
    cluster = connect(control_plane.kubeconfig)
    with pytest.raises(ApplyConflictError) as caught:
        cluster.apply(_config_map(k8s_namespace, {"a": "mine"}))
    assert ".data.a" in caught.value.message
    assert "--force-conflicts" in (caught.value.hint or "")
    assert caught.value.exit_code == ExitCode.CLUSTER
    taken = cluster.apply(_config_map(k8s_namespace, {"a": "mine"}), force=True)
    assert taken["data"]["a"] == "mine"


def test_rbac_refusal_is_a_forbidden_line(control_plane, k8s_namespace):
    viewer = control_plane.create_user("kube-viewer")
    control_plane.bind_cluster_role("kube-viewer", "view", namespace=k8s_namespace)
    cluster = connect(viewer)
    with pytest.raises(ForbiddenError) as caught:
        cluster.apply(_config_map(k8s_namespace, {"a": "1"}))
    assert "forbidden" in caught.value.message
    assert "kube-viewer" in caught.value.message


def test_unknown_kind_says_which_crd_is_missing(control_plane):
    cluster = connect(control_plane.kubeconfig)
    with pytest.raises(ClusterError, match="does not serve Widget"):
        cluster.resource("example.com/v1", "Widget")


def test_unreachable_cluster_is_one_line(tmp_path: Path, control_plane):
    text = control_plane.kubeconfig.read_text()
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(text.replace(control_plane.server, "https://127.0.0.1:1"))
    with pytest.raises(ClusterError, match="cannot reach the Kubernetes API"):
        connect(dead, timeout=2)


def test_missing_kubeconfig_names_the_file(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(ClusterError, match="no such kubeconfig file"):
        connect(tmp_path / "absent")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ClusterError, match="no kubeconfig"):
        connect(None)


def test_unknown_context_lists_the_known_ones(control_plane):
    with pytest.raises(ClusterError) as caught:
        connect(control_plane.kubeconfig, context="nope")
    assert "nope" in caught.value.message
    assert "contexts in it" in (caught.value.hint or "")
