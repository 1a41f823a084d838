"""The typed rollout state (arms, bandit, history) and one bandit round, without a cluster.

The annotation is what other processes (and other mlship versions) read, so its JSON must not
change shape: an annotation the dict-based state wrote is read, rewritten byte for byte, and
every state validates against the rollout-*.json output schemas.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlship_contract import validate

from mlship.config.rollout import BanditSettings
from mlship.errors import RolloutError
from mlship.rollout.bandit import Posterior, shares
from mlship.rollout.rounds import Evidence, Reading, choose, learn
from mlship.rollout.state import Arm, BanditState, Counters, Event, RolloutState

# Written by the state before it was typed (arms and bandit as dicts), one arm never measured.
OLD_ANNOTATION = (Path(__file__).parent.parent / "data" / "rollout" /
                  "bandit-annotation.json").read_text().strip()


def _bandit_state(settings: BanditSettings, images: tuple[str, ...] = ("iris:2",)) -> RolloutState:
    state = RolloutState(strategy="bandit", phase="progressing", image=images[0],
                         stable_image="iris:1", revision="0123456789", traffic="istio",
                         steps=[0, 0, 0], stable_replicas=2, owner="host/1/x")
    state.arms = [Arm("stable", "iris:1", "", "iris-stable", "iris")]
    for index, image in enumerate(images, start=1):
        track = "canary" if index == 1 else f"canary-{index}"
        state.arms.append(Arm(track, image, f"{index:010d}", f"iris-{track}", f"iris-{track}"))
    state.bandit = BanditState.start(settings, rounds=3, seed=7)
    state.record("started", image=images[0], stable_image="iris:1")
    return state


def _status(state: RolloutState) -> dict:
    """What `mlship rollout status --json` prints for ``state``."""
    return {"schema": "mlship.rollout/v1", "ok": True, "action": "status", "name": "iris",
            "namespace": "prod", "rollout": state.to_json()}


def test_an_annotation_of_the_untyped_state_reads_into_types_and_writes_back_unchanged() -> None:
    state = RolloutState.from_annotation(OLD_ANNOTATION, "Deployment prod/iris")
    stable, canary, third = state.arms
    assert isinstance(stable.posterior, Posterior)
    assert (stable.posterior.successes, stable.posterior.failures) == (40.0, 38.0)
    assert canary.counters == Counters(requests=120.0, ok=120.0, seconds=0.75, timed=None)
    assert third.counters is None  # {}: not read yet
    assert state.bandit == BanditState(
        algorithm="thompson", reward="success_rate", kind="beta", min_share=10, max_share=80,
        epsilon=0.1, confidence=None, rounds=3, round=2, seed=7, prob_best=[0.0125, 0.9875, 0.0])
    weights = state.history[1]
    assert (weights.event, weights.details["weights"]) == ("weights", [38, 62, 0])
    assert state.extra_deployments == ["iris-canary-2"]
    assert state.to_annotation() == OLD_ANNOTATION
    validate("rollout-status", _status(state))


def test_a_typed_state_round_trips_and_keeps_the_schema() -> None:
    state = _bandit_state(BanditSettings(algorithm="epsilon_greedy", reward="latency",
                                         min_share=10, max_share=80, confidence=None),
                          images=("iris:2", "iris:3"))
    state.arms[1].posterior.add_reward(0.8)
    state.arms[1].counters = Counters(requests=5.0, ok=5.0, seconds=0.1, timed=5.0)
    again = RolloutState.from_annotation(state.to_annotation(), "Deployment prod/iris")
    assert again == state
    assert again.arms[1].posterior.mean == 0.8
    raw = json.loads(state.to_annotation())
    assert raw["arms"][0]["counters"] == {}
    assert raw["arms"][0]["posterior"] == {"successes": 0.0, "failures": 0.0, "n": 0,
                                           "mean": 0.0, "m2": 0.0}
    assert raw["bandit"]["kind"] == "gaussian"  # from the settings' reward
    assert raw["history"][0] == {"at": state.history[0].at, "event": "started",
                                 "image": "iris:2", "stable_image": "iris:1"}
    for action in ("status", "bandit", "promote", "abort"):
        validate(f"rollout-{action}", {**_status(state), "action": action})


def test_states_of_other_strategies_have_no_arms() -> None:
    state = RolloutState(strategy="canary", phase="paused", image="iris:2",
                         stable_image="iris:1", revision="0123456789", traffic="replicas",
                         steps=[10, 100], stable_replicas=2, owner="host/1/x")
    raw = json.loads(state.to_annotation())
    assert (raw["arms"], raw["bandit"]) == ([], None)
    del raw["arms"], raw["bandit"]  # as written before bandits existed
    assert RolloutState.from_annotation(json.dumps(raw), "Deployment prod/iris") == state
    assert state.choose_winner() == []


@pytest.mark.parametrize("text", [
    "[]",
    OLD_ANNOTATION.replace('"track":"canary-2",', ""),
    OLD_ANNOTATION.replace('"seed":7', '"sead":7'),
    OLD_ANNOTATION.replace('"arms":[', '"arms":[1,'),
])
def test_a_damaged_annotation_is_one_rollout_error(text: str) -> None:
    with pytest.raises(RolloutError, match=r"Deployment prod/iris: annotation mlship\.dev/rollout"
                                           r" is not a rollout state: ") as caught:
        RolloutState.from_annotation(text, "Deployment prod/iris")
    assert "\n" not in caught.value.message


def test_history_keeps_the_newest_events_only() -> None:
    state = _bandit_state(BanditSettings())
    for index in range(120):
        state.record("weights", round=index)
    assert len(state.history) == 100
    assert state.history[-1] == Event(state.history[-1].at, "weights", {"round": 119})


def test_a_round_learns_from_counter_growth_and_moves_weight_to_the_better_arm() -> None:
    settings = BanditSettings(min_share=10, max_share=80, seed=7)
    state = _bandit_state(settings)
    bandit = state.bandit
    assert bandit is not None
    stable, canary = state.arms
    posteriors = [stable.posterior, canary.posterior]
    # Before the first round: counters as they are, nothing learned from them.
    first = [Reading(Counters(requests=500.0, ok=250.0, seconds=5.0, timed=500.0)),
             Reading(Counters(requests=3.0, ok=3.0, seconds=0.01, timed=3.0))]
    assert learn(state.arms, first, settings, baseline=True) == []
    assert stable.posterior == Posterior()
    # One interval: the stable fails half its requests, the canary none.
    bandit.round = 1
    second = [Reading(Counters(requests=540.0, ok=270.0, seconds=5.4, timed=540.0)),
              Reading(Counters(requests=43.0, ok=43.0, seconds=0.21, timed=43.0))]
    rewards = learn(state.arms, second, settings)
    assert rewards == [Evidence("stable", 40, 0.5, pytest.approx(10.0), 0.5),
                       Evidence("canary", 40, 1.0, pytest.approx(5.0), 1.0)]
    assert [arm.posterior for arm in state.arms] == posteriors  # updated in place
    assert (stable.posterior.successes, stable.posterior.failures) == (20.0, 20.0)
    assert (canary.posterior.successes, canary.posterior.failures) == (40.0, 0.0)
    assert canary.counters == second[1].counters
    chance, wanted = choose(state.arms, bandit, settings)
    assert chance[1] > 0.99
    assert bandit.prob_best == [round(p, 4) for p in chance]
    assert shares(wanted, bandit.min_share, bandit.max_share) == [20, 80]
    validate("rollout-status", _status(state))


def test_a_round_survives_resets_and_an_arm_prometheus_did_not_answer_for() -> None:
    settings = BanditSettings(min_requests=5)
    state = _bandit_state(settings)
    stable, canary = state.arms
    stable.counters = Counters(requests=100.0, ok=100.0, seconds=1.0, timed=100.0)
    canary.counters = Counters(requests=50.0, ok=50.0, seconds=0.5, timed=50.0)
    before = canary.counters
    rewards = learn(state.arms, [Reading(Counters(requests=10.0, ok=9.0, seconds=0.1,
                                                  timed=10.0)),  # a pod restarted
                                 Reading(error="cannot query Prometheus")], settings)
    assert rewards[0] == Evidence("stable", 10, 0.9, pytest.approx(10.0), 0.9)
    assert rewards[1].to_json() == {"track": "canary", "error": "cannot query Prometheus"}
    assert canary.counters is before  # the next round measures from the last reading
    assert canary.posterior == Posterior()
    # Too few requests count as no evidence, and a series not there yet as zero.
    few = learn(state.arms, [Reading(Counters(requests=12.0, ok=12.0)),
                             Reading(Counters(requests=52.0, ok=52.0, seconds=0.52,
                                              timed=52.0))], settings)
    assert few[0].to_json() == {"track": "stable", "requests": 2, "success_rate": 1.0,
                                "mean_ms": None, "reward": None}
    assert (stable.posterior.successes, stable.posterior.failures) == (9.0, 1.0)


def test_promote_picks_the_arm_with_the_best_posterior() -> None:
    state = _bandit_state(BanditSettings(), images=("iris:2", "iris:3"))
    state.arms[2].posterior.add_counts(30, 0)
    state.arms[1].posterior.add_counts(10, 20)
    assert state.choose_winner() == ["iris-canary-2"]
    assert (state.image, state.revision) == ("iris:3", "0000000002")
    assert state.history[-1].to_json()["event"] == "winner"
