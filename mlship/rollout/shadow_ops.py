"""The cluster objects of a shadow rollout: the shadow Deployment and its Service, and the
mirroring settings on the stable Deployment's model container.

The shadow's pods carry ``app.kubernetes.io/instance: NAME-shadow`` (and track ``shadow``), so
the app's Services, which select the instance label, never send them a request: their only
traffic is what the stable runtime mirrors to the ``NAME-shadow`` Service. ``remove`` undoes
all of it and is safe to run again (from `mlship rollout abort` in another process too).

When the app has its rendered NetworkPolicy (egress of its pods limited to DNS and storage),
two more objects open exactly the mirror's path: ``NAME-shadow-mirror`` lets the app's pods
reach the shadow's pods on the Service's target ports, and ``NAME-shadow`` holds the shadow's
pods to what the app's are held to, with ingress from the app's pods only.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from mlship.errors import ClusterError, RolloutError
from mlship.render.traffic import canary_deployment, model_container
from mlship.rollout.state import ROLLOUT_MANAGER

if TYPE_CHECKING:
    from mlship_runtime.compare import Tolerances

    from mlship.kube import Cluster

SHADOW = "shadow"
NETWORK_API = "networking.k8s.io/v1"
INSTANCE_LABEL = "app.kubernetes.io/instance"
WRITE_ATTEMPTS = 5


def shadow_name(name: str) -> str:
    """The shadow Deployment and Service of app ``name``."""
    return f"{name}-{SHADOW}"


def shadow_env_names() -> tuple[str, ...]:
    from mlship_runtime.settings import BY_NAME

    return tuple(BY_NAME[key].env for key in ("shadow_url", "shadow_sample_rate",
                                              "shadow_max_per_second", "shadow_tolerances"))


def shadow_url(name: str, namespace: str, port: int) -> str:
    return f"http://{shadow_name(name)}.{namespace}.svc:{port}"


def shadow_objects(stable: dict[str, Any], service: dict[str, Any], image: str,
                   revision: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shadow Deployment (one replica, the stable's pod template with ``image``) and the
    Service the stable mirrors to, shaped like the app's own Service."""
    name = stable["metadata"]["name"]
    selector = dict((service.get("spec") or {}).get("selector") or {})
    if INSTANCE_LABEL not in selector:
        raise RolloutError(f"Service {stable['metadata']['namespace']}/{name} does not select "
                           f"{INSTANCE_LABEL}, so shadow pods could not be kept out of it",
                           hint="render and deploy the app with this mlship first")
    deployment = canary_deployment(stable, image, revision, 1, SHADOW)
    deployment["metadata"]["name"] = shadow_name(name)
    deployment["metadata"]["labels"][INSTANCE_LABEL] = shadow_name(name)
    spec = deployment["spec"]
    spec["selector"]["matchLabels"][INSTANCE_LABEL] = shadow_name(name)
    spec["template"]["metadata"]["labels"][INSTANCE_LABEL] = shadow_name(name)
    spec.pop("strategy", None)
    container = model_container(spec["template"]["spec"]["containers"])
    container["env"] = [item for item in container.get("env") or []
                        if item.get("name") not in shadow_env_names()]
    ports = [{key: value for key, value in port.items() if key != "nodePort"}
             for port in copy.deepcopy((service.get("spec") or {}).get("ports") or [])]
    body = {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": shadow_name(name), "namespace": stable["metadata"]["namespace"],
                         "labels": dict(deployment["metadata"]["labels"])},
            "spec": {"type": "ClusterIP", "ports": ports,
                     "selector": dict(spec["selector"]["matchLabels"])}}
    return deployment, body


