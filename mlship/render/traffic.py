"""The objects that split traffic between a stable and a canary version, as plain dicts.

``mlship render`` prints them at weight 0 (everything to stable) and ``mlship rollout`` patches
the same shapes with other weights, so a rendered route and a live one cannot drift apart. No
I/O here: every function is a pure transformation, tested in tests/render/test_traffic.py.

Pods carry ``mlship.dev/track``: ``stable`` on the rendered Deployment, ``canary`` on the
canary one. The shared Service selects both (replica ratio); ``NAME-stable`` and
``NAME-canary`` select one each, for Istio and Gateway API weights.
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import TYPE_CHECKING, Any

from mlship.config.rollout import canary_name, stable_service_name

if TYPE_CHECKING:
    from mlship.config.rollout import HeaderMatch, RolloutSettings

TRACK_LABEL = "mlship.dev/track"
STABLE, CANARY = "stable", "canary"
TRACK_ENV = "MLSHIP_RUNTIME_TRACK"
REVISION_ENV = "MLSHIP_RUNTIME_REVISION"
REVISION_ANNOTATION = "mlship.dev/revision"
MODEL_CONTAINER = "model"
ISTIO_API = "networking.istio.io/v1"
GATEWAY_API = "gateway.networking.k8s.io/v1"


def revision_of(namespace: str, name: str, image: str) -> str:
    """The ``revision`` label a canary's metrics carry: one per app, namespace and image, so
    staging and prod (or two apps) sharing a Prometheus never mix their canary series."""
    return hashlib.sha256(f"{namespace}/{name}@{image}".encode()).hexdigest()[:10]


def track_services(name: str, namespace: str, labels: dict[str, str],
                   selector: dict[str, str], port: int) -> list[dict[str, Any]]:
    """``NAME-stable`` and ``NAME-canary``: the two backends a weighted route points at."""
    services: list[dict[str, Any]] = []
    for track, service in ((STABLE, stable_service_name(name)), (CANARY, canary_name(name))):
        services.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service, "namespace": namespace,
                         "labels": {**labels, TRACK_LABEL: track}},
            "spec": {"type": "ClusterIP", "selector": {**selector, TRACK_LABEL: track},
                     "ports": [{"name": "http", "protocol": "TCP", "port": port,
                                "targetPort": "http"}]},
        })
    return services


def arm_track(index: int) -> str:
    """The track label of a bandit's arm ``index``: 0 is the stable, 1 the canary (so two arms
    use exactly the rendered Services), then ``canary-2``, ``canary-3``, ..."""
    return STABLE if index == 0 else CANARY if index == 1 else f"{CANARY}-{index}"


def arm_service(name: str, index: int) -> str:
    """Service (and, past the stable, Deployment) name of arm ``index``."""
    return stable_service_name(name) if index == 0 else canary_name(name) if index == 1 \
        else f"{canary_name(name)}-{index}"


def split(name: str, weight: int) -> list[tuple[str, int]]:
    """The stable/canary split as (Service, weight) backends."""
    return [(stable_service_name(name), 100 - weight), (canary_name(name), weight)]


def istio_http(name: str, namespace: str, port: int, weight: int,
               matches: list[HeaderMatch] | tuple[()] = (),
               backends: list[tuple[str, int]] | None = None) -> list[dict[str, Any]]:
    """``spec.http`` of the VirtualService: header-matched requests to the canary (A/B), then
    the weighted default route (``backends``, (Service, weight) pairs: a bandit's arms;
    default the stable/canary split at ``weight``)."""
    def destination(service: str) -> dict[str, Any]:
        return {"host": f"{service}.{namespace}.svc.cluster.local", "port": {"number": port}}

    routes: list[dict[str, Any]] = []
    if matches:
        headers = {match.name.lower(): {match.type: match.value} for match in matches}
        routes.append({"name": "ab", "match": [{"headers": headers}],
                       "route": [{"destination": destination(canary_name(name)),
                                  "weight": 100}]})
    routes.append({"name": "primary", "route": [
        {"destination": destination(service), "weight": share}
        for service, share in backends or split(name, weight)]})
    return routes


def virtual_service(name: str, namespace: str, labels: dict[str, str], port: int,
                    settings: RolloutSettings, weight: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": list(settings.istio.hosts) or [name]}
    if settings.istio.gateways:
        spec["gateways"] = list(settings.istio.gateways)
    spec["http"] = istio_http(name, namespace, port, weight)
    return {"apiVersion": ISTIO_API, "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": spec}


def gateway_rules(name: str, port: int, weight: int,
                  matches: list[HeaderMatch] | tuple[()] = (),
                  backends: list[tuple[str, int]] | None = None) -> list[dict[str, Any]]:
    """``spec.rules`` of the HTTPRoute: an A/B rule when headers are given, then the split
    (``backends`` as in ``istio_http``)."""
    rules: list[dict[str, Any]] = []
    if matches:
        headers = [{"type": "Exact" if match.type == "exact" else "RegularExpression",
                    "name": match.name, "value": match.value} for match in matches]
        rules.append({"matches": [{"headers": headers}],
                      "backendRefs": [{"name": canary_name(name), "port": port,
                                       "weight": 100}]})
    rules.append({"backendRefs": [{"name": service, "port": port, "weight": share}
                                  for service, share in backends or split(name, weight)]})
    return rules


def http_route(name: str, namespace: str, labels: dict[str, str], port: int,
               settings: RolloutSettings, weight: int = 0) -> dict[str, Any]:
    refs = [_parent_ref(ref.model_dump()) for ref in settings.gateway.parent_refs]
    # No Gateway named: attach to the app's own Service, a GAMMA route for mesh traffic.
    spec: dict[str, Any] = {"parentRefs": refs or [{"group": "", "kind": "Service",
                                                    "name": name, "port": port}]}
    if settings.gateway.hostnames:
        spec["hostnames"] = list(settings.gateway.hostnames)
    spec["rules"] = gateway_rules(name, port, weight)
    return {"apiVersion": GATEWAY_API, "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": spec}


def _parent_ref(ref: dict[str, Any]) -> dict[str, Any]:
    out = {"group": ref["group"], "kind": ref["kind"], "name": ref["name"]}
    if ref.get("namespace"):
        out["namespace"] = ref["namespace"]
    if ref.get("section_name"):
        out["sectionName"] = ref["section_name"]
    return out


def canary_replicas(traffic: str, stable_replicas: int, weight: int) -> int:
    """Pods the canary needs for ``weight`` % of the traffic.

    Weighted routes (istio, gateway) split requests exactly, so the canary gets its share of
    the stable's pods. With replicas the Service spreads requests over pods, so the stable is
    left alone and the canary gets c pods with c / (stable + c) close to the weight; at 100 %
    the Service's selector is switched to the canary instead (see ``effective_weight``).
    """
    stable = max(1, stable_replicas)
    if traffic != "replicas":
        return max(1, math.ceil(stable * weight / 100))
    if weight >= 100:
        return stable
    return min(stable, max(1, round(stable * weight / (100 - weight))))


def effective_weight(traffic: str, stable_replicas: int, canary: int, weight: int) -> float:
    """The share the canary really gets, in % (the replica ratio is coarse with few pods)."""
    if traffic != "replicas" or weight >= 100 or weight == 0:
        return float(weight)
    return round(100 * canary / (max(1, stable_replicas) + canary), 1)


def canary_deployment(stable: dict[str, Any], image: str, revision: str,
                      replicas: int, track: str = CANARY) -> dict[str, Any]:
    """The canary Deployment: the live stable's pod template with ``image``, the canary track
    label, and the runtime's metric labels, under its own name and selector. A bandit's
    further arms pass their own ``track`` (``canary-2``: Deployment ``NAME-canary-2``)."""
    meta, spec = stable["metadata"], stable["spec"]
    name = canary_name(meta["name"]) + track.removeprefix(CANARY)
    template = copy.deepcopy(spec["template"])
    template_meta = template.setdefault("metadata", {})
    template_meta.pop("creationTimestamp", None)
    template_meta["labels"] = {**template_meta.get("labels", {}), TRACK_LABEL: track}
    container = model_container(template["spec"]["containers"])
    container["image"] = image
    container["imagePullPolicy"] = pull_policy(image)
    env = [item for item in container.get("env") or []
           if item.get("name") not in (TRACK_ENV, REVISION_ENV)]
    container["env"] = [*env, {"name": TRACK_ENV, "value": track},
                        {"name": REVISION_ENV, "value": revision}]
    body: dict[str, Any] = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": meta["namespace"],
                     "labels": {**_own_labels(meta), TRACK_LABEL: track},
                     "annotations": {REVISION_ANNOTATION: revision}},
        "spec": {"replicas": replicas, "revisionHistoryLimit": 2,
                 "selector": {"matchLabels": {**spec["selector"]["matchLabels"],
                                              TRACK_LABEL: track}},
                 "template": template},
    }
    if spec.get("strategy"):
        body["spec"]["strategy"] = spec["strategy"]
    return body


def _own_labels(meta: dict[str, Any]) -> dict[str, str]:
    """A rendered object's labels for an object the rollout makes beside it: without the
    ApplySet membership (mlship.cluster.applyset), so a deploy never prunes a running canary."""
    return {key: value for key, value in (meta.get("labels") or {}).items()
            if not key.startswith("applyset.kubernetes.io/")}


def pull_policy(image: str) -> str:
    """The imagePullPolicy of ``image``, for render and for a rollout that swaps the image (so
    a promoted template is the render's): Always for a tag in a registry (Always re-checks
    it); IfNotPresent for a digest, which never changes, and for a reference with no registry:
    an image loaded onto the nodes (kind load, k3d image import) that no node could pull."""
    from mlship.config.quantities import parse_image_ref

    if "@" in image:
        return "IfNotPresent"
    try:
        registry = parse_image_ref(image).registry
    except ValueError:
        return "Always"
    return "Always" if registry else "IfNotPresent"


def model_container(containers: list[dict[str, Any]]) -> dict[str, Any]:
    """The container serving the model: the one named ``model`` (rendered), else the first."""
    for container in containers:
        if container.get("name") == MODEL_CONTAINER:
            return container
    return containers[0]


def arm_service_object(canary: dict[str, Any], name: str, index: int) -> dict[str, Any]:
    """The Service of a bandit's arm ``index`` >= 2, shaped like the live ``NAME-canary`` one
    (ports, selector, labels as rendered) but selecting the arm's own track."""
    track = arm_track(index)
    meta, spec = canary["metadata"], canary["spec"]
    ports = [{key: port[key] for key in ("name", "protocol", "port", "targetPort") if key in port}
             for port in spec["ports"]]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": arm_service(name, index), "namespace": meta["namespace"],
                         "labels": {**_own_labels(meta), TRACK_LABEL: track}},
            "spec": {"type": "ClusterIP", "selector": {**spec["selector"], TRACK_LABEL: track},
                     "ports": ports}}
