"""Rollout state, kept in the cluster as one JSON annotation on the stable Deployment.

The cluster is the only place a rollout lives, so any CI job (or person) can read it with
``mlship rollout status``, promote or abort it, or resume it after the job that started it died.
Writes are guarded by the Deployment's resourceVersion, so two jobs starting a rollout at the
same moment cannot both win; ``owner`` names the process driving the steps, which stops when it
sees another owner (a resume) or a phase it did not set (an abort or promote from elsewhere).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mlship.errors import ClusterError, RolloutError

if TYPE_CHECKING:
    from mlship.kube import Cluster

ANNOTATION = "mlship.dev/rollout"
ROLLOUT_MANAGER = "mlship-rollout"  # field manager of every change a rollout makes
# Phases in which a rollout holds the app: another one must not start.
ACTIVE = ("progressing", "paused", "switched", "promoting", "aborting")
FINAL = ("promoted", "aborted", "undone")
HISTORY_MAX = 100


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_owner() -> str:
    """Who drives a rollout: readable for people, unique for the guard."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


@dataclass
class RolloutState:
    strategy: str  # canary | ab | bluegreen | bandit
    phase: str  # one of ACTIVE or FINAL
    image: str
    stable_image: str
    revision: str
    traffic: str
    steps: list[int]
    stable_replicas: int
    owner: str
    step: int = -1  # index into steps of the current step; -1 before the first
    weight: int = 0
    effective_weight: float = 0.0
    started: str = field(default_factory=now)
    updated: str = field(default_factory=now)
    inconclusive: int = 0
    reason: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    # A bandit's versions (stable first: track, image, revision, service, deployment, weight,
    # posterior, counters) and its settings; empty for the other strategies.
    arms: list[dict[str, Any]] = field(default_factory=list)
    bandit: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_annotation(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_annotation(cls, text: str, where: str) -> RolloutState:
        try:
            raw = json.loads(text)
            known = {item.name for item in fields(cls)}
            return cls(**{key: value for key, value in raw.items() if key in known})
        except (ValueError, TypeError) as err:
            raise RolloutError(f"{where}: annotation {ANNOTATION} is not a rollout state: {err}",
                               hint=f"remove it (kubectl annotate deployment ... {ANNOTATION}-) "
                                    "once no rollout runs") from None

    def record(self, event: str, **details: Any) -> None:
        self.history.append({"at": now(), "event": event, **details})
        # Annotations share 256 KiB per object: keep the newest events only.
        del self.history[:-HISTORY_MAX]


def stable_deployment(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The live stable Deployment; RolloutError when there is nothing to roll out."""
    found = cluster.get("apps/v1", "Deployment", name, namespace)
    if found is None:
        raise RolloutError(f"no Deployment {namespace}/{name} to roll out from",
                           hint="deploy the stable version first (mlship deploy, or kubectl "
                                "apply -k mlship-out/k8s), or check --namespace")
    return found


def read(cluster: Cluster, namespace: str, name: str) -> tuple[dict[str, Any],
                                                              RolloutState | None]:
    deployment = stable_deployment(cluster, namespace, name)
    text = (deployment["metadata"].get("annotations") or {}).get(ANNOTATION)
    if not text:
        return deployment, None
    return deployment, RolloutState.from_annotation(text, f"Deployment {namespace}/{name}")


class StaleStateError(RolloutError):
    """The Deployment changed between reading the state and writing it back."""


def write(cluster: Cluster, namespace: str, name: str, state: RolloutState, *,
          resource_version: str | None = None) -> dict[str, Any]:
    """Store ``state``; with ``resource_version``, only if nobody changed the Deployment since
    it was read (StaleStateError otherwise: read again and decide again)."""
    state.updated = now()
    metadata: dict[str, Any] = {"annotations": {ANNOTATION: state.to_annotation()}}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version  # a precondition in a merge patch
    try:
        return cluster.patch("apps/v1", "Deployment", name, namespace, {"metadata": metadata},
                             field_manager=ROLLOUT_MANAGER)
    except ClusterError:
        if resource_version is None:
            raise
        # The API's 409 carries no field causes here; a changed resourceVersion is the proof.
        current = stable_deployment(cluster, namespace, name)["metadata"]["resourceVersion"]
        if current != resource_version:
            raise StaleStateError(f"Deployment {namespace}/{name} changed while the rollout "
                                  "state was written") from None
        raise


def refuse_if_active(state: RolloutState | None, namespace: str, name: str) -> None:
    if state is not None and state.active:
        raise RolloutError(
            f"a {state.strategy} rollout of {namespace}/{name} to {state.image} is already "
            f"{state.phase} (step {state.step + 1}/{len(state.steps)}, started {state.started})",
            hint="`mlship rollout status` shows it; `mlship rollout promote` or `mlship rollout "
                 "abort` ends it, `mlship rollout canary --resume` continues it")
