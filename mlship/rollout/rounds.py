"""One bandit round without I/O: counters read -> evidence -> posteriors -> wanted shares.

``mlship.rollout.policy`` reads the counters from Prometheus and writes the shares to the route;
what a round learns and chooses is here, so it can be followed (and tested) on its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from mlship.rollout.bandit import greedy, prob_best
from mlship.rollout.state import Arm, BanditState, Counters

if TYPE_CHECKING:
    from mlship.config.rollout import BanditSettings


@dataclass(frozen=True)
class Reading:
    """One arm's counters as Prometheus gave them this round, or why it could not."""

    counters: Counters | None = None
    custom: float | None = None  # the value of rollout.bandit.query, for reward custom
    error: str | None = None


@dataclass(frozen=True)
class Growth:
    """What an arm served in one interval: how much each of its counters grew."""

    requests: float
    ok: float
    seconds: float
    timed: float

    @classmethod
    def between(cls, before: Counters | None, now: Counters) -> Growth:
        """A counter that went down was reset (a pod restarted): its new value is all growth.
        No series yet is zero."""
        grown = {}
        for item in fields(Counters):
            old = (getattr(before, item.name) if before is not None else None) or 0.0
            new = getattr(now, item.name) or 0.0
            grown[item.name] = new - old if new >= old else new
        return cls(**grown)


@dataclass(frozen=True)
class Evidence:
    """What one arm showed in one interval, as the history and the round event report it."""

    track: str
    requests: int = 0
    success_rate: float | None = None
    mean_ms: float | None = None
    reward: float | None = None  # None: too few requests, or nothing to score
    error: str | None = None  # Prometheus did not answer for this arm

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"track": self.track, "error": self.error}
        return {"track": self.track, "requests": self.requests,
                "success_rate": self.success_rate, "mean_ms": self.mean_ms,
                "reward": self.reward}


def learn(arms: list[Arm], readings: list[Reading], settings: BanditSettings, *,
          baseline: bool = False) -> list[Evidence]:
    """Each arm's growth since the last round, added to its posterior; the counters read become
    the next round's starting point (an arm Prometheus did not answer for keeps its old ones).
    With ``baseline`` nothing is learned: what an arm served before the bandit is no evidence
    about this run."""
    measured = []
    for arm, reading in zip(arms, readings, strict=True):
        if reading.counters is None:
            measured.append(Evidence(arm.track, error=reading.error or "no counters"))
            continue
        growth = Growth.between(arm.counters, reading.counters)
        arm.counters = reading.counters
        if not baseline:
            measured.append(_evidence(arm, growth, reading.custom, settings))
    return measured


def choose(arms: list[Arm], bandit: BanditState,
           settings: BanditSettings) -> tuple[list[float], list[float]]:
    """(P(best) of each arm, the shares wanted before the bounds); stores P(best) rounded."""
    posteriors = [arm.posterior for arm in arms]
    # One stream per round of the run's seed: a fixed rollout.bandit.seed and the same evidence
    # give the same weights, whatever ran before in this process.
    rng = random.Random(bandit.seed * 1009 + bandit.round)
    chance = prob_best(posteriors, bandit.kind, rng)
    bandit.prob_best = [round(p, 4) for p in chance]
    wanted = chance if settings.algorithm == "thompson" else \
        greedy(posteriors, bandit.kind, settings.epsilon)
    return chance, wanted


def _evidence(arm: Arm, growth: Growth, custom: float | None,
              settings: BanditSettings) -> Evidence:
    """Add one interval of ``arm`` to its posterior (in place: the arm holds it until the state
    is written); what was measured, for the history."""
    requests, ok = growth.requests, min(growth.ok, growth.requests)
    mean_ms = 1000 * growth.seconds / growth.timed if growth.timed else None
    rate = ok / requests if requests else None
    if requests < max(settings.min_requests, 1) and settings.reward != "custom":
        return Evidence(arm.track, round(requests), rate, mean_ms)
    reward: float | None
    latency = None if mean_ms is None else \
        settings.latency_target_ms / (settings.latency_target_ms + mean_ms)
    if settings.reward == "success_rate":
        arm.posterior.add_counts(ok, requests - ok)
        reward = rate
    elif settings.reward == "latency":
        reward = latency
    elif settings.reward == "success_rate_and_latency":
        reward = None if latency is None or rate is None else rate * latency
    else:
        reward = custom
    if reward is not None and settings.reward != "success_rate":
        arm.posterior.add_reward(reward)
    return Evidence(arm.track, round(requests), rate, mean_ms, reward)
