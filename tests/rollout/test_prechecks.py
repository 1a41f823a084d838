"""A rollout checks what deploy checks before it changes anything: the new image must be in
its registry (the open loopback registry on 127.0.0.1:5000), or it stops at once, exit 6."""

from __future__ import annotations

import pytest
import yaml
from mlship_contract import check_failure, mlship
from mlship_prometheus import PrometheusServer
from mlship_rollout import NAME, deployment

from mlship.errors import ExitCode

pytestmark = [pytest.mark.k8s, pytest.mark.registry, pytest.mark.prometheus]


def test_a_canary_of_a_missing_tag_is_refused_before_anything_changes(
        control_plane, k8s_namespace, iris_model, tmp_path):
    config = tmp_path / "mlship.yaml"
    config.write_text(yaml.safe_dump({
        "name": NAME, "model": {"source": str(iris_model)}, "replicas": 2,
        "image": {"registry": "127.0.0.1:5000", "repository": "mlship-tests/iris"},
        "namespace": {"name": k8s_namespace, "create": False},
        "rollout": {"traffic": "replicas", "interval": "2s"}}))
    kubeconfig = str(control_plane.kubeconfig)
    deployed = mlship("deploy", "-c", str(config), "--kubeconfig", kubeconfig, "--skip-checks",
                      cwd=tmp_path)
    assert deployed.code == 0, deployed
    stable_before = deployment(control_plane, k8s_namespace, NAME)
    missing = "127.0.0.1:5000/mlship-tests/iris:does-not-exist"
    with PrometheusServer(tmp_path / "prometheus") as prometheus:
        run = mlship("rollout", "canary", "--image", missing, "--prometheus-url",
                     prometheus.url, "-c", str(config), "--kubeconfig", kubeconfig, "--json",
                     cwd=tmp_path)
    assert run.code == ExitCode.REGISTRY, run
    message = check_failure(("rollout", "canary"), run.stdout, ExitCode.REGISTRY)["error"][
        "message"]
    assert message.startswith(f"image {missing}: not in the registry (HTTP 404")
    assert deployment(control_plane, k8s_namespace, f"{NAME}-canary") == {}
    after = deployment(control_plane, k8s_namespace, NAME)
    assert after["spec"] == stable_before["spec"]
    assert "mlship.dev/rollout" not in (after["metadata"].get("annotations") or {})
