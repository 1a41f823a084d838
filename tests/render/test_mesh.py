"""Istio mesh security: the AuthorizationPolicy admits the NetworkPolicy's callers, no more and
no fewer, for every shape of ``network_policy``; both evaluated here on a model cluster by the
rules Kubernetes and Istio document, not by mlship's own code. The objects are applied to the
real API server against Istio's CRDs (tests/k8s/crds/).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from mlship.config.load import validate_config
from mlship.errors import ConfigError
from mlship.render.bundle import Bundle, render

NAME_LABEL = "kubernetes.io/metadata.name"
APP_NAMESPACE = "mlship"
PORT = 8080
# The model cluster: namespaces (name -> labels) and one caller pod in each.
NAMESPACES = {APP_NAMESPACE: {"team": "ml"}, "frontend": {"team": "web"},
              "monitoring": {"team": "ops"}, "batch": {"team": "ml"}, "other": {}}
PATHS = ("/v2/models/iris/infer", "/metrics", "/v2/health/ready")
METHODS = ("GET", "POST")


def _config(policy: dict[str, Any], mesh: str = "istio") -> Any:
    return validate_config({"name": "iris", "model": {"source": "iris.onnx"},
                            "namespace": {"name": APP_NAMESPACE},
                            "network_policy": policy, "mesh": {"type": mesh}})


def _objects(bundle: Bundle) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in bundle.objects}


# -- the documented semantics of each policy ---------------------------------------------------

def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def network_policy_admits(policy: dict[str, Any], namespace: str, port: int) -> bool:
    """A pod in ``namespace`` connecting to ``port``: some ingress rule's ``from`` peer and
    port match. A peer with only podSelector means the policy's own namespace."""
    labels = {**NAMESPACES[namespace], NAME_LABEL: namespace}
    for rule in policy["spec"].get("ingress") or []:
        if not any(item["port"] == port for item in rule["ports"]):
            continue
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                if _selects(peer["namespaceSelector"], labels):
                    return True
            elif namespace == policy["metadata"]["namespace"] and peer["podSelector"] == {}:
                return True
    return False


def authorization_admits(policy: dict[str, Any], namespace: str, port: int, method: str,
                         path: str) -> bool:
    """An ALLOW policy admits a request some rule matches: every ``from`` source field and
    every ``to`` operation field given must match; no rules admit nothing."""
    assert policy["spec"]["action"] == "ALLOW"
    for rule in policy["spec"].get("rules") or []:
        sources = [item["source"] for item in rule.get("from", [{"source": {}}])]
        operations = [item["operation"] for item in rule.get("to", [{"operation": {}}])]
        source_ok = any(namespace in source.get("namespaces", [namespace]) for source in sources)
        operation_ok = any(str(port) in op.get("ports", [str(port)])
                           and method in op.get("methods", [method])
                           and path in op.get("paths", [path]) for op in operations)
        if source_ok and operation_ok:
            return True
    return False


def _expected(policy: dict[str, Any], namespace: str, path: str, method: str) -> bool:
    """What network_policy says, read from the config: the caller admitted to every path, or
    Prometheus to GET /metrics."""
    everywhere = (policy.get("allow_same_namespace", True) and namespace == APP_NAMESPACE) or \
        {NAME_LABEL: namespace} in policy.get("allow_namespaces", [])
    prometheus = policy.get("prometheus_namespace", "monitoring") == namespace
    return everywhere or (prometheus and path == "/metrics" and method == "GET")


NAMESPACE_LISTS = [[], [{NAME_LABEL: "frontend"}],
                   [{NAME_LABEL: "frontend"}, {NAME_LABEL: "batch"}],
                   [{NAME_LABEL: APP_NAMESPACE}], [{NAME_LABEL: "monitoring"}]]
POLICIES = [{"allow_same_namespace": same, "allow_namespaces": listed,
             "prometheus_namespace": prometheus}
            for same, listed, prometheus in itertools.product(
                (True, False), NAMESPACE_LISTS, ("monitoring", APP_NAMESPACE, "frontend", None))]


@pytest.mark.parametrize("policy", POLICIES,
                         ids=[f"policy{index}" for index in range(len(POLICIES))])
def test_authorization_policy_admits_exactly_the_network_policys_callers(
        policy: dict[str, Any], iris_signature) -> None:
    objects = _objects(render(_config(policy), iris_signature))
    network, authorization = objects["NetworkPolicy"], objects["AuthorizationPolicy"]
    assert authorization["spec"]["selector"] == network["spec"]["podSelector"]
    for namespace in NAMESPACES:
        allowed = {(method, path) for method in METHODS for path in PATHS
                   if authorization_admits(authorization, namespace, PORT, method, path)}
        expected = {(method, path) for method in METHODS for path in PATHS
                    if _expected(policy, namespace, path, method)}
        assert allowed == expected, namespace
        # L4 cannot see paths: the NetworkPolicy opens the port to a source exactly when the
        # AuthorizationPolicy admits it to some request.
        assert network_policy_admits(network, namespace, PORT) == bool(allowed), namespace
        for other_port in (PORT + 1, 15020):
            assert not network_policy_admits(network, namespace, other_port)
            assert not any(authorization_admits(authorization, namespace, other_port, m, p)
                           for m in METHODS for p in PATHS)


