"""``mlship rollout bandit``: weights between two or more versions, learned from Prometheus.

The arms are the stable Deployment and one Deployment per new image (``NAME-canary``, then
``NAME-canary-2``, ...), each behind its own Service and labelled track/revision exactly like a
canary, so the runtime's metrics tell them apart. Every interval the driver reads each arm's
cumulative counters from Prometheus, turns the difference since the last round into evidence
(``mlship.rollout.bandit``), and writes new route weights within [min_share, max_share]. The arms, their
posteriors and the weights of every round are in the rollout state, so ``rollout status``,
``promote`` (the best posterior wins) and ``abort`` work on a bandit from any process.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from mlship.cluster.state import RolloutState, read
from mlship.errors import MlshipTimeoutError, RolloutError
from mlship.render.traffic import (
    arm_service,
    arm_service_object,
    arm_track,
    canary_replicas,
    revision_of,
)
from mlship.rollout.bandit import Posterior, best_arm, greedy, prob_best, shares

if TYPE_CHECKING:
    from mlship.config.rollout import BanditSettings
    from mlship.rollout.analysis import Prometheus
    from mlship.rollout.driver import Driver

COUNTERS = ("requests", "ok", "seconds", "timed")


def plan_arms(driver: Driver, images: list[str]) -> list[dict[str, Any]]:
    """The arms, stable first, before anything exists in the cluster."""
    app = driver.app
    stable_image = app.stable_image(driver.stable)
    arms = [{"track": arm_track(0), "image": stable_image, "revision": "",
             "service": arm_service(app.name, 0), "deployment": app.name}]
    for index, image in enumerate(images, start=1):
        arms.append({"track": arm_track(index), "image": image,
                     "revision": revision_of(app.namespace, app.name, image),
                     "service": arm_service(app.name, index),
                     "deployment": arm_service(app.name, index)})
    for arm in arms:
        arm.update(weight=0, posterior=Posterior().to_dict(), counters={})
    return arms


def start(driver: Driver, images: list[str], settings: BanditSettings,
          rounds: int) -> RolloutState:
    """Record the bandit in the cluster (refused while another rollout holds the app)."""
    app = driver.app
    if len(set(images)) != len(images):
        raise RolloutError("the same --image is given twice: each version is one arm")
    stable_image = app.stable_image(read(app.cluster, app.namespace, app.name)[0])
    if stable_image in images[1:]:  # the first is refused by Driver.start
        raise RolloutError(f"Deployment {app.namespace}/{app.name} already runs {stable_image}"
                           ": it is the stable arm, do not pass it as --image")
    state = driver.start("bandit", images[0], [0] * rounds)
    seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**31)
    state.arms = plan_arms(driver, images)
    state.bandit = {"algorithm": settings.algorithm, "reward": settings.reward,
                    "kind": settings.kind, "min_share": settings.min_share,
                    "max_share": settings.max_share, "epsilon": settings.epsilon,
                    "confidence": settings.confidence, "rounds": rounds, "round": 0,
                    "seed": seed, "prob_best": []}
    driver.app.extra_arms = [arm["deployment"] for arm in state.arms[2:]]
    driver.save()
    return state


def run(driver: Driver, prometheus: Prometheus, settings: BanditSettings, interval_s: float,
        *, promote: bool) -> RolloutState:
    """Start every arm, then update the weights each interval for ``rounds`` rounds."""
    state, app = driver.state, driver.app
    assert state is not None
    assert state.bandit is not None
    replicas = canary_replicas(state.traffic, state.stable_replicas, settings.max_share)
    for index, arm in enumerate(state.arms[1:], start=1):
        if index >= 2:  # the rendered Services cover the stable and the first canary only
            app.cluster.apply(arm_service_object(_canary_service(driver), app.name, index),
                              force=True)
        app.create_canary(driver.stable, arm["image"], arm["revision"], replicas, arm["track"])
    for arm in state.arms[1:]:
        _wait(driver, arm["deployment"])
    _measure(driver, prometheus, settings, baseline=True)  # counters before the first round
    _route(driver, [1.0 / len(state.arms)] * len(state.arms))  # round 0: an even split
    while state.bandit["round"] < state.bandit["rounds"]:
        driver._sleep(interval_s)  # the driver's wait, which notices an abort from elsewhere
        state.bandit["round"] += 1
        rewards = _measure(driver, prometheus, settings)
        _give_up_when_blind(driver, rewards)
        kind = state.bandit["kind"]
        posteriors = [Posterior.from_dict(arm["posterior"]) for arm in state.arms]
        rng = random.Random(state.bandit["seed"] * 1009 + state.bandit["round"])
        chance = prob_best(posteriors, kind, rng)
        state.bandit["prob_best"] = [round(p, 4) for p in chance]
        wanted = chance if settings.algorithm == "thompson" else \
            greedy(posteriors, kind, settings.epsilon)
        _route(driver, wanted, rewards=rewards)
        if settings.confidence is not None and max(chance) >= settings.confidence:
            best = state.arms[chance.index(max(chance))]["image"]
            state.record("confident", image=best, prob_best=state.bandit["prob_best"])
            break
    if promote:
        return driver.promote()
    state.phase = "paused"
    state.record("paused")
    driver.save()
    best = state.arms[best_arm([Posterior.from_dict(arm["posterior"]) for arm in state.arms],
                               state.bandit["kind"])]["image"]
    driver.emit("info", {"message": f"paused after round {state.bandit['round']}, the weights "
                                    f"stay: `mlship rollout promote` makes {best} (the best so "
                                    "far) the stable, `mlship rollout abort` returns to it"})
    return state


def _give_up_when_blind(driver: Driver, rewards: list[dict[str, Any]]) -> None:
    """Prometheus answered for no arm: after ``rollout.analysis.max_inconclusive`` such rounds
    in a row the bandit aborts, as a canary does, rather than route on what it cannot see."""
    state = driver.state
    assert state is not None
    assert state.bandit is not None
    errors = [r["error"] for r in rewards if "error" in r]
    if not rewards or len(errors) < len(rewards):
        state.inconclusive = 0
        return
    state.inconclusive += 1
    limit = driver.app.settings.analysis.max_inconclusive
    if state.inconclusive < limit:
        return
    reason = (f"round {state.bandit['round']}: no arm could be "
              f"measured in {state.inconclusive} rounds in a row "
              f"(rollout.analysis.max_inconclusive): {errors[0]}")
    driver.abort(reason, claim=False)
    raise RolloutError(f"bandit aborted at {reason}; traffic is back on {state.stable_image} "
                       "and every other arm is removed",
                       hint="check --prometheus-url (or rollout.analysis.prometheus_url) "
                            "answers from here")


# -- one round ------------------------------------------------------------------------------


def _route(driver: Driver, wanted: list[float],
           rewards: list[dict[str, Any]] | None = None) -> None:
    state = driver.state
    assert state is not None
    assert state.bandit is not None
    weights = shares(wanted, state.bandit["min_share"], state.bandit["max_share"])
    driver._check()  # nobody aborted or took over since this process last wrote
    driver.app.route(100 - weights[0], backends=[(arm["service"], weight) for arm, weight
                                                  in zip(state.arms, weights, strict=True)])
    for arm, weight in zip(state.arms, weights, strict=True):
        arm["weight"] = weight
    # step/weight as a canary reports them: the round, and the share off the stable.
    state.step, state.weight = state.bandit["round"] - 1, 100 - weights[0]
    state.effective_weight = float(state.weight)
    state.record("weights", round=state.bandit["round"], weights=weights,
                 prob_best=state.bandit["prob_best"], rewards=rewards or [])
    driver.save()
    driver.emit("round", {"round": state.bandit["round"], "rounds": state.bandit["rounds"],
                 "weights": {arm["image"]: arm["weight"] for arm in state.arms},
                 "prob_best": state.bandit["prob_best"], "rewards": rewards or []})


def _measure(driver: Driver, prometheus: Prometheus, settings: BanditSettings, *,
             baseline: bool = False) -> list[dict[str, Any]]:
    """Each arm's counters now, their growth since the last round as evidence (none for an
    arm under min_requests, or when Prometheus did not answer)."""
    from mlship.rollout.analysis import arm_queries

    state = driver.state
    assert state is not None
    assert state.bandit is not None
    analysis = driver.app.settings.analysis
    measured = []
    for arm in state.arms:
        now: dict[str, float | None] = {}
        try:
            for key, promql in arm_queries(driver.app.metric_models, arm["track"], arm["revision"],
                                           analysis).items():
                now[key], _ = prometheus.query(promql)
            custom = None
            if settings.reward == "custom" and settings.query:
                custom, _ = prometheus.query(settings.query.replace("{track}", arm["track"])
                                             .replace("{revision}", arm["revision"]))
        except RolloutError as err:
            measured.append({"track": arm["track"], "error": err.message})
            continue
        delta = _growth(arm["counters"], now)
        arm["counters"] = now
        if baseline:  # what an arm served before the bandit is no evidence about this run
            continue
        measured.append(_evidence(arm, delta, custom, settings))
    return measured


def _growth(before: dict[str, float | None], now: dict[str, float | None]) -> dict[str, float]:
    """Counter increases; a counter that went down was reset (a pod restarted): its new value
    is all growth. No series yet is zero."""
    growth = {}
    for key in COUNTERS:
        old, new = before.get(key) or 0.0, now.get(key) or 0.0
        growth[key] = new - old if new >= old else new
    return growth


def _evidence(arm: dict[str, Any], delta: dict[str, float], custom: float | None,
              settings: BanditSettings) -> dict[str, Any]:
    """Add one interval of ``arm`` to its posterior; what was measured, for the history."""
    requests, ok = delta["requests"], min(delta["ok"], delta["requests"])
    mean_ms = 1000 * delta["seconds"] / delta["timed"] if delta["timed"] else None
    rate = ok / requests if requests else None
    report: dict[str, Any] = {"track": arm["track"], "requests": round(requests),
                              "success_rate": rate, "mean_ms": mean_ms, "reward": None}
    if requests < max(settings.min_requests, 1) and settings.reward != "custom":
        return report
    posterior = Posterior.from_dict(arm["posterior"])
    reward: float | None
    latency = None if mean_ms is None else \
        settings.latency_target_ms / (settings.latency_target_ms + mean_ms)
    if settings.reward == "success_rate":
        posterior.add_counts(ok, requests - ok)
        reward = rate
    elif settings.reward == "latency":
        reward = latency
    elif settings.reward == "success_rate_and_latency":
        reward = None if latency is None or rate is None else rate * latency
    else:
        reward = custom
    if reward is not None and settings.reward != "success_rate":
        posterior.add_reward(reward)
    arm["posterior"] = posterior.to_dict()
    report["reward"] = reward
    return report


def _canary_service(driver: Driver) -> dict[str, Any]:
    app = driver.app
    found = app.cluster.get("v1", "Service", arm_service(app.name, 1), app.namespace)
    if found is None:
        raise RolloutError(f"Service {app.namespace}/{arm_service(app.name, 1)} does not exist",
                           hint="render with this rollout.traffic and deploy the output")
    return found


def _wait(driver: Driver, deployment: str) -> None:
    """Until an arm's pods are ready; a timeout aborts the bandit (exit 9)."""
    try:
        driver.app.wait_ready(deployment)
    except MlshipTimeoutError as err:
        driver.abort(f"arm not ready: {err.message}", claim=False)
        raise MlshipTimeoutError(f"{err.message}; rollout aborted: traffic is back on the "
                                 "stable, every other arm scaled to zero",
                                 hint=err.hint) from None
    driver._check()
