"""A Deployment's history as mlship made it: every kept revision with its image, model
version, settings and the change that made it, who made it and when.

The revisions are the Deployment's own ReplicaSets (what ``kubectl rollout history`` reads);
what made each one is recorded on that ReplicaSet as the annotation ``mlship.dev/change``
(``deploy``, ``promote``, ``undo``, ``rollback``), by whichever mlship command made it, after
the rollout completed. A ReplicaSet is not an object mlship applies, so the record never shows
as a difference to ``mlship diff`` and never rolls a pod.
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mlship.cluster.revisions import REVISION, owned_replica_sets

if TYPE_CHECKING:
    from mlship.kube import Cluster

CHANGE = "mlship.dev/change"
VERSION_LABEL = "app.kubernetes.io/version"


@dataclass(frozen=True)
class Change:
    action: str  # deploy | promote | undo | rollback
    detail: str
    by: str
    at: str

    @classmethod
    def now(cls, action: str, detail: str) -> Change:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry in a minimal container
            user = "unknown"
        return cls(action, detail, f"{user}@{socket.gethostname()}",
                   datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


@dataclass(frozen=True)
class Revision:
    number: int
    image: str
    version: str | None
    config_map: str | None  # the content-addressed settings ConfigMap: the settings' hash
    created: str
    current: bool
    change: Change | None  # None: made by something other than mlship, or before it recorded

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def history(cluster: Cluster, namespace: str, name: str) -> list[Revision]:
    """Every kept revision, oldest first; the Deployment's current one marked."""
    from mlship.errors import RolloutError
    from mlship.render.traffic import model_container

    deployment = cluster.get("apps/v1", "Deployment", name, namespace)
    if deployment is None:
        raise RolloutError(f"Deployment {namespace}/{name} does not exist: no history",
                           hint="deploy it first (mlship deploy), or check --namespace")
    current = (deployment["metadata"].get("annotations") or {}).get(REVISION)
    revisions = []
    for rs in owned_replica_sets(cluster, deployment):
        annotations = rs["metadata"].get("annotations") or {}
        number = annotations.get(REVISION)
        if not number:
            continue
        template = rs["spec"]["template"]
        pod = template["spec"]
        config_maps = [source["configMapRef"]["name"] for container in pod["containers"]
                       for source in container.get("envFrom") or [] if "configMapRef" in source]
        revisions.append(Revision(
            int(number), str(model_container(pod["containers"])["image"]),
            (template.get("metadata", {}).get("labels") or {}).get(VERSION_LABEL),
            next((c for c in config_maps if c.startswith(f"{name}-config-")), None),
            str(rs["metadata"].get("creationTimestamp") or ""), number == current,
            _change(annotations.get(CHANGE))))
    return sorted(revisions, key=lambda revision: revision.number)


def _change(text: str | None) -> Change | None:
    try:
        raw = json.loads(text) if text else None
        return Change(**raw) if isinstance(raw, dict) else None
    except (TypeError, ValueError):
        return None


def record_change(cluster: Cluster, namespace: str, name: str, change: Change) -> None:
    """Note ``change`` on the ReplicaSet of the Deployment's current revision."""
    deployment = cluster.get("apps/v1", "Deployment", name, namespace)
    if deployment is None:
        return
    current = (deployment["metadata"].get("annotations") or {}).get(REVISION)
    for rs in owned_replica_sets(cluster, deployment):
        if (rs["metadata"].get("annotations") or {}).get(REVISION) == current:
            cluster.patch("apps/v1", "ReplicaSet", rs["metadata"]["name"], namespace,
                          {"metadata": {"annotations": {
                              CHANGE: json.dumps(asdict(change), separators=(",", ":"))}}})
            return


def current(revisions: list[Revision]) -> Revision | None:
    return next((revision for revision in revisions if revision.current), None)
