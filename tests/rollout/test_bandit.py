"""mlship.bandit: posteriors, Thompson and epsilon-greedy choices, and the share projection."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlship.config.load import validate_config
from mlship.config.rollout import BanditSettings
from mlship.errors import ConfigError
from mlship.rollout.bandit import Posterior, best_arm, check_bounds, greedy, prob_best, shares


@st.composite
def bounded_problems(draw: st.DrawFn) -> tuple[list[float], int, int]:
    """Probabilities over 2..8 arms and integer bounds that some weights can satisfy."""
    arms = draw(st.integers(2, 8))
    low = draw(st.integers(0, 100 // arms))
    high = draw(st.integers(max(low, -(-100 // arms)), 100))
    weights = draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=arms, max_size=arms))
    return weights, low, high


@settings(max_examples=500, deadline=None)
@given(bounded_problems())
def test_shares_stay_in_bounds_and_sum_to_100(problem: tuple[list[float], int, int]) -> None:
    probabilities, low, high = problem
    result = shares(probabilities, low, high)
    assert sum(result) == 100
    assert all(low <= share <= high for share in result)
    assert all(isinstance(share, int) for share in result)


@settings(max_examples=300, deadline=None)
@given(bounded_problems())
def test_shares_keep_the_order_of_the_probabilities(
        problem: tuple[list[float], int, int]) -> None:
    # A projection that reordered arms would send more traffic to a worse one.
    probabilities, low, high = problem
    result = shares(probabilities, low, high)
    for i, p_i in enumerate(probabilities):
        for j, p_j in enumerate(probabilities):
            if p_i > p_j + 1e-6:
                assert result[i] >= result[j] - 1, (probabilities, result)


@pytest.mark.parametrize(("probabilities", "low", "high", "expected"), [
    ([0.5, 0.5], 5, 95, [50, 50]),
    ([1.0, 0.0], 5, 95, [95, 5]),
    ([1.0, 0.0], 10, 80, [80, 20]),
    ([0.0, 0.0, 1.0], 10, 80, [10, 10, 80]),
    ([1 / 3, 1 / 3, 1 / 3], 0, 100, [34, 33, 33]),
    ([0.9, 0.05, 0.05], 20, 60, [60, 20, 20]),
    ([0.0, 0.0], 0, 100, [50, 50]),  # no information: an even split
    ([0.7, 0.3], 50, 50, [50, 50]),  # the bounds decide alone
])
def test_shares_examples(probabilities: list[float], low: int, high: int,
                         expected: list[int]) -> None:
    assert shares(probabilities, low, high) == expected


@pytest.mark.parametrize(("arms", "low", "high", "fragment"), [
    (3, 40, 90, "need 120 % (> 100)"),
    (2, 10, 40, "reach only 80 % (< 100)"),
    (2, 60, 50, "above max_share"),
    (1, 0, 100, "two or more arms"),
])
def test_impossible_bounds_are_explained(arms: int, low: int, high: int,
                                         fragment: str) -> None:
    assert fragment in (check_bounds(arms, low, high) or "")
    with pytest.raises(ValueError, match=re.escape(fragment)):
        shares([1.0] * arms, low, high)


def test_thompson_prefers_the_arm_with_more_successes() -> None:
    good, bad = Posterior(), Posterior()
    good.add_counts(95, 5)
    bad.add_counts(50, 50)
    chance = prob_best([bad, good], "beta", random.Random(1))
    assert chance[1] > 0.99
    assert sum(chance) == pytest.approx(1.0)
    assert best_arm([bad, good], "beta") == 1


def test_thompson_without_evidence_splits_evenly_and_is_seeded() -> None:
    first = prob_best([Posterior(), Posterior()], "beta", random.Random(7))
    again = prob_best([Posterior(), Posterior()], "beta", random.Random(7))
    assert first == again  # the seed makes a bandit's weights reproducible
    assert first[0] == pytest.approx(0.5, abs=0.05)


def test_gaussian_posterior_follows_the_mean_reward() -> None:
    fast, slow = Posterior(), Posterior()
    for value in (0.80, 0.82, 0.79, 0.81):
        fast.add_reward(value)
    for value in (0.40, 0.45, 0.42):
        slow.add_reward(value)
    assert fast.mean == pytest.approx(0.805)
    assert fast.m2 == pytest.approx(sum((v - 0.805) ** 2 for v in (0.80, 0.82, 0.79, 0.81)))
    assert prob_best([slow, fast], "gaussian", random.Random(3))[1] > 0.99
    # an arm never seen is still explored: it keeps a real chance of being the best
    assert prob_best([slow, Posterior()], "gaussian", random.Random(3))[1] > 0.2


def test_epsilon_greedy_gives_the_best_mean_one_minus_epsilon() -> None:
    good, bad = Posterior(), Posterior()
    good.add_counts(9, 1)
    bad.add_counts(1, 9)
    assert greedy([bad, good], "beta", 0.2) == pytest.approx([0.1, 0.9])
    assert greedy([bad, Posterior()], "beta", 0.2) == [0.5, 0.5]  # until every arm is seen


def test_best_arm_is_the_stable_without_evidence() -> None:
    assert best_arm([Posterior(), Posterior(), Posterior()], "gaussian") == 0


def test_posterior_round_trips_through_the_state() -> None:
    posterior = Posterior()
    posterior.add_counts(3, 1)
    posterior.add_reward(0.5)
    assert Posterior.from_dict(posterior.to_dict()) == posterior


def _config(bandit: dict) -> object:
    return validate_config({"name": "iris", "model": {"source": "iris.onnx"},
                            "rollout": {"traffic": "istio", "bandit": bandit}})


@pytest.mark.parametrize(("bandit", "fragment"), [
    ({"min_share": 60}, "rollout.bandit.min_share"),
    ({"min_share": 30, "max_share": 20}, "must not exceed max_share"),
    ({"reward": "custom"}, "set query exactly when reward is custom"),
    ({"query": "up"}, "set query exactly when reward is custom"),
    ({"algorithm": "ucb"}, "rollout.bandit.algorithm"),
    ({"epsilon": 2}, "rollout.bandit.epsilon"),
])
def test_bad_bandit_settings_are_one_line(bandit: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(bandit)
    assert fragment in caught.value.message
    assert "\n" not in caught.value.message


def test_bandit_defaults() -> None:
    settings_ = BanditSettings()
    assert (settings_.algorithm, settings_.min_share, settings_.max_share) == ("thompson", 5, 95)
    assert settings_.kind == "beta"
    assert BanditSettings(reward="latency").kind == "gaussian"
