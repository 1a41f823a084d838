"""Canary, A/B and blue-green rollouts: the step loop, and promote, abort and undo.

A canary moves through ``rollout.steps``: scale the canary for the step's share, wait until it
is ready, route the share to it, wait ``interval``, then judge it on Prometheus
(``mlship.rollout.analysis``). A failing check aborts on its own: traffic back to stable, canary
scaled to zero, RolloutError naming the metric, value and threshold. Every transition is
written to the state annotation first (``mlship.rollout.state``), so another process can read,
promote, abort or resume it; the driver re-reads that state while it waits and stops as soon
as someone else changed it (``Superseded``). A bandit (``mlship.rollout.policy``) drives its
rounds through the same public methods (start, check, sleep, save, emit, abort, promote); this
module never imports it, so the policy can build on the driver and not the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from mlship.cluster.history import Change, record_change
from mlship.errors import MlshipTimeoutError, NoDataError, RolloutError
from mlship.render.traffic import canary_replicas, effective_weight, revision_of
from mlship.rollout.state import (
    RolloutState,
    StaleStateError,
    new_owner,
    read,
    refuse_if_active,
    write,
)

if TYPE_CHECKING:
    from mlship.rollout.analysis import Prometheus, Verdict
    from mlship.rollout.ops import App
    from mlship.rollout.synthetic import SyntheticTraffic

Emit = Callable[[str, dict[str, Any]], None]  # an event's kind and its data
GUARD_EVERY_S = 1.0
HEARTBEAT_S = 10.0  # a driven rollout's state is never older than this (plus one write)
WRITE_ATTEMPTS = 5
# Synthetic requests go out during the first part of an interval, so they are scraped in time.
SYNTHETIC_SHARE = 0.7


class Superseded(Exception):
    """Another process aborted, promoted or took over the rollout this one was driving."""

    def __init__(self, state: RolloutState | None) -> None:
        super().__init__("superseded")
        self.state = state

    def outcome(self) -> RolloutState:
        """The state to report when the other process promoted; RolloutError otherwise."""
        state = self.state
        if state is not None and state.phase in ("promoting", "promoted"):
            return state
        if state is None:
            raise RolloutError("the rollout state was removed while this rollout ran")
        if state.phase in ("aborting", "aborted", "undone"):
            raise RolloutError(f"the rollout was aborted by {state.owner}: {state.reason}")
        raise RolloutError(f"the rollout was taken over by {state.owner} (phase {state.phase})")


class Driver:
    """Drives one app's rollout from this process; ``app.guard`` notices other processes."""

    def __init__(self, app: App, on_event: Emit | None = None) -> None:
        self.app = app
        self.emit: Emit = on_event or (lambda kind, data: None)
        self.owner = new_owner()
        self.state: RolloutState | None = None
        self.stable: dict[str, Any] = {}
        self._last_guard = 0.0
        self._last_save = time.monotonic()
        self._saved = ""  # the phase this process last stored
        app.guard = self.guard

    # -- state plumbing; check, guard, sleep, save and emit are what a policy drives with --

    def read(self) -> RolloutState | None:
        self.stable, state = read(self.app.cluster, self.app.namespace, self.app.name)
        return state

    def check(self) -> None:
        """Superseded unless the stored rollout is still the one this process last wrote."""
        current = self.read()
        if current is None or current.owner != self.owner or current.phase != self._saved:
            raise Superseded(current)

    def guard(self) -> None:
        """``check``, at most once a GUARD_EVERY_S: cheap enough for every poll of a wait.
        Every HEARTBEAT_S it also stores the state again, so ``rollout status`` can tell a
        rollout being driven from one whose driver died (its ``updated`` stops moving)."""
        if time.monotonic() - self._last_guard >= GUARD_EVERY_S:
            self._last_guard = time.monotonic()
            self.check()
            if self.state is not None and self.state.active and \
                    time.monotonic() - self._last_save >= HEARTBEAT_S:
                self.save()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, noticing meanwhile when another process takes the rollout."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.emit("wait", {"remaining_s": left})
            time.sleep(min(GUARD_EVERY_S, left))
            self.guard()

    def save(self, *, claim: bool = False) -> None:
        """Write the state, retrying when only the Deployment's status moved meanwhile."""
        state = self.state
        assert state is not None
        for _ in range(WRITE_ATTEMPTS):
            try:
                self.stable = write(self.app.cluster, self.app.namespace, self.app.name,
                                    state, resource_version=self._version())
                self._saved = state.phase
                self._last_save = time.monotonic()
                return
            except StaleStateError:
                if not claim:
                    self.check()  # Superseded if someone else changed the rollout itself
                    continue
                current = self.read()
                if current is None or current.started != state.started:
                    raise RolloutError("the rollout changed while this command took it over; "
                                       "see `mlship rollout status`") from None
                # Claim the fresher copy, so the other writer's last records are kept. In place:
                # callers (promote, abort) go on with the object they passed in, and a new one
                # would be written back later with this claim's phase, undoing theirs.
                owner, phase, reason, event = state.owner, state.phase, state.reason, \
                    state.history[-1]
                for item in fields(current):
                    setattr(state, item.name, getattr(current, item.name))
                state.owner, state.phase, state.reason = owner, phase, reason
                state.history.append(event)
        raise RolloutError(f"Deployment {self.app.namespace}/{self.app.name} keeps changing; "
                           "could not store the rollout state")

    def _version(self) -> str:
        return str(self.stable["metadata"]["resourceVersion"])

    def claim(self, state: RolloutState, phase: str, event: str, **details: Any) -> None:
        """Take ``state`` over for this process (promote, abort, resume from anywhere)."""
        previous = state.owner
        state.owner, state.phase = self.owner, phase
        state.record(event, by=self.owner, **({"from": previous} if previous != self.owner
                                               else {}), **details)
        self.state = state
        self.save(claim=True)

    # -- starting --

    def start(self, strategy: str, image: str, steps: list[int]) -> RolloutState:
        app = self.app
        for _ in range(WRITE_ATTEMPTS):
            current = self.read()
            refuse_if_active(current, app.namespace, app.name)
            app.preflight(self.stable)
            app.check_image(self.stable, image)  # a missing tag: exit 6 now, not a timeout
            stable_image = app.stable_image(self.stable)
            if image == stable_image:
                raise RolloutError(f"Deployment {app.namespace}/{app.name} already runs {image}",
                                   hint="build and push a new image, then roll it out")
            state = RolloutState(
                strategy=strategy, phase="progressing", image=image, stable_image=stable_image,
                revision=revision_of(app.namespace, app.name, image), traffic=app.traffic,
                steps=list(steps), stable_replicas=int(self.stable["spec"].get("replicas", 1)),
                owner=self.owner)
            state.record("started", image=image, stable_image=stable_image)
            try:
                self.stable = write(app.cluster, app.namespace, app.name, state,
                                    resource_version=self._version())
            except StaleStateError:
                continue  # read again: someone may have started a rollout meanwhile
            self.state, self._saved = state, state.phase
            self.emit("started", state.to_json())
            return state
        raise RolloutError(f"Deployment {app.namespace}/{app.name} keeps changing; try again")

    def resume(self, image: str | None) -> RolloutState:
        state = self.read()
        app = self.app
        if state is None or state.phase not in ("progressing", "paused") or \
                state.strategy not in ("canary", "ab"):
            phase = state.phase if state else "none"
            raise RolloutError(f"no canary rollout of {app.namespace}/{app.name} to resume "
                               f"(last phase: {phase})")
        if image is not None and image != state.image:
            raise RolloutError(f"the rollout in progress is of {state.image}, not {image}",
                               hint="abort it first to roll out another image")
        self.claim(state, "progressing", "resumed")
        self.emit("started", state.to_json())
        return state

    # -- the step loop --

    def run_steps(self, prometheus: Prometheus, interval_s: float, *, promote: bool,
                  synthetic: SyntheticTraffic | None = None) -> RolloutState:
        state, app = self.state, self.app
        assert state is not None
        matches = list(app.settings.ab_match) if state.strategy == "ab" else []
        index = max(state.step, 0)
        while index < len(state.steps):
            weight = state.steps[index]
            replicas = canary_replicas(state.traffic, state.stable_replicas, weight)
            self.emit("step", {"step": index + 1, "steps": len(state.steps), "weight": weight,
                               "canary_replicas": replicas})
            self.check()
            app.create_canary(self.stable, state.image, state.revision, replicas)
            self.wait_canary()
            app.route(weight, matches)
            state.step, state.weight = index, weight
            state.effective_weight = effective_weight(state.traffic, state.stable_replicas,
                                                      replicas, weight)
            state.record("step", step=index + 1, weight=weight, canary_replicas=replicas)
            self.save()
            self.emit("routed", {"step": index + 1, "weight": weight,
                                 "effective_weight": state.effective_weight})
            self.analyse_step(prometheus, interval_s, synthetic)
            index += 1
        if promote:
            return self.promote()
        state.phase = "paused"
        state.record("paused")
        self.save()
        self.emit("paused", state.to_json())
        return state

    def wait_canary(self) -> None:
        """Until the canary's pods are ready. Pods that cannot start abort the rollout at once
        (exit 8, naming the kubelet's reason); a timeout aborts it too (exit 9)."""
        state = self.state
        assert state is not None
        try:
            self.app.wait_ready(self.app.canary)
        except (MlshipTimeoutError, RolloutError) as err:
            self.abort(f"canary not ready: {err.message}", claim=False)
            raise type(err)(f"{err.message}; rollout aborted: traffic stays on "
                            f"{state.stable_image}, canary scaled to zero",
                            hint=err.hint) from None
        self.check()

    def analyse_step(self, prometheus: Prometheus, interval_s: float,
                      synthetic: SyntheticTraffic | None) -> None:
        from mlship.rollout.analysis import analyse

        state, settings = self.state, self.app.settings.analysis
        assert state is not None
        while True:
            if synthetic is not None:
                sending = synthetic.send(settings.min_requests + settings.min_requests // 4,
                                         interval_s * SYNTHETIC_SHARE)
                self.emit("synthetic", {"requests": sending, "url": synthetic.url})
            self.sleep(interval_s)
            verdict = analyse(prometheus, self.app.metric_models, state.revision, settings)
            self.emit("analysis", {"step": state.step + 1, "weight": state.weight,
                                   **verdict.to_dict()})
            state.record("analysis", step=state.step + 1, weight=state.weight,
                         status=verdict.status, reason=verdict.reason,
                         values={check.metric: check.value for check in verdict.checks},
                         query_ms=[round(ms, 1) for ms in verdict.query_ms])
            if verdict.status == "pass":
                state.inconclusive = 0
                self.save()
                return
            if verdict.status == "fail":
                self._abort_on(verdict, verdict.reason)
            state.inconclusive += 1
            self.save()
            if state.inconclusive >= settings.max_inconclusive:
                self._abort_on(verdict, f"{verdict.reason} ({state.inconclusive} checks in a "
                                        "row, rollout.analysis.max_inconclusive)")

    def _abort_on(self, verdict: Verdict, reason: str) -> None:
        state = self.state
        assert state is not None
        where = f"step {state.step + 1}/{len(state.steps)} ({state.weight} %)"
        self.abort(f"analysis at {where}: {reason}", claim=False)
        message = (f"canary {state.image} aborted at {where}: {reason}; traffic is back on "
                   f"{state.stable_image} and the canary is scaled to zero")
        if verdict.status == "inconclusive":  # not judged bad: never shown good (exit 13)
            hint = {"no-traffic": "send traffic to the canary, enable synthetic traffic with "
                                  "--traffic-url, or lower rollout.analysis.min_requests",
                    "not-scraped": "make Prometheus scrape the canary's pods (its "
                                   "ServiceMonitor or scrape config)",
                    "no-answer": "check --prometheus-url (or rollout.analysis.prometheus_url) "
                                 "answers from here"}.get(verdict.no_data or "")
            raise NoDataError(message, hint=hint)
        raise RolloutError(message)

    # -- ending: promote, abort, blue-green, undo --

    def promote(self) -> RolloutState:
        """Make the new image the stable one; from any process, at any step."""
        app = self.app
        state = self.state if self.state is not None and self.state.owner == self.owner \
            else self.read()
        if state is None:
            raise RolloutError(f"no rollout of {app.namespace}/{app.name} to promote")
        if state.phase == "promoted":
            self.emit("info", {"message": f"{state.image} is already promoted"})
            return state
        if not state.active:
            raise RolloutError(f"the last rollout of {app.namespace}/{app.name} is {state.phase}"
                               f": {state.reason}", hint="start a new one to roll out again")
        if state.strategy == "bandit":
            app.extra_arms = state.choose_winner()  # the arm with the best posterior wins
        self.claim(state, "promoting", "promoting")
        self.emit("promoting", {"image": state.image})
        if app.stable_image(self.stable) != state.image:
            app.set_stable_image(state.image)
        app.wait_ready(app.name)
        record_change(app.cluster, app.namespace, app.name,
                      Change.now("promote", f"{state.strategy} of {state.image} (replacing "
                                            f"{state.stable_image})"))
        app.record_deployed(state.image, "promote")
        app.restore()
        state.phase, state.weight, state.effective_weight = "promoted", 0, 0.0
        state.record("promoted")
        self.save()
        self.emit("promoted", state.to_json())
        return state

    def abort(self, reason: str, *, claim: bool = True) -> RolloutState | None:
        """Traffic back to stable, canary to zero, stable image reverted if it had changed."""
        app = self.app
        state = self.state if not claim else self.read()
        if state is None or not state.active:
            self.emit("info", {"message": "no rollout in progress; nothing to abort"})
            return state
        driven = state.owner != self.owner and state.phase in ("progressing", "promoting")
        app.extra_arms = state.extra_deployments  # a bandit's
        state.reason = reason
        self.claim(state, "aborting", "aborting", reason=reason)
        self.emit("aborting", {"reason": reason})
        app.restore()
        if app.stable_image(self.stable) != state.stable_image:
            app.set_stable_image(state.stable_image)
            app.wait_ready(app.name)
        if driven:
            # A driver that was between its last check and its next move may have made it.
            time.sleep(GUARD_EVERY_S)
            app.restore()
        state.phase, state.reason, state.weight, state.effective_weight = \
            "aborted", reason, 0, 0.0
        state.record("aborted", reason=reason)
        self.save()
        self.emit("aborted", state.to_json())
        return state
