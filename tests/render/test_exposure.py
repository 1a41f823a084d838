"""What the rendered NetworkPolicy admits follows the exposure chosen: a ClusterIP Service
only the configured callers, a LoadBalancer or NodePort Service anyone on the serving port,
`--target kserve` also KServe's ingress namespaces."""

from __future__ import annotations

import pytest
import yaml

from mlship.config.load import validate_config
from mlship.render.bundle import render

PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
SERVING = [{"protocol": "TCP", "port": 8080}]


def _config(**sections: object):
    return validate_config({"name": "iris", "model": {"source": "iris.onnx"}, **sections})


def _ingress(bundle) -> list[dict]:
    return yaml.safe_load(bundle.files["k8s/networkpolicy.yaml"])["spec"]["ingress"]


def test_cluster_ip_admits_only_the_configured_callers(iris_signature) -> None:
    bundle = render(_config(network_policy={"allow_namespaces": [{"team": "web"}]}),
                    iris_signature)
    assert _ingress(bundle) == [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "web"}}}, {"podSelector": {}},
        PROMETHEUS], "ports": SERVING}]


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
def test_an_exposed_service_admits_anyone_on_the_serving_port_only(
        iris_signature, service_type: str) -> None:
    """Its traffic arrives from node and client addresses no selector can name: without this
    rule a LoadBalancer Service drops every outside request."""
    bundle = render(_config(service={"type": service_type}), iris_signature)
    assert _ingress(bundle) == [{"ports": SERVING}]
    service = yaml.safe_load(bundle.files["k8s/service.yaml"])
    assert service["spec"]["type"] == service_type
    policy = yaml.safe_load(bundle.files["k8s/networkpolicy.yaml"])["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]  # egress stays closed
    assert len(policy["egress"]) == 1


def test_kserve_admits_the_knative_and_istio_ingress_namespaces(iris_signature) -> None:
    bundle = render(_config(), iris_signature, target="kserve")
    same, ingress = _ingress(bundle)
    assert same == {"from": [{"podSelector": {}}, PROMETHEUS], "ports": SERVING}
    assert [source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for source in ingress["from"]] == ["knative-serving", "istio-system"]
    # The serving port (raw deployment mode) and Knative's queue-proxy (serverless mode).
    assert [port["port"] for port in ingress["ports"]] == [8080, 8012, 9090]
    assert bundle.files["k8s/networkpolicy.yaml"] == render(
        _config(service={"type": "LoadBalancer"}), iris_signature,
        target="kserve").files["k8s/networkpolicy.yaml"]  # KServe makes its own Services


def test_kserve_ingress_namespaces_follow_the_config(iris_signature) -> None:
    bundle = render(_config(network_policy={"kserve_ingress_namespaces": ["kourier-system"]}),
                    iris_signature, target="kserve")
    assert _ingress(bundle)[1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kourier-system"}}}]
    # Only KServe's pods are reached through its ingress; a Deployment's are not.
    plain = render(_config(network_policy={"kserve_ingress_namespaces": ["kourier-system"]}),
                   iris_signature)
    assert "kourier-system" not in plain.files["k8s/networkpolicy.yaml"]
    assert len(_ingress(plain)) == 1


def test_the_callers_are_one_typed_value_of_the_context(iris_signature) -> None:
    from mlship.render.context import build_context

    context = build_context(_config(service={"type": "NodePort"}), iris_signature)
    assert context.callers.anywhere
    assert [caller.namespace for caller in context.callers.admitted
            if caller.metrics_only] == ["monitoring"]
    kserve = build_context(_config(), iris_signature, target="kserve")
    assert not kserve.callers.anywhere
    assert [caller.namespace for caller in kserve.callers.ingress] == \
        ["knative-serving", "istio-system"]
    assert {caller.extra_ports for caller in kserve.callers.ingress} == {(8012, 9090)}
