"""The parts of deploy that need no cluster: plan order, overrides, normalising, extracting
owned fields, the CUDA driver table and node matching. The cluster side is
tests/cluster/test_deploy.py."""

from __future__ import annotations

import pytest

from mlship.cluster.apply import normalize, plan, unified_diff, with_overrides
from mlship.cluster.checks import _admits, _node_cuda
from mlship.cluster.fields import extract
from mlship.cluster.quota import _pod_totals, _surge
from mlship.config import cuda
from mlship.config.load import validate_config
from mlship.errors import BadInputError
from mlship.render.bundle import render


def test_plan_orders_by_dependency_and_leaves_out_the_kustomization(iris_signature) -> None:
    config = validate_config({"name": "iris", "model": {"source": "iris.onnx"},
                              "autoscaling": {"enabled": True},
                              "monitoring": {"service_monitor": True, "prometheus_rule": True}})
    kinds = [obj["kind"] for obj in plan(render(config, iris_signature))]
    assert kinds[:7] == ["Namespace", "ServiceAccount", "ConfigMap", "Service",
                         "NetworkPolicy", "Deployment", "HorizontalPodAutoscaler"]
    assert kinds.index("PodDisruptionBudget") < kinds.index("ServiceMonitor")
    assert "Kustomization" not in kinds


def test_image_and_namespace_overrides_go_through_the_config() -> None:
    config = validate_config({"name": "iris", "model": {"source": "iris.onnx"}})
    digest = "sha256:" + "a" * 64
    pinned = with_overrides(config, namespace="team-a",
                            image=f"127.0.0.1:5000/ml/iris:1@{digest}")
    assert pinned.namespace.name == "team-a"
    assert (pinned.image.registry, pinned.image.repository, pinned.image.digest) == (
        "127.0.0.1:5000", "ml/iris", digest)
    tagged = with_overrides(config, image="ghcr.io/acme/iris:v2")
    assert (tagged.image.tag_policy, tagged.image.tag, tagged.image.digest) == ("fixed", "v2",
                                                                                  None)
    with pytest.raises(BadInputError, match="not an image reference"):
        with_overrides(config, image="Not An Image")
    with pytest.raises(BadInputError, match=r"namespace\.name"):
        with_overrides(config, namespace="Bad_Name")


def test_normalize_drops_what_the_server_owns() -> None:
    live = {"kind": "Deployment", "metadata": {
        "name": "iris", "uid": "u", "resourceVersion": "7", "generation": 3,
        "creationTimestamp": "t", "managedFields": [{}],
        "annotations": {"deployment.kubernetes.io/revision": "4"}},
        "spec": {"replicas": 2}, "status": {"readyReplicas": 2}}
    assert normalize(live) == {"kind": "Deployment", "metadata": {"name": "iris"},
                               "spec": {"replicas": 2}}
    assert live["status"] == {"readyReplicas": 2}  # the input is left alone
    desired = {**normalize(live), "spec": {"replicas": 3}}
    assert "-  replicas: 2\n+  replicas: 3\n" in unified_diff(live, desired)
    assert unified_diff(live, normalize(live)) == ""
    assert unified_diff(None, desired).startswith("--- /dev/null\n+++ mlship/Deployment/iris")


