"""What mlship applied, as an ApplySet (KEP-3659, what ``kubectl apply --prune --applyset``
uses): so a deploy prunes the objects a previous render had and this one has not, and
``mlship delete`` removes everything.

The parent is a ConfigMap ``mlship-applyset-<app>`` in the app's namespace, labelled
``applyset.kubernetes.io/id`` (``applyset-<base64url(sha256(name.namespace.ConfigMap.))>-v1``)
and annotated with ``applyset.kubernetes.io/tooling: mlship/<version>`` and
``applyset.kubernetes.io/contains-group-kinds`` (``Deployment.apps,Service,...``); every object
a deploy applies carries ``applyset.kubernetes.io/part-of: <id>``. Before applying, the parent's
group-kinds become the union of the old and the new ones (an interrupted deploy still knows
what to prune); after a successful rollout, members not in the render are deleted and the
parent is narrowed to the new set. Two kinds of member are never pruned by a deploy: the
content-addressed settings ConfigMaps (``immutable``; ``revisions.prune_config_maps`` keeps
the ones a kept revision needs) and a Namespace (deleting it would delete the app).
"""

from __future__ import annotations

import base64
import copy
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlship import __version__
from mlship.errors import ClusterError
from mlship.kube import api_errors

if TYPE_CHECKING:
    from mlship.kube import Cluster

PREFIX = "applyset.kubernetes.io/"
ID_LABEL = f"{PREFIX}id"
PART_OF = f"{PREFIX}part-of"
TOOLING = f"{PREFIX}tooling"
GROUP_KINDS = f"{PREFIX}contains-group-kinds"
TOOL = "mlship"
# Every kind mlship renders or a rollout makes: where `mlship delete` looks by the app's labels
# too (objects of a deploy older than the ApplySet; kinds whose CRD is absent are skipped).
APP_KINDS = frozenset({
    "Namespace", "ServiceAccount", "Secret", "ConfigMap", "PersistentVolumeClaim", "Service",
    "NetworkPolicy.networking.k8s.io", "Deployment.apps", "CronJob.batch",
    "InferenceService.serving.kserve.io", "HorizontalPodAutoscaler.autoscaling",
    "PodDisruptionBudget.policy", "ServiceMonitor.monitoring.coreos.com",
    "PrometheusRule.monitoring.coreos.com", "VirtualService.networking.istio.io",
    "DestinationRule.networking.istio.io", "HTTPRoute.gateway.networking.k8s.io"})


def group_kind(obj: dict[str, Any]) -> str:
    """``Deployment.apps``, ``Service``: how the ApplySet annotation names a kind."""
    api_version = str(obj.get("apiVersion", ""))
    group = api_version.split("/", maxsplit=1)[0] if "/" in api_version else ""
    return f"{obj['kind']}.{group}" if group else str(obj["kind"])


def key(obj: dict[str, Any]) -> tuple[str, str | None, str]:
    meta = obj["metadata"]
    return group_kind(obj), meta.get("namespace"), meta["name"]


