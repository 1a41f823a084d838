"""Rollout state, kept in the cluster as one JSON annotation on the stable Deployment.

The cluster is the only place a rollout lives, so any CI job (or person) can read it with
``mlship rollout status``, promote or abort it, or resume it after the job that started it died.
Writes are guarded by the Deployment's resourceVersion, so two jobs starting a rollout at the
same moment cannot both win; ``owner`` names the process driving the steps, which stops when it
sees another owner (a resume) or a phase it did not set (an abort or promote from elsewhere).

The code works with typed parts (a bandit's ``Arm``s with their ``Posterior``s, its
``BanditState``, the history's ``Event``s); each turns into JSON and back explicitly, only when
the annotation is written or read, so the document keeps the shape the rollout-*.json output
schemas describe and annotations written by other mlship versions stay readable.
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

# The one way up the stages: a bandit's posteriors are stored here as the bandit's own type
# (mlship.rollout.bandit is pure and imports nothing of mlship, so there is no cycle).
from mlship.rollout.bandit import Kind, Posterior, best_arm

if TYPE_CHECKING:
    from mlship.config.rollout import Algorithm, BanditSettings, Reward
    from mlship.kube import Cluster

ANNOTATION = "mlship.dev/rollout"
ROLLOUT_MANAGER = "mlship-rollout"  # field manager of every change a rollout makes
# Phases in which a rollout holds the app: another one must not start.
ACTIVE = ("progressing", "paused", "switched", "promoting", "aborting")
FINAL = ("promoted", "aborted", "undone", "passed")  # passed: a shadow within tolerance
# Phases a process is driving: its heartbeat (the driver's) keeps ``updated`` fresh.
DRIVEN = ("progressing", "promoting", "aborting")
# A driven rollout whose state is older than this has no driver any more (it stores the state
# at least every rollout.driver.HEARTBEAT_S while it runs).
UNDRIVEN_AFTER_S = 45.0
HISTORY_MAX = 100


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_owner() -> str:
    """Who drives a rollout: readable for people, unique for the guard."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


@dataclass
class Event:
    """One entry of a rollout's history: when, what, and the event's own details (which vary
    by event: step and weight, an analysis verdict, a bandit round's weights ...)."""

    at: str
    event: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "event": self.event, **self.details}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Event:
        details = {key: value for key, value in raw.items() if key not in ("at", "event")}
        return cls(at=raw["at"], event=raw["event"], details=details)


