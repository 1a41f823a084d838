"""A Deployment's revisions: rolling back to one the way ``kubectl rollout undo`` does (but as a
server-side apply by field manager ``mlship``), the ReplicaSets that hold them, and the
content-addressed settings ConfigMaps no kept revision uses any more.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from mlship.cluster.fields import extract
from mlship.errors import RolloutError
from mlship.kube import FIELD_MANAGER, match_labels

if TYPE_CHECKING:
    from mlship.kube import Cluster

REVISION = "deployment.kubernetes.io/revision"


def rollback(cluster: Cluster, namespace: str, name: str, *,
             to_revision: int | None = None) -> int:
    """Restore an earlier revision of Deployment ``namespace/name``; returns that revision.

    ``kubectl rollout undo`` semantics: the pod template of the ReplicaSet carrying revision
    ``to_revision`` (default: the newest revision before the current one) becomes the
    Deployment's template again. It is sent as a server-side apply by field manager ``mlship``
    holding every field mlship already owned (so replicas, strategy etc. stay as they are) and
    taking the template over from any other manager (``kubectl set image``). The deployment
    controller then scales that ReplicaSet back up and numbers it as the newest revision.
    Only the pod template is restored: ConfigMaps and other objects stay as applied.
    Raises RolloutError (exit 8) when there is no such revision.
    """
    obj, revision = rollback_object(cluster, namespace, name, to_revision=to_revision)
    if obj is not None:
        cluster.apply(obj, force=True)
    return revision


def rollback_object(cluster: Cluster, namespace: str, name: str, *,
                    to_revision: int | None = None) -> tuple[dict[str, Any] | None, int]:
    """What ``rollback`` applies (None when the template already is that revision's)."""
    deployment = cluster.get("apps/v1", "Deployment", name, namespace)
    if deployment is None:
        raise RolloutError(f"Deployment {namespace}/{name} does not exist: nothing to roll back")
    current = int((deployment["metadata"].get("annotations") or {}).get(REVISION, 0))
    by_revision = {revision: rs for rs in owned_replica_sets(cluster, deployment)
                   if (revision := int((rs["metadata"].get("annotations") or {})
                                       .get(REVISION, 0)))}
    earlier = [revision for revision in by_revision if revision < current]
    target = to_revision if to_revision is not None else max(earlier, default=None)
    if target is None or target not in by_revision:
        known = ", ".join(str(r) for r in sorted(by_revision)) or "none"
        raise RolloutError(
            f"Deployment {namespace}/{name}: no revision {target or f'before {current}'} to "
            f"roll back to (revisions kept: {known})",
            hint="the first deploy has nothing to go back to; older ones are pruned past "
                 "revisionHistoryLimit")
    template = _template(by_revision[target]["spec"]["template"])
    if template == _template(deployment["spec"]["template"]):
        return None, target
    owned = extract(deployment, FIELD_MANAGER)
    meta = {"name": name, "namespace": namespace,
            **{key: owned["metadata"][key] for key in ("labels", "annotations")
               if key in owned.get("metadata", {})}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {**owned.get("spec", {}), "template": template}}, target


def _template(template: dict[str, Any]) -> dict[str, Any]:
    """A pod template without the ReplicaSet's hash label and the server's null timestamp."""
    clean = copy.deepcopy(template)
    meta = {key: value for key, value in (clean.get("metadata") or {}).items()
            if value is not None}
    meta.get("labels", {}).pop("pod-template-hash", None)
    clean["metadata"] = meta
    return clean


def owned_replica_sets(cluster: Cluster, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """The ReplicaSets the Deployment controls (by owner uid, not just by labels)."""
    meta = deployment["metadata"]
    selector = match_labels(deployment["spec"]["selector"])
    return [rs for rs in cluster.list("apps/v1", "ReplicaSet", meta["namespace"], selector)
            if any(ref.get("uid") == meta["uid"] and ref.get("controller")
                   for ref in rs["metadata"].get("ownerReferences") or [])]


def prune_config_maps(cluster: Cluster, namespace: str, name: str) -> list[str]:
    """Delete this app's content-addressed (immutable) ConfigMaps that no workload uses any more.

    Every settings change makes a new ConfigMap (its name is its hash) so that a rollback gets
    its own settings back; old ones stay as long as a kept ReplicaSet revision (or a canary, or
    the CronJob) refers to them, and are removed after that. Returns the names deleted.
    """
    selector = f"app.kubernetes.io/name={name},app.kubernetes.io/managed-by={FIELD_MANAGER}"
    candidates = [item for item in cluster.list("v1", "ConfigMap", namespace, selector)
                  if item.get("immutable")]
    if not candidates:
        return []
    used: set[str] = set()
    for api_version, kind in (("apps/v1", "Deployment"), ("apps/v1", "ReplicaSet"),
                              ("batch/v1", "CronJob")):
        for workload in cluster.list(api_version, kind, namespace):
            used |= config_maps_used(workload)
    removed = []
    for item in candidates:
        config_map = item["metadata"]["name"]
        if config_map not in used and cluster.delete("v1", "ConfigMap", config_map, namespace):
            removed.append(config_map)
    return removed


def config_maps_used(workload: dict[str, Any]) -> set[str]:
    """Names of the ConfigMaps a Deployment's, ReplicaSet's or CronJob's pods refer to."""
    spec = workload.get("spec") or {}
    if workload.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    names: set[str] = set()
    for container in [*(pod.get("containers") or []), *(pod.get("initContainers") or [])]:
        for source in container.get("envFrom") or []:
            names.add((source.get("configMapRef") or {}).get("name", ""))
        for variable in container.get("env") or []:
            names.add(((variable.get("valueFrom") or {}).get("configMapKeyRef") or {})
                      .get("name", ""))
    for volume in pod.get("volumes") or []:
        names.add((volume.get("configMap") or {}).get("name", ""))
        for source in (volume.get("projected") or {}).get("sources") or []:
            names.add((source.get("configMap") or {}).get("name", ""))
    names.discard("")
    return names
