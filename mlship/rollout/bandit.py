"""The multi-armed bandit behind ``mlship rollout bandit``: posteriors, arm choice, shares.

Pure functions and small dataclasses, no I/O and no import of the rest of mlship (the rollout
state stores ``Posterior``): ``mlship.rollout.policy`` feeds them what Prometheus measured each
interval and writes the shares they return to the route.

- Success-rate rewards are Bernoulli: each arm has a Beta(1 + successes, 1 + failures)
  posterior, fed the request counts of each interval.
- Latency, combined and custom rewards are one number per interval: each arm keeps a running
  mean and variance (Welford), and the posterior of its mean is taken as Gaussian.

``thompson`` turns posteriors into the Monte-Carlo probability that each arm is the best;
``epsilon_greedy`` gives the arm with the best running mean 1 - epsilon and spreads epsilon over
all arms. Either way ``shares`` projects the result onto integer percentages inside
[min_share, max_share] that sum to 100, which is what a route's weights must be.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal["beta", "gaussian"]
DRAWS = 2000  # Monte-Carlo draws per round: P(best) to about +-1 %, in a few milliseconds


@dataclass
class Posterior:
    """What one arm has shown so far; JSON-able, so it lives in the rollout state."""

    successes: float = 0.0
    failures: float = 0.0
    n: int = 0  # intervals with a continuous reward
    mean: float = 0.0
    m2: float = 0.0  # Welford's sum of squared deviations from the mean

    def add_counts(self, successes: float, failures: float) -> None:
        self.successes += max(0.0, successes)
        self.failures += max(0.0, failures)

    def add_reward(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    def observed(self, kind: Kind) -> bool:
        return self.successes + self.failures > 0 if kind == "beta" else self.n > 0

    def estimate(self, kind: Kind) -> float | None:
        """The posterior mean; None before any evidence (a Beta(1,1) mean would be 0.5,
        which looks like data to a greedy choice)."""
        if not self.observed(kind):
            return None
        if kind == "beta":
            return (self.successes + 1) / (self.successes + self.failures + 2)
        return self.mean

    def sample(self, kind: Kind, rng: random.Random, scale: float) -> float:
        if kind == "beta":
            return rng.betavariate(self.successes + 1, self.failures + 1)
        # Fewer than two intervals say nothing about spread: assume a wide one (``scale``),
        # so an arm seen once or never is still explored.
        spread = math.sqrt(self.m2 / (self.n - 1)) if self.n >= 2 else scale
        spread = max(spread, scale * 1e-3)  # identical rewards must not freeze the choice
        return rng.gauss(self.mean if self.n else 0.0, spread / math.sqrt(max(self.n, 1)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Posterior:
        return cls(**{key: raw[key] for key in ("successes", "failures", "n", "mean", "m2")
                      if key in raw})


def _scale(posteriors: list[Posterior]) -> float:
    """The prior spread of Gaussian rewards: the size of the rewards seen, at least 1."""
    return max([abs(p.mean) for p in posteriors if p.n] + [1.0])


def prob_best(posteriors: list[Posterior], kind: Kind, rng: random.Random,
              draws: int = DRAWS) -> list[float]:
    """P(arm i has the highest true reward), by sampling every posterior ``draws`` times."""
    scale = _scale(posteriors)
    wins = [0] * len(posteriors)
    for _ in range(draws):
        samples = [posterior.sample(kind, rng, scale) for posterior in posteriors]
        wins[samples.index(max(samples))] += 1
    return [win / draws for win in wins]


def greedy(posteriors: list[Posterior], kind: Kind, epsilon: float) -> list[float]:
    """Epsilon-greedy: 1 - epsilon to the best running mean, epsilon spread over all arms.
    Until every arm has been seen, an even split (nothing to be greedy about yet)."""
    count = len(posteriors)
    estimates = [posterior.estimate(kind) for posterior in posteriors]
    if any(value is None for value in estimates):
        return [1 / count] * count
    best = max(range(count), key=lambda index: estimates[index] or 0.0)
    return [(1 - epsilon if index == best else 0.0) + epsilon / count for index in range(count)]


def best_arm(posteriors: list[Posterior], kind: Kind) -> int:
    """The arm with the best posterior mean; the first (the stable) when nothing was seen or
    on a tie, so promoting without evidence changes nothing."""
    best, best_value = 0, -math.inf
    for index, posterior in enumerate(posteriors):
        value = posterior.estimate(kind)
        if value is not None and value > best_value:
            best, best_value = index, value
    return best


def check_bounds(arms: int, min_share: int, max_share: int) -> str | None:
    """Why no weights within [min_share, max_share] can sum to 100 for ``arms``, or None."""
    if arms < 2:
        return "a bandit needs two or more arms"
    if min_share > max_share:
        return f"min_share {min_share} is above max_share {max_share}"
    if min_share * arms > 100:
        return f"{arms} arms at min_share {min_share} % need {min_share * arms} % (> 100)"
    if max_share * arms < 100:
        return f"{arms} arms at max_share {max_share} % reach only {max_share * arms} % (< 100)"
    return None


def shares(probabilities: list[float], min_share: int, max_share: int) -> list[int]:
    """Integer percentages closest to ``probabilities`` (scaled to 100) with every one in
    [min_share, max_share] and a sum of exactly 100.

    First the Euclidean projection onto {w : sum w = 100, min <= w <= max}: w_i =
    clamp(100 p_i + t) for the one shift t that makes the sum 100 (found by bisection, the sum
    being monotone in t). Then largest-remainder rounding: the floors stay within the integer
    bounds, and the units short of 100 go to the arms with the largest fractions, which are
    below max_share because their unrounded value is.
    """
    problem = check_bounds(len(probabilities), min_share, max_share)
    if problem:
        raise ValueError(problem)
    total = sum(probabilities)
    target = [100 * p / total if total > 0 else 100 / len(probabilities)
              for p in probabilities]

    def placed(shift: float) -> list[float]:
        return [min(max_share, max(min_share, value + shift)) for value in target]

    low, high = -100.0 - max_share, 100.0 + max_share  # sums of 100*min and 100*max resp.
    for _ in range(200):
        middle = (low + high) / 2
        if sum(placed(middle)) < 100:
            low = middle
        else:
            high = middle
    exact = placed((low + high) / 2)
    floors = [min(max_share, max(min_share, math.floor(value + 1e-9))) for value in exact]
    order = sorted(range(len(exact)), key=lambda i: (floors[i] - exact[i], i))
    index = 0
    while sum(floors) < 100:  # at most len - 1 units; skip arms already at the top
        arm = order[index % len(order)]
        if floors[arm] < max_share:
            floors[arm] += 1
        index += 1
    while sum(floors) > 100:  # only after float rounding at the bounds; take from the largest
        arm = max((i for i in range(len(floors)) if floors[i] > min_share),
                  key=lambda i: floors[i])
        floors[arm] -= 1
    return floors

