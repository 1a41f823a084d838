"""Who may call the model: one typed list, printed both as NetworkPolicy peers and as Istio
AuthorizationPolicy rules, so the two policies cannot admit different callers.

``callers_of`` reads ``network_policy`` and the exposure (a LoadBalancer or NodePort Service is
open to anyone on the serving port; ``--target kserve`` admits KServe's ingress namespaces on
the serving port and Knative's queue-proxy ports); ``network_ingress`` and
``authorization_rules`` are its two renderings. Under a mesh, ``MeshSettings.check_callers``
has already refused the callers only one of them can express (pod and namespace label
selectors).
tests/render/test_mesh.py evaluates both renderings on a model cluster and checks that they
admit the same sources for every shape of ``network_policy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mlship.config.k8s import NAMESPACE_NAME_LABEL

if TYPE_CHECKING:
    from mlship.config.schema import MlshipConfig

METRICS_PATH = "/metrics"
EXPOSED_SERVICE_TYPES = ("LoadBalancer", "NodePort")
# Knative's queue-proxy sidecar in each KServe pod: requests (8012), autoscaler metrics (9090).
KNATIVE_QUEUE_PROXY_PORTS = (8012, 9090)
CallerKind = Literal["namespace", "namespace_labels", "pods", "same_namespace"]


@dataclass(frozen=True)
class Caller:
    """One admitted source. ``metrics_only``: Prometheus, for ``GET /metrics`` alone (L7;
    the NetworkPolicy, at L4, can only open the port to it)."""

    kind: CallerKind
    labels: tuple[tuple[str, str], ...] = ()  # namespace or pod labels, sorted
    metrics_only: bool = False
    # Ports beyond the serving port this caller may reach (KServe's ingress: the queue-proxy).
    extra_ports: tuple[int, ...] = ()

    @property
    def namespace(self) -> str | None:
        """The namespace this caller names, when it names exactly one."""
        return dict(self.labels).get(NAMESPACE_NAME_LABEL) if self.kind == "namespace" \
            else None


@dataclass(frozen=True)
class Callers:
    """The model's callers, in the order the NetworkPolicy lists them."""

    namespace: str  # the model's own
    port: int  # the container port both policies open
    admitted: tuple[Caller, ...]
    # The Service is exposed outside the cluster (LoadBalancer, NodePort): its traffic comes
    # from node and client addresses no selector can name, so the serving port is open.
    anywhere: bool = False
    # Callers with ports of their own beside the serving port (KServe's ingress namespaces).
    ingress: tuple[Caller, ...] = ()


def callers_of(config: MlshipConfig, target: str = "kubernetes") -> Callers:
    policy = config.network_policy
    kserve = target == "kserve"
    admitted = [_namespace(labels) for labels in policy.allow_namespaces]
    admitted += [Caller("pods", _sorted(labels)) for labels in policy.allow_pods]
    if policy.allow_same_namespace:
        admitted.append(Caller("same_namespace"))
    if policy.prometheus_namespace:
        admitted.append(Caller("namespace", ((NAMESPACE_NAME_LABEL,
                                               policy.prometheus_namespace),),
                               metrics_only=True))
    # Under KServe: the Knative activator and the Istio gateway.
    ingress = tuple(Caller("namespace", ((NAMESPACE_NAME_LABEL, name),),
                           extra_ports=KNATIVE_QUEUE_PROXY_PORTS)
                    for name in (policy.kserve_ingress_namespaces if kserve else ()))
    return Callers(config.namespace.name, config.runtime.port, tuple(admitted),
                   anywhere=not kserve and config.service.type in EXPOSED_SERVICE_TYPES,
                   ingress=ingress)


def _sorted(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _namespace(labels: dict[str, str]) -> Caller:
    by_name = set(labels) == {NAMESPACE_NAME_LABEL}
    return Caller("namespace" if by_name else "namespace_labels", _sorted(labels))


def network_ingress(callers: Callers) -> list[dict[str, Any]]:
    """``spec.ingress`` of the NetworkPolicy: the serving port, from every caller (from anyone
    when exposed); the ingress callers also on their own ports. No callers means nobody may
    connect: no rule at all, never an open one."""
    port = [{"protocol": "TCP", "port": callers.port}]
    rules: list[dict[str, Any]] = [{"ports": port}] if callers.anywhere else []
    peers: list[dict[str, Any]] = []
    for caller in () if callers.anywhere else callers.admitted:  # anyone: admitted already
        labels = dict(caller.labels)
        if caller.kind in ("namespace", "namespace_labels"):
            peers.append({"namespaceSelector": {"matchLabels": labels}})
        elif caller.kind == "pods":
            peers.append({"podSelector": {"matchLabels": labels}})
        else:
            peers.append({"podSelector": {}})
    if peers:
        rules.append({"from": peers, "ports": port})
    for ports, group in _by_ports(callers.ingress):
        rules.append({"from": [{"namespaceSelector": {"matchLabels": dict(caller.labels)}}
                               for caller in group],
                      "ports": [{"protocol": "TCP", "port": number}
                                for number in (callers.port, *ports)]})
    return rules


def _by_ports(ingress: tuple[Caller, ...]) -> list[tuple[tuple[int, ...], list[Caller]]]:
    """The ingress callers grouped by the ports they may reach, in order: one rule each."""
    groups: dict[tuple[int, ...], list[Caller]] = {}
    for caller in ingress:
        groups.setdefault(caller.extra_ports, []).append(caller)
    return list(groups.items())


def authorization_rules(callers: Callers) -> list[dict[str, Any]]:
    """``spec.rules`` of the ALLOW AuthorizationPolicy: one rule for the callers of every path,
    one for Prometheus on ``GET /metrics``. No rules is Istio's allow-nothing policy."""
    def namespaces(metrics_only: bool) -> list[str]:
        found: list[str] = []
        for caller in callers.admitted:
            if caller.metrics_only != metrics_only:
                continue
            name = callers.namespace if caller.kind == "same_namespace" else caller.namespace
            if name is None:  # refused at load under a mesh (MeshSettings.check_callers)
                raise ValueError(f"caller {caller} has no namespace name")
            if name not in found:
                found.append(name)
        return found

    port = str(callers.port)  # Istio writes ports as strings
    rules: list[dict[str, Any]] = []
    everything = namespaces(False)
    if callers.anywhere:  # a rule without `from` admits every source, on the serving port
        rules.append({"to": [{"operation": {"ports": [port]}}]})
    elif everything:
        rules.append({"from": [{"source": {"namespaces": everything}}],
                      "to": [{"operation": {"ports": [port]}}]})
    # A namespace already admitted to every path needs no metrics-only rule.
    scrapers = [] if callers.anywhere else \
        [name for name in namespaces(True) if name not in everything]
    if scrapers:
        rules.append({"from": [{"source": {"namespaces": scrapers}}],
                      "to": [{"operation": {"ports": [port], "methods": ["GET"],
                                            "paths": [METRICS_PATH]}}]})
    for ports, group in _by_ports(callers.ingress):
        rules.append({"from": [{"source": {"namespaces": [caller.namespace for caller in group]}}],
                      "to": [{"operation": {"ports": [str(number) for number in
                                                      (callers.port, *ports)]}}]})
    return rules
