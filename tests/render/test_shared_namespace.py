"""Two apps rendered into one namespace, applied and deleted with plain `kubectl -k` against the
real API server: deleting one app leaves the shared Namespace and the other app in place."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from mlship.config.load import validate_config
from mlship.render.bundle import render, write_bundle

pytestmark = pytest.mark.k8s


def _kubectl(kubeconfig: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    kubectl = Path(os.environ.get("MLSHIP_K8S_BIN", "/var/cache/mlship/k8s/bin")) / "kubectl"
    return subprocess.run([str(kubectl), "--kubeconfig", str(kubeconfig), *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_kubectl_delete_k_of_one_app_keeps_the_shared_namespace(
        control_plane, iris_signature, tmp_path: Path) -> None:
    namespace = f"shared-{uuid.uuid4().hex[:6]}"
    kube = control_plane.kubeconfig
    for app in ("fraud", "churn"):
        config = validate_config({"name": app, "model": {"source": "iris.onnx"},
                                  "namespace": {"name": namespace}})
        write_bundle(render(config, iris_signature), tmp_path / app)
    assert (tmp_path / "fraud/k8s/namespace/namespace.yaml").read_text() == \
        (tmp_path / "churn/k8s/namespace/namespace.yaml").read_text()  # the same object
    try:
        for folder in ("fraud/k8s/namespace", "fraud/k8s", "churn/k8s"):
            applied = _kubectl(kube, "apply", "-k", tmp_path / folder)
            assert applied.returncode == 0, applied.stderr
        deleted = _kubectl(kube, "delete", "-k", tmp_path / "fraud/k8s", "--wait=false")
        assert deleted.returncode == 0, deleted.stderr
        assert f"namespace/{namespace}" not in deleted.stdout
        phase = _kubectl(kube, "get", "namespace", namespace, "-o", "jsonpath={.status.phase}")
        assert phase.stdout == "Active", phase.stderr
        left = _kubectl(kube, "get", "deployments", "-n", namespace, "-o", "name")
        assert left.stdout.split() == ["deployment.apps/churn"], left.stderr
    finally:
        _kubectl(kube, "delete", "namespace", namespace, "--wait=false")