def test_extract_keeps_only_the_managers_fields() -> None:
    obj = {"metadata": {"name": "iris", "labels": {"a": "1", "b": "2"}, "managedFields": [
        {"manager": "mlship", "operation": "Apply", "fieldsV1": {
            "f:metadata": {"f:labels": {".": {}, "f:a": {}}},
            "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                'k:{"name":"model"}': {".": {}, "f:name": {}, "f:image": {},
                                       "f:ports": {'k:{"containerPort":8080,"protocol":"TCP"}':
                                                   {".": {}, "f:containerPort": {},
                                                    "f:protocol": {}}},
                                       "f:securityContext": {"f:capabilities": {
                                           "f:drop": {'v:"ALL"': {}}}}}}}}}}},
        {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {
            "f:metadata": {"f:labels": {"f:b": {}}}}}]},
        "spec": {"replicas": 2, "progressDeadlineSeconds": 600, "template": {"spec": {
            "containers": [
                {"name": "model", "image": "x:1", "terminationMessagePath": "/dev/t",
                 "ports": [{"containerPort": 8080, "protocol": "TCP", "name": "http"}],
                 "securityContext": {"capabilities": {"drop": ["ALL", "NET_RAW"]}}},
                {"name": "sidecar", "image": "y"}]}}}}
    assert extract(obj, "mlship") == {
        "metadata": {"labels": {"a": "1"}},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "model", "image": "x:1",
             "ports": [{"containerPort": 8080, "protocol": "TCP"}],
             "securityContext": {"capabilities": {"drop": ["ALL"]}}}]}}}}
    assert extract(obj, "nobody") == {}


def test_cuda_driver_table() -> None:
    assert cuda.min_driver(12, 4) == (550, 54, 14)
    assert cuda.min_driver(12, 7) is None  # there was no CUDA 12.7
    assert cuda.cuda_of_driver((535, 104, 5)) == (12, 2)
    assert cuda.cuda_of_driver((550, 54, 14)) == (12, 4)
    assert cuda.cuda_of_driver((440, 33)) is None
    assert cuda.parse_driver_version("550.54.15") == (550, 54, 15)
    assert cuda.parse_driver_version("550") is None
    assert cuda.format_driver((535, 104, 5)) == "535.104.05"


def test_node_cuda_reads_every_generation_of_feature_discovery_labels() -> None:
    assert _node_cuda({"nvidia.com/cuda.runtime-version.major": "12",
                       "nvidia.com/cuda.runtime-version.minor": "8",
                       "nvidia.com/cuda.driver-version.full": "570.86.15"}) == ((12, 8),
                                                                               "570.86.15")
    assert _node_cuda({"nvidia.com/cuda.runtime.major": "11",
                       "nvidia.com/cuda.runtime.minor": "8"}) == ((11, 8), "unknown")
    assert _node_cuda({"nvidia.com/cuda.driver-version.full": "535.104.05"}) == ((12, 2),
                                                                                "535.104.05")
    assert _node_cuda({"nvidia.com/cuda.driver.major": "550", "nvidia.com/cuda.driver.minor":
                       "54", "nvidia.com/cuda.driver.rev": "15"}) == ((12, 4), "550.54.15")
    assert _node_cuda({"kubernetes.io/os": "linux"}) == (None, "")


def test_node_admission_follows_selector_taints_and_tolerations() -> None:
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    node = {"metadata": {"labels": {"pool": "gpu"}}, "spec": {"taints": [taint]}}
    tolerating = {"nodeSelector": {"pool": "gpu"},
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]}
    assert _admits(node, tolerating)
    assert not _admits(node, {"nodeSelector": {"pool": "gpu"}})  # taint not tolerated
    assert not _admits(node, {**tolerating, "nodeSelector": {"pool": "cpu"}})
    assert not _admits({**node, "spec": {**node["spec"], "unschedulable": True}}, tolerating)
    soft = {"metadata": {}, "spec": {"taints": [{**taint, "effect": "PreferNoSchedule"}]}}
    assert _admits(soft, {})


def test_pod_totals_and_surge() -> None:
    totals = _pod_totals({"containers": [
        {"resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                       "limits": {"cpu": "2", "memory": "512Mi", "nvidia.com/gpu": 1}}}]})
    assert totals["requests.cpu"] == totals["cpu"]
    assert str(totals["requests.cpu"]) == "0.250"
    assert totals["requests.nvidia.com/gpu"] == 1  # an extended resource's request = its limit
    assert totals["pods"] == 1
    assert _surge({"strategy": {"rollingUpdate": {"maxSurge": 1}}}, 4) == 1
    assert _surge({}, 4) == 1  # the default 25 %, rounded up
    assert _surge({"strategy": {"rollingUpdate": {"maxSurge": "50%"}}}, 3) == 2