def test_no_callers_is_allow_nothing_in_both(iris_signature) -> None:
    objects = _objects(render(_config({"allow_same_namespace": False,
                                       "prometheus_namespace": None}), iris_signature))
    assert objects["NetworkPolicy"]["spec"]["ingress"] == []
    assert "rules" not in objects["AuthorizationPolicy"]["spec"]  # Istio: ALLOW nothing


@pytest.mark.parametrize(("policy", "fragment"), [
    ({"allow_namespaces": [{"team": "web"}]},
     "network_policy.allow_namespaces.0: .* under mesh.type istio"),
    ({"allow_namespaces": [{NAME_LABEL: "a", "team": "web"}]}, "matches namespaces by name"),
    ({"allow_pods": [{"app": "frontend"}]}, "network_policy.allow_pods: .*cannot select pods"),
])
def test_callers_only_one_policy_could_express_are_refused_under_a_mesh(
        policy: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        _config(policy)
    _config(policy, mesh="none")  # without a mesh the NetworkPolicy alone expresses them


def test_mesh_pods_join_the_mesh_with_probes_answered_by_the_sidecar(iris_signature) -> None:
    objects = _objects(render(_config({}), iris_signature))
    template = objects["Deployment"]["spec"]["template"]
    assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
    assert template["metadata"]["annotations"]["sidecar.istio.io/rewriteAppHTTPProbers"] == \
        "true"
    probes = [template["spec"]["containers"][0][probe]["httpGet"]["path"]
              for probe in ("startupProbe", "readinessProbe", "livenessProbe")]
    # Rewritten probes reach the app from the sidecar's agent over loopback: neither policy
    # applies, and the paths are the runtime's health endpoints.
    assert probes == ["/v2/health/ready", "/v2/health/ready", "/v2/health/live"]
    peer = objects["PeerAuthentication"]
    assert peer["spec"] == {"selector": objects["NetworkPolicy"]["spec"]["podSelector"],
                            "mtls": {"mode": "STRICT"}}
    egress = objects["NetworkPolicy"]["spec"]["egress"]
    assert {"protocol": "TCP", "port": 15012} in egress[-1]["ports"]  # istiod, for the sidecar


def test_without_a_mesh_nothing_of_it_is_rendered(iris_signature) -> None:
    objects = _objects(render(_config({}, mesh="none"), iris_signature))
    assert not {"PeerAuthentication", "AuthorizationPolicy"} & set(objects)
    template = objects["Deployment"]["spec"]["template"]
    assert "sidecar.istio.io/inject" not in template["metadata"]["labels"]
    assert all("15012" not in str(rule) for rule in objects["NetworkPolicy"]["spec"]["egress"])


@pytest.mark.k8s
def test_mesh_policies_pass_istios_crd_schemas_on_the_api_server(
        control_plane, k8s_namespace: str, iris_signature) -> None:
    config = validate_config({"name": "iris", "model": {"source": "iris.onnx"},
                              "namespace": {"name": k8s_namespace, "create": False},
                              "network_policy": {"allow_namespaces": [{NAME_LABEL: "frontend"}]},
                              "mesh": {"type": "istio"}, "rollout": {"traffic": "istio"}})
    objects = _objects(render(config, iris_signature))
    for kind in ("PeerAuthentication", "AuthorizationPolicy", "VirtualService"):
        body = _strict_apply(control_plane, objects[kind])
        assert body["spec"] == objects[kind]["spec"], kind
    # Control: the same path refuses what Istio's schema does not allow.
    bad = {**objects["PeerAuthentication"], "spec": {"mtls": {"mode": "STRICTEST"}}}
    status, body = _strict_apply(control_plane, bad, allow_error=True)
    assert status == 422, body
    assert "STRICTEST" in body["message"]
    typo = {**objects["AuthorizationPolicy"], "spec": {**objects["AuthorizationPolicy"]["spec"],
                                                      "rule": []}}
    status, body = _strict_apply(control_plane, typo, allow_error=True)
    # (server-side apply answers an undeclared field with 500 "failed to create typed patch")
    assert status >= 400, body
    assert ".spec.rule: field not declared in schema" in body["message"]


def _strict_apply(control_plane, obj: dict[str, Any], allow_error: bool = False) -> Any:
    """Server-side apply, dry run, refusing unknown fields (fieldValidation=Strict)."""
    meta = obj["metadata"]
    path = control_plane.resource_path(obj["apiVersion"], obj["kind"], meta["namespace"],
                                       meta["name"])
    status, body = control_plane.request(
        "PATCH", path, obj, content_type="application/apply-patch+yaml",
        query={"fieldManager": "mlship", "dryRun": "All", "fieldValidation": "Strict"},
        allow_error=allow_error)
    return (status, body) if allow_error else body
