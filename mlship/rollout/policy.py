"""``mlship rollout bandit``: weights between two or more versions, learned from Prometheus.

The arms are the stable Deployment and one Deployment per new image (``NAME-canary``, then
``NAME-canary-2``, ...), each behind its own Service and labelled track/revision exactly like a
canary, so the runtime's metrics tell them apart. Every interval ``BanditPolicy`` reads each
arm's cumulative counters from Prometheus, turns the difference since the last round into
evidence (``mlship.rollout.bandit``), and writes new route weights within [min_share,
max_share]. The arms, their posteriors and the weights of every round are in the rollout
state, so ``rollout status``, ``promote`` (the best posterior wins) and ``abort`` work on a
bandit from any process.

The policy drives the rollout through the ``Driver``'s public methods; what a round learns and
chooses is ``mlship.rollout.rounds``, which needs neither the cluster nor Prometheus.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from mlship.errors import MlshipTimeoutError, NoDataError, RolloutError
from mlship.render.traffic import (
    arm_service,
    arm_service_object,
    arm_track,
    canary_replicas,
    revision_of,
)
from mlship.rollout.analysis import arm_queries
from mlship.rollout.bandit import shares
from mlship.rollout.rounds import Evidence, Reading, choose, learn
from mlship.rollout.state import Arm, BanditState, Counters, RolloutState, read

if TYPE_CHECKING:
    from mlship.config.rollout import BanditSettings
    from mlship.rollout.analysis import Prometheus
    from mlship.rollout.driver import Driver
    from mlship.rollout.ops import App


def plan_arms(app: App, stable: dict[str, Any], images: list[str]) -> list[Arm]:
    """The arms, stable first, before anything exists in the cluster."""
    arms = [Arm(track=arm_track(0), image=app.stable_image(stable), revision="",
                service=arm_service(app.name, 0), deployment=app.name)]
    for index, image in enumerate(images, start=1):
        arms.append(Arm(track=arm_track(index), image=image,
                        revision=revision_of(app.namespace, app.name, image),
                        service=arm_service(app.name, index),
                        deployment=arm_service(app.name, index)))  # named like its Service
    return arms


class BanditPolicy:
    """One bandit run: ``start`` records it, ``run`` plays its rounds through ``driver``."""

    def __init__(self, driver: Driver, prometheus: Prometheus,
                 settings: BanditSettings) -> None:
        self.driver = driver
        self.prometheus = prometheus
        self.settings = settings

    @property
    def state(self) -> RolloutState:
        state = self.driver.state
        assert state is not None, "start the bandit first"
        return state

    @property
    def bandit(self) -> BanditState:
        bandit = self.state.bandit
        assert bandit is not None, "not a bandit's state"
        return bandit

    def start(self, images: list[str], rounds: int) -> RolloutState:
        """Record the bandit in the cluster (refused while another rollout holds the app)."""
        driver, app, settings = self.driver, self.driver.app, self.settings
        if len(set(images)) != len(images):
            raise RolloutError("the same --image is given twice: each version is one arm")
        stable_image = app.stable_image(read(app.cluster, app.namespace, app.name)[0])
        if stable_image in images[1:]:  # the first is refused by Driver.start
            raise RolloutError(f"Deployment {app.namespace}/{app.name} already runs "
                               f"{stable_image}: it is the stable arm, do not pass it as --image")
        state = driver.start("bandit", images[0], [0] * rounds)
        seed = settings.seed if settings.seed is not None else \
            random.SystemRandom().randrange(2**31)
        state.arms = plan_arms(app, driver.stable, images)
        state.bandit = BanditState.start(settings, rounds, seed)
        app.extra_arms = state.extra_deployments
        driver.save()
        return state

    def run(self, interval_s: float, *, promote: bool) -> RolloutState:
        """Start every arm, then update the weights each interval for ``rounds`` rounds."""
        driver, state, bandit, settings = self.driver, self.state, self.bandit, self.settings
        self._start_arms()
        self._learn(baseline=True)  # counters before the first round
        self._route([1.0 / len(state.arms)] * len(state.arms), [])  # round 0: an even split
        while bandit.round < bandit.rounds:
            driver.sleep(interval_s)  # the driver's wait, which notices an abort from elsewhere
            bandit.round += 1
            rewards = self._learn()
            self._give_up_when_blind(rewards)
            chance, wanted = choose(state.arms, bandit, settings)
            self._route(wanted, rewards)
            if settings.confidence is not None and max(chance) >= settings.confidence:
                confident = state.arms[chance.index(max(chance))].image
                state.record("confident", image=confident, prob_best=bandit.prob_best)
                break
        if promote:
            return driver.promote()
        state.phase = "paused"
        state.record("paused")
        driver.save()
        best = state.winner()
        assert best is not None  # a bandit has arms
        driver.emit("info", {"message": f"paused after round {bandit.round}, the weights stay: "
                                        f"`mlship rollout promote` makes {best.image} (the best so "
                                        "far) the stable, `mlship rollout abort` returns to it"})
        return state

    # -- the steps of a run ---------------------------------------------------------------

    def _start_arms(self) -> None:
        driver, app, state = self.driver, self.driver.app, self.state
        replicas = canary_replicas(state.traffic, state.stable_replicas, self.settings.max_share)
        for index, arm in enumerate(state.arms[1:], start=1):
            if index >= 2:  # the rendered Services cover the stable and the first canary only
                app.cluster.apply(arm_service_object(self._canary_service(), app.name, index),
                                  force=True)
            app.create_canary(driver.stable, arm.image, arm.revision, replicas, arm.track)
        for arm in state.arms[1:]:
            self._wait(arm.deployment)

    def _learn(self, *, baseline: bool = False) -> list[Evidence]:
        readings = [self._measure(arm) for arm in self.state.arms]
        return learn(self.state.arms, readings, self.settings, baseline=baseline)

    def _measure(self, arm: Arm) -> Reading:
        """The arm's counters now (and the custom reward's value) from Prometheus."""
        app, settings = self.driver.app, self.settings
        try:
            values = {key: self.prometheus.query(promql)[0] for key, promql in
                      arm_queries(app.metric_models, arm.track, arm.revision,
                                  app.settings.analysis).items()}
            custom = None
            if settings.reward == "custom" and settings.query:
                custom, _ = self.prometheus.query(settings.query.replace("{track}", arm.track)
                                                  .replace("{revision}", arm.revision))
        except RolloutError as err:
            return Reading(error=err.message)
        return Reading(Counters(**values), custom)

    def _give_up_when_blind(self, rewards: list[Evidence]) -> None:
        """Prometheus answered for no arm: after ``rollout.analysis.max_inconclusive`` such
        rounds in a row the bandit aborts, as a canary does, rather than route on what it
        cannot see."""
        state = self.state
        errors = [evidence.error for evidence in rewards if evidence.error is not None]
        if not rewards or len(errors) < len(rewards):
            state.inconclusive = 0
            return
        state.inconclusive += 1
        if state.inconclusive < self.driver.app.settings.analysis.max_inconclusive:
            return
        reason = (f"round {self.bandit.round}: no arm could be measured in "
                  f"{state.inconclusive} rounds in a row (rollout.analysis.max_inconclusive): "
                  f"{errors[0]}")
        self.driver.abort(reason, claim=False)
        raise NoDataError(f"bandit aborted at {reason}; traffic is back on "
                           f"{state.stable_image} and every other arm is removed",
                           hint="check --prometheus-url (or rollout.analysis.prometheus_url) "
                                "answers from here")

    def _route(self, wanted: list[float], rewards: list[Evidence]) -> None:
        driver, state, bandit = self.driver, self.state, self.bandit
        weights = shares(wanted, bandit.min_share, bandit.max_share)
        driver.check()  # nobody aborted or took over since this process last wrote
        driver.app.route(100 - weights[0], backends=[(arm.service, weight) for arm, weight
                                                      in zip(state.arms, weights, strict=True)])
        for arm, weight in zip(state.arms, weights, strict=True):
            arm.weight = weight
        # step/weight as a canary reports them: the round, and the share off the stable.
        state.step, state.weight = bandit.round - 1, 100 - weights[0]
        state.effective_weight = float(state.weight)
        reported = [evidence.to_json() for evidence in rewards]
        state.record("weights", round=bandit.round, weights=weights,
                     prob_best=bandit.prob_best, rewards=reported)
        driver.save()
        driver.emit("round", {"round": bandit.round, "rounds": bandit.rounds,
                              "weights": {arm.image: arm.weight for arm in state.arms},
                              "prob_best": bandit.prob_best, "rewards": reported})

    def _canary_service(self) -> dict[str, Any]:
        app = self.driver.app
        found = app.cluster.get("v1", "Service", arm_service(app.name, 1), app.namespace)
        if found is None:
            raise RolloutError(f"Service {app.namespace}/{arm_service(app.name, 1)} does not "
                               "exist", hint="render with this rollout.traffic and deploy the "
                                             "output")
        return found

    def _wait(self, deployment: str) -> None:
        """Until an arm's pods are ready; a timeout aborts the bandit (exit 9)."""
        try:
            self.driver.app.wait_ready(deployment)
        except MlshipTimeoutError as err:
            self.driver.abort(f"arm not ready: {err.message}", claim=False)
            raise MlshipTimeoutError(f"{err.message}; rollout aborted: traffic is back on the "
                                     "stable, every other arm scaled to zero",
                                     hint=err.hint) from None
        self.driver.check()