@dataclass(frozen=True)
class ApplySet:
    app: str
    namespace: str

    @property
    def name(self) -> str:
        return f"mlship-applyset-{self.app}"

    @property
    def id(self) -> str:
        digest = hashlib.sha256(f"{self.name}.{self.namespace}.ConfigMap.".encode()).digest()
        return f"applyset-{base64.urlsafe_b64encode(digest).decode().rstrip('=')}-v1"

    def members(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copies of ``objects`` labelled as members."""
        labelled = []
        for obj in objects:
            copied = copy.deepcopy(obj)
            copied["metadata"].setdefault("labels", {})[PART_OF] = self.id
            labelled.append(copied)
        return labelled

    def parent(self, kinds: set[str], labels: dict[str, str] | None = None) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "labels": {**(labels or {}), ID_LABEL: self.id},
                             "annotations": {TOOLING: f"{TOOL}/v{__version__}",
                                             GROUP_KINDS: ",".join(sorted(kinds))}}}

    def live_parent(self, cluster: Cluster) -> dict[str, Any] | None:
        """The parent as the cluster has it; ClusterError when another tool owns the name."""
        live = cluster.get("v1", "ConfigMap", self.name, self.namespace)
        if live is None:
            return None
        meta = live["metadata"]
        tooling = (meta.get("annotations") or {}).get(TOOLING, "")
        if (meta.get("labels") or {}).get(ID_LABEL) != self.id or \
                not tooling.startswith(f"{TOOL}/"):
            raise ClusterError(f"ConfigMap {self.namespace}/{self.name} exists but is not "
                               f"mlship's ApplySet for {self.app} (tooling {tooling!r})",
                               hint="rename or remove that ConfigMap; mlship keeps its "
                                    "inventory there")
        return live

    def recorded_kinds(self, live: dict[str, Any] | None) -> set[str]:
        value = ((live or {}).get("metadata", {}).get("annotations") or {}).get(GROUP_KINDS, "")
        return {part for part in value.split(",") if part}

    def listed(self, cluster: Cluster, kinds: set[str],
               selector: str | None = None) -> list[dict[str, Any]]:
        """Every live member of the kinds (or what ``selector`` picks in the app's namespace),
        each with apiVersion and kind set."""
        found = []
        for kind_name in sorted(kinds):
            kind, _, group = kind_name.partition(".")
            resource = _resource(cluster, group, kind)
            if resource is None:
                continue  # a CRD removed since: nothing of that kind can exist
            with api_errors(f"listing {kind_name} of ApplySet {self.name}"):
                items = resource.get(namespace=self.namespace if resource.namespaced else None,
                                     label_selector=selector or f"{PART_OF}={self.id}").items
            for item in items:
                obj = item.to_dict()
                obj["apiVersion"], obj["kind"] = resource.group_version, resource.kind
                found.append(obj)
        return found


def _resource(cluster: Cluster, group: str, kind: str) -> Any:
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    try:
        with api_errors(f"looking up {kind}"):
            return cluster.dynamic.resources.get(group=group, kind=kind, preferred=True)
    except ResourceNotFoundError:
        return None


def prunable(live: list[dict[str, Any]], keep: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Members no longer rendered, less those a deploy must never delete (see above)."""
    kept = {key(obj) for obj in keep}
    return [obj for obj in live if key(obj) not in kept and obj["kind"] != "Namespace"
            and not (obj["kind"] == "ConfigMap" and obj.get("immutable"))]


def with_parent(cluster: Cluster | None, applyset: ApplySet, objects: list[dict[str, Any]],
                labels: dict[str, str]) -> tuple[list[dict[str, Any]], set[str]]:
    """The members and, right after the Namespace (it must exist first), the parent whose
    group-kinds are the union of what it recorded and what this render has; also the kinds
    recorded before (what to look through when pruning). No cluster: a client dry run."""
    members = applyset.members(objects)
    recorded = applyset.recorded_kinds(applyset.live_parent(cluster)) if cluster else set()
    parent = applyset.parent(recorded | {group_kind(obj) for obj in members}, labels)
    at = sum(1 for obj in members if obj["kind"] == "Namespace")
    return [*members[:at], parent, *members[at:]], recorded


def prune(cluster: Cluster, applyset: ApplySet, applied: list[dict[str, Any]],
          recorded: set[str], labels: dict[str, str], *, dry_run: bool = False) -> list[str]:
    """Delete the members ``applied`` (this deploy's objects, parent included) no longer has,
    then narrow the parent to this render's kinds; returns what was (or would be) deleted."""
    from mlship.kube import describe

    members = [obj for obj in applied if (obj["metadata"].get("labels") or {}).get(PART_OF)]
    kinds = {group_kind(obj) for obj in members}
    live = applyset.listed(cluster, recorded | kinds)
    doomed = prunable(live, members)
    if dry_run:
        return [describe(obj) for obj in doomed]
    for obj in doomed:
        meta = obj["metadata"]
        cluster.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
    kept = {key(obj) for obj in members}
    for obj in live:  # an unrendered Namespace stays (it holds the app), but leaves the set
        if obj["kind"] == "Namespace" and key(obj) not in kept:
            cluster.patch("v1", "Namespace", obj["metadata"]["name"], None,
                          {"metadata": {"labels": {PART_OF: None}}})
    cluster.apply(applyset.parent(kinds, labels))
    return [describe(obj) for obj in doomed]


def everything(cluster: Cluster, applyset: ApplySet,
               app_selector: str) -> list[dict[str, Any]]:
    """What ``mlship delete`` removes: the ApplySet's members, and what carries the app's
    labels (a rollout's canaries and arms, kept settings ConfigMaps, objects of a deploy
    older than the ApplySet), in deletion order: dependents first, the parent, then the
    Namespace."""
    from mlship.cluster.apply import KIND_ORDER

    parent = applyset.live_parent(cluster)
    kinds = applyset.recorded_kinds(parent) | APP_KINDS
    found: dict[tuple[str, str | None, str], dict[str, Any]] = {}
    for obj in applyset.listed(cluster, kinds) + applyset.listed(
            cluster, kinds - {"Namespace"}, app_selector):
        found.setdefault(key(obj), obj)
    found.pop(("ConfigMap", applyset.namespace, applyset.name), None)  # the parent: last
    order = {kind: index for index, kind in enumerate(KIND_ORDER)}
    chosen = sorted(found.values(), key=lambda obj: -order.get(obj["kind"], len(KIND_ORDER)))
    namespaces = [obj for obj in chosen if obj["kind"] == "Namespace"]
    others = [obj for obj in chosen if obj["kind"] != "Namespace"]
    return others + ([parent] if parent else []) + namespaces
