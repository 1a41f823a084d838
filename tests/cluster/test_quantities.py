"""The Kubernetes quantity grammar, with the real API server as the reference: every form is
sent in a ResourceQuota, the server's canonical form is read back, and mlship must read both as
the same number; what the server refuses, mlship refuses. Then the pre-deploy quota check runs
on quotas written in those forms (a quota of ``1e9`` once failed it with a bare ValueError)."""

from __future__ import annotations

import shutil
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import pytest
import yaml

from mlship.config.quantities import parse_quantity
from mlship.errors import ClusterError
from mlship.kube import connect

pytestmark = pytest.mark.k8s

VALID = ["1e9", "1E9", "1e+3", "1e-3", "2E3", ".5", "1.", "+1", "1.5", "1.Gi", "512Mi", "1Gi",
         "500m", "1k", "1M", "1G", "100n", "2u", "1e-9", "1.0001", "1E", "0", "0.1", "1e0",
         "12e-1", "+.5Ki"]
INVALID = ["1e", "1e1.5", "1.5.5", "0x10", "1GB", "1 Gi", "1Ki2", "--1", "1KiB"]
# Go's parser reads a missing number as 0 and stores "0"; the documented grammar (and the
# OpenAPI pattern kubectl validates with) has no such form: in mlship.yaml they are typos.
LAX = [".", "e3", "Mi"]
MILLI = Decimal("0.001")


def stored(value: Decimal) -> Decimal:
    """What the server keeps: precision below 1m rounds up to the next 1m (100n -> 1m)."""
    return value if value == value.quantize(MILLI) else value.quantize(MILLI, ROUND_CEILING)


def _quota(namespace: str, name: str, hard: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"hard": hard}}


def test_every_form_the_server_accepts_reads_as_its_canonical_form(control_plane,
                                                                   k8s_namespace) -> None:
    cluster = connect(control_plane.kubeconfig)
    for index, text in enumerate(VALID):
        live = cluster.apply(_quota(k8s_namespace, f"q{index}", {"requests.cpu": text}))
        canonical = live["spec"]["hard"]["requests.cpu"]
        assert stored(parse_quantity(text)) == parse_quantity(canonical), (text, canonical)


def test_what_the_server_refuses_mlship_refuses(control_plane, k8s_namespace) -> None:
    cluster = connect(control_plane.kubeconfig)
    for index, text in enumerate(INVALID):
        with pytest.raises(ClusterError, match=r"quantities must match the regular expression|"
                                               r"unable to parse quantity's suffix"):
            cluster.apply(_quota(k8s_namespace, f"bad{index}", {"requests.cpu": text}))
        with pytest.raises(ValueError, match=r".*"):
            parse_quantity(text)
    for index, text in enumerate(LAX):
        kept = cluster.apply(_quota(k8s_namespace, f"lax{index}", {"requests.cpu": text}))
        assert parse_quantity(kept["spec"]["hard"]["requests.cpu"]) == 0
        with pytest.raises(ValueError, match=r".*"):
            parse_quantity(text)
    # A negative quantity is grammatical; a quota (or mlship.yaml) refuses it as a value.
    with pytest.raises(ClusterError, match="must be greater than or equal to 0"):
        cluster.apply(_quota(k8s_namespace, "negative", {"requests.cpu": "-1"}))
    assert parse_quantity("-1") == Decimal(-1)


def _objects(tmp_path: Path, model: Path, namespace: str) -> list[dict]:
    from mlship.cluster.apply import plan
    from mlship.config.load import load_config
    from mlship.model.signatures import model_signatures
    from mlship.render.bundle import render

    project = tmp_path / "project"
    project.mkdir()
    shutil.copyfile(model, project / "model.onnx")
    (project / "mlship.yaml").write_text(yaml.safe_dump({
        "name": "iris", "model": {"source": "model.onnx"}, "namespace": {"name": namespace},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                      "limits": {"cpu": "1", "memory": "1e9"}}}))
    loaded = load_config(project / "mlship.yaml")
    return plan(render(loaded, model_signatures(loaded, project / "mlship.yaml")[0]))


def test_the_quota_check_reads_quotas_in_every_form(control_plane, k8s_namespace, tmp_path,
                                                    iris_model) -> None:
    from mlship.cluster.apply import preview
    from mlship.cluster.objects import PreflightError
    from mlship.cluster.quota import check_quota

    cluster = connect(control_plane.kubeconfig)
    cluster.apply(_quota(k8s_namespace, "exponents", {
        "requests.memory": "1e9", "limits.memory": "4e9", "requests.cpu": "+1.",
        "limits.cpu": ".5e1", "count/configmaps": "1e2", "pods": "1E1"}))
    previews = preview(cluster, _objects(tmp_path, iris_model, k8s_namespace))
    check = check_quota(cluster, previews)
    assert (check.status, check.detail) == ("passed", "fits ResourceQuota exponents")
    tight = cluster.apply(_quota(k8s_namespace, "tight", {"requests.cpu": "3e-1"}))
    assert tight["spec"]["hard"]["requests.cpu"] == "300e-3"  # the server's canonical form
    with pytest.raises(PreflightError) as caught:
        check_quota(cluster, previews)
    assert caught.value.message == (
        f"ResourceQuota {k8s_namespace}/tight: requests.cpu: the rollout needs 500m (up to 2 "
        "pods of iris x 250m during the rolling update), 300m of 300m remaining (0m used by "
        "others)")