@dataclass(frozen=True)
class Counters:
    """An arm's cumulative Prometheus counters; None where no series exists yet."""

    requests: float | None = None
    ok: float | None = None  # requests not answered with rollout.analysis.failure_codes
    seconds: float | None = None  # sum of request durations
    timed: float | None = None  # count of request durations

    def to_json(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Counters:
        return cls(**{item.name: raw.get(item.name) for item in fields(cls)})


@dataclass
class Arm:
    """One version a bandit routes to: its objects, its share, what it has shown so far."""

    track: str
    image: str
    revision: str  # "" for the stable: its series carry no revision label
    service: str
    deployment: str
    weight: int = 0
    posterior: Posterior = field(default_factory=Posterior)
    # None until first read; a bandit learns only from what an arm serves after that.
    counters: Counters | None = None

    def to_json(self) -> dict[str, Any]:
        return {"track": self.track, "image": self.image, "revision": self.revision,
                "service": self.service, "deployment": self.deployment, "weight": self.weight,
                "posterior": self.posterior.to_dict(),
                "counters": self.counters.to_json() if self.counters is not None else {}}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Arm:
        counters = raw["counters"]
        return cls(track=raw["track"], image=raw["image"], revision=raw["revision"],
                   service=raw["service"], deployment=raw["deployment"], weight=raw["weight"],
                   posterior=Posterior.from_dict(raw["posterior"]),
                   counters=Counters.from_json(counters) if counters else None)


@dataclass(kw_only=True)
class BanditState:
    """A bandit's settings as it started, kept with it so that promote and status from another
    process (or a changed mlship.yaml) judge it the same way; and how far it got."""

    algorithm: Algorithm
    reward: Reward
    kind: Kind
    min_share: int
    max_share: int
    epsilon: float
    confidence: float | None
    rounds: int
    round: int = 0
    seed: int
    prob_best: list[float] = field(default_factory=list)  # per arm, after the last round

    @classmethod
    def start(cls, settings: BanditSettings, rounds: int, seed: int) -> BanditState:
        return cls(algorithm=settings.algorithm, reward=settings.reward, kind=settings.kind,
                   min_share=settings.min_share, max_share=settings.max_share,
                   epsilon=settings.epsilon, confidence=settings.confidence, rounds=rounds,
                   seed=seed)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> BanditState:
        return cls(**{item.name: raw[item.name] for item in fields(cls)})


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
    history: list[Event] = field(default_factory=list)
    # A bandit's versions, stable first, and its settings; empty for the other strategies.
    arms: list[Arm] = field(default_factory=list)
    bandit: BanditState | None = None

    def seconds_since_update(self) -> float:
        stamp = datetime.strptime(self.updated, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return (datetime.now(timezone.utc) - stamp).total_seconds()

    @property
    def undriven(self) -> bool:
        """In a phase a process should be driving, but none has stored it for a while: the
        job driving it died or was stopped."""
        return self.phase in DRIVEN and self.seconds_since_update() > UNDRIVEN_AFTER_S

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    @property
    def extra_deployments(self) -> list[str]:
        """A bandit's Deployments past NAME-canary: its own, which ending it removes."""
        return [arm.deployment for arm in self.arms[2:]]

    def to_json(self) -> dict[str, Any]:
        """The annotation's document (and the ``rollout`` of every ``--json`` output)."""
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        data.update(steps=list(self.steps), history=[entry.to_json() for entry in self.history],
                    arms=[arm.to_json() for arm in self.arms],
                    bandit=self.bandit.to_json() if self.bandit is not None else None)
        return data

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RolloutState:
        # Unknown keys are dropped and missing optional ones defaulted, so states written by
        # other mlship versions stay readable.
        known = {item.name for item in fields(cls)}
        values = {key: value for key, value in raw.items() if key in known}
        values["history"] = [Event.from_json(entry) for entry in values.get("history") or []]
        values["arms"] = [Arm.from_json(arm) for arm in values.get("arms") or []]
        bandit = values.get("bandit")
        values["bandit"] = BanditState.from_json(bandit) if bandit is not None else None
        return cls(**values)

    def to_annotation(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_annotation(cls, text: str, where: str) -> RolloutState:
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise TypeError(f"a JSON {type(raw).__name__}, not an object")
            return cls.from_json(raw)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            problem = f"no {err}" if isinstance(err, KeyError) else str(err)
            raise RolloutError(f"{where}: annotation {ANNOTATION} is not a rollout state: "
                               f"{problem}",
                               hint=f"remove it (kubectl annotate deployment ... {ANNOTATION}-) "
                                    "once no rollout runs") from None

    def record(self, event: str, **details: Any) -> None:
        self.history.append(Event(now(), event, details))
        # Annotations share 256 KiB per object: keep the newest events only.
        del self.history[:-HISTORY_MAX]

    def winner(self) -> Arm | None:
        """A bandit's arm with the best posterior (the stable without evidence); None for the
        other strategies."""
        if not self.arms:
            return None
        kind: Kind = self.bandit.kind if self.bandit is not None else "beta"
        return self.arms[best_arm([arm.posterior for arm in self.arms], kind)]

    def choose_winner(self) -> list[str]:
        """Point a bandit's state at its winner (the one promote makes stable); returns the
        Deployments past NAME-canary, which promote removes."""
        winner = self.winner()
        if winner is not None:
            self.image, self.revision = winner.image, winner.revision or self.revision
            self.record("winner", image=winner.image, track=winner.track)
        return self.extra_deployments


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