def network_policies(policy: dict[str, Any] | None, shadow: dict[str, Any],
                     service: dict[str, Any]) -> list[dict[str, Any]]:
    """The two NetworkPolicies of the mirror's path, from the app's live ``policy`` (none
    without it: nothing limits the pods then)."""
    if policy is None:
        return []
    meta, spec = policy["metadata"], policy.get("spec") or {}
    app_pods = copy.deepcopy(spec.get("podSelector") or {})
    shadow_pods = {"matchLabels": dict(shadow["spec"]["selector"]["matchLabels"])}
    ports = [{"protocol": port.get("protocol", "TCP"),
              "port": port.get("targetPort", port.get("port"))}
             for port in (service.get("spec") or {}).get("ports") or []]
    labels = dict(shadow["metadata"]["labels"])
    name, namespace = shadow["metadata"]["name"], meta["namespace"]
    mirror = {"apiVersion": NETWORK_API, "kind": "NetworkPolicy",
              "metadata": {"name": f"{name}-mirror", "namespace": namespace, "labels": labels},
              "spec": {"podSelector": app_pods, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"podSelector": shadow_pods}], "ports": ports}]}}
    own = {"apiVersion": NETWORK_API, "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": namespace, "labels": labels},
           "spec": {"podSelector": shadow_pods, "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"podSelector": app_pods}], "ports": ports}],
                    "egress": copy.deepcopy(spec.get("egress") or [])}}
    return [mirror, own]


def create(cluster: Cluster, stable: dict[str, Any], image: str, revision: str) -> list[str]:
    """The shadow's objects, applied; their ``Kind/name``s."""
    name, namespace = stable["metadata"]["name"], stable["metadata"]["namespace"]
    service = cluster.get("v1", "Service", name, namespace) or {}
    deployment, shadow_service = shadow_objects(stable, service, image, revision)
    policy = cluster.get(NETWORK_API, "NetworkPolicy", name, namespace)
    objects = [*network_policies(policy, deployment, service), shadow_service, deployment]
    for obj in objects:  # the path open before the pod starts
        cluster.apply(obj, force=True)
    return [f"{obj['kind']}/{obj['metadata']['name']}" for obj in objects]


def mirroring_env(url: str, sample_rate: float, max_per_second: float,
                  tolerances: Tolerances) -> list[dict[str, str]]:
    values = (url, repr(float(sample_rate)), repr(float(max_per_second)), tolerances.to_json())
    return [{"name": env, "value": value}
            for env, value in zip(shadow_env_names(), values, strict=True)]


def set_stable_env(cluster: Cluster, namespace: str, name: str,
                   env: list[dict[str, str]]) -> bool:
    """The stable model container's mirroring settings become ``env`` (empty: none); a rolling
    update of the stable pods (maxUnavailable 0: no gap). False when nothing changed."""
    names = shadow_env_names()
    for _ in range(WRITE_ATTEMPTS):
        stable = cluster.get("apps/v1", "Deployment", name, namespace)
        if stable is None:
            raise RolloutError(f"Deployment {namespace}/{name} disappeared")
        containers = [dict(item) for item in stable["spec"]["template"]["spec"]["containers"]]
        container = model_container(containers)
        kept = [item for item in container.get("env") or [] if item.get("name") not in names]
        if [*kept, *env] == list(container.get("env") or []):
            return False
        container["env"] = [*kept, *env]
        version = stable["metadata"]["resourceVersion"]
        try:
            cluster.patch("apps/v1", "Deployment", name, namespace,
                          {"metadata": {"resourceVersion": version},
                           "spec": {"template": {"spec": {"containers": containers}}}},
                          field_manager=ROLLOUT_MANAGER)
            return True
        except ClusterError:
            again = cluster.get("apps/v1", "Deployment", name, namespace)
            if again is None or again["metadata"]["resourceVersion"] == version:
                raise
    raise RolloutError(f"Deployment {namespace}/{name} keeps changing; could not set its "
                       "mirroring settings")


def remove(cluster: Cluster, namespace: str, name: str) -> bool:
    """No mirroring on the stable, no shadow objects; True when the stable changed."""
    changed = False
    if cluster.get("apps/v1", "Deployment", name, namespace) is not None:
        changed = set_stable_env(cluster, namespace, name, [])
    # Looked up first: a rollout's role may read Services without deleting them, and every
    # canary's restore passes here.
    for api_version, kind, target in (
            ("apps/v1", "Deployment", shadow_name(name)), ("v1", "Service", shadow_name(name)),
            (NETWORK_API, "NetworkPolicy", shadow_name(name)),
            (NETWORK_API, "NetworkPolicy", f"{shadow_name(name)}-mirror")):
        if cluster.get(api_version, kind, target, namespace) is not None:
            cluster.delete(api_version, kind, target, namespace)
    return changed
