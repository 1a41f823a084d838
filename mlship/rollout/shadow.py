"""`mlship rollout shadow`: the new image answers a copy of live requests, and the stable
runtime compares its answers with the new one's before any user sees them.

Steps, each recorded in the rollout state (strategy ``shadow``) on the stable Deployment:
the shadow Deployment and Service (mlship.rollout.shadow_ops) are created and waited for; the
stable's model container gets the mirroring settings (a rolling update without a gap), so
its runtime mirrors a sample of requests to the shadow and exports the comparison
(mlship_runtime.shadow). Then, every poll, Prometheus is asked how many requests were compared
since the mirroring began, per output, and how many disagreed; synthetic requests to the
stable (``--traffic-url``) make up for too little live traffic. At ``min_compared`` compared
requests the shadow passes when every output's share of disagreeing requests is within its
``max_disagreement``, else fails (exit 8); too few within ``timeout`` is exit 13. Either way
the shadow objects and the mirroring settings are removed, the stable image untouched.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlship.errors import MlshipError, NoDataError, RolloutError
from mlship.rollout import shadow_ops

if TYPE_CHECKING:
    from mlship_runtime.compare import Tolerances

    from mlship.config.shadow import ShadowSettings
    from mlship.rollout.driver import Driver
    from mlship.rollout.prometheus import Prometheus
    from mlship.rollout.state import RolloutState
    from mlship.rollout.synthetic import SyntheticTraffic

POLL_S = 2.0
MIN_RANGE_S = 10  # a PromQL range needs two scrapes in it


@dataclass(frozen=True)
class Comparison:
    """What Prometheus says the stable compared since ``since``, per output."""

    compared: dict[str, float] = field(default_factory=dict)
    disagreed: dict[str, float] = field(default_factory=dict)
    errors: float = 0.0
    mirrored: float = 0.0

    @property
    def least_compared(self) -> float:
        return min(self.compared.values(), default=0.0)

    def failing(self, tolerances: Tolerances) -> list[str]:
        """Outputs whose share of disagreeing requests exceeds their max_disagreement."""
        return [name for name, count in self.compared.items() if count > 0 and
                self.disagreed.get(name, 0.0) / count >
                tolerances.of(name).max_disagreement + 1e-9]

    def to_dict(self) -> dict[str, Any]:
        return {"compared": {k: round(v, 1) for k, v in self.compared.items()},
                "disagreed": {k: round(v, 1) for k, v in self.disagreed.items()},
                "errors": round(self.errors, 1), "mirrored": round(self.mirrored, 1)}


def _selector(models: tuple[str, ...], extra: dict[str, str]) -> str:
    matcher = f"model={json.dumps(models[0])}" if len(models) == 1 else \
        f"model=~{json.dumps('|'.join(models))}"
    return ",".join([matcher, *(f"{label}={json.dumps(value)}" for label, value in
                                extra.items())])


def measure(prometheus: Prometheus, models: tuple[str, ...], extra: dict[str, str],
            seconds: float) -> Comparison:
    """Increases over the last ``seconds`` (rounded down: never before the shadow began)."""
    window = f"{max(1, math.floor(seconds))}s"
    sel = _selector(models, extra)

    def total(metric: str, more: str = "") -> float:
        value, _ = prometheus.query(f"sum(increase({metric}{{{sel}{more}}}[{window}]))")
        return value or 0.0

    outputs = prometheus.label_values(f"mlship_shadow_compared_total{{{sel}}}", "output")
    compared, disagreed = {}, {}
    for output in outputs:
        more = f",output={json.dumps(output)}"
        compared[output] = total("mlship_shadow_compared_total", more)
        disagreed[output] = total("mlship_shadow_disagreed_total", more)
    return Comparison(compared, disagreed, total("mlship_shadow_errors_total"),
                      total("mlship_shadow_mirrored_total"))


def run_shadow(driver: Driver, image: str, prometheus: Prometheus, settings: ShadowSettings,
               synthetic: SyntheticTraffic | None) -> RolloutState:
    """Start, judge and remove the shadow of ``image``; returns the state (phase ``passed``)
    or raises RolloutError (failed) / NoDataError (too few compared) after removing it."""
    from mlship.config.rollout import duration_s

    app = driver.app
    state = driver.start("shadow", image, [0])
    tolerances = settings.tolerances()
    try:
        created = shadow_ops.create(app.cluster, driver.stable, image, state.revision)
        state.record("shadow_created", objects=created)
        driver.save()
        driver.emit("info", {"message": f"shadow created: {', '.join(created)}"})
        app.wait_ready(shadow_ops.shadow_name(app.name))
        url = shadow_ops.shadow_url(app.name, app.namespace, app.port)
        if shadow_ops.set_stable_env(app.cluster, app.namespace, app.name,
                                     shadow_ops.mirroring_env(url, settings.sample_rate,
                                                              settings.max_per_second,
                                                              tolerances)):
            app.wait_ready(app.name)
        state.record("mirroring", url=url, sample_rate=settings.sample_rate,
                     max_per_second=settings.max_per_second, min_compared=settings.min_compared)
        driver.save()
        driver.emit("info", {"message": f"the stable mirrors to {url}"})
        result = _wait_for_verdict(driver, prometheus, settings, tolerances, synthetic,
                                   duration_s(settings.timeout))
    except MlshipError as error:  # Superseded or Ctrl-C: the state stays for abort/status
        _end(driver, "aborted", f"shadow: {error.message}")
        raise
    failing = result.failing(tolerances)
    state.record("comparison", status="fail" if failing else "pass", values=result.to_dict())
    driver.emit("info", {"message": f"comparison: {'fail' if failing else 'pass'}: "
                                    f"{_describe(result)}"})
    if failing:
        detail = "; ".join(
            f"output {name!r}: {result.disagreed.get(name, 0):.0f} of "
            f"{result.compared[name]:.0f} compared requests disagreed "
            f"({result.disagreed.get(name, 0) / result.compared[name]:.1%} > "
            f"max_disagreement {tolerances.of(name).max_disagreement:.1%})" for name in failing)
        _end(driver, "aborted", f"shadow {image} disagrees with {state.stable_image}: {detail}")
        raise RolloutError(f"shadow {image} failed: {detail}; the shadow is removed and "
                           f"{state.stable_image} keeps serving unchanged",
                           hint="`mlship compare OLD.onnx NEW.onnx` shows the same comparison "
                                "offline; widen rollout.shadow tolerances if this is intended")
    _end(driver, "passed", None)
    return state


def _wait_for_verdict(driver: Driver, prometheus: Prometheus, settings: ShadowSettings,
                      tolerances: Tolerances, synthetic: SyntheticTraffic | None,
                      timeout_s: float) -> Comparison:
    app = driver.app
    extra = dict(app.settings.analysis.selector)
    started = time.monotonic()
    last = Comparison()
    while True:
        elapsed = time.monotonic() - started
        # Never a range reaching back before this shadow: an earlier one's series (the same
        # app's stable pods, another image) would count in it.
        if elapsed >= MIN_RANGE_S:
            last = measure(prometheus, app.metric_models, extra, elapsed)
            driver.emit("info", {"message": f"  compared so far: {_describe(last)}"})
            if last.least_compared >= settings.min_compared:
                return last
        if elapsed > timeout_s:
            raise NoDataError(
                f"shadow: only {last.least_compared:.0f} of rollout.shadow.min_compared "
                f"{settings.min_compared} requests compared within {settings.timeout} "
                f"({last.mirrored:.0f} mirrored, {last.errors:.0f} without an answer from "
                "the shadow)", hint="send traffic (or --traffic-url to the stable), check that "
                "Prometheus scrapes the stable's pods, or lower rollout.shadow.min_compared")
        if synthetic is not None and not synthetic.running:
            missing = settings.min_compared - last.least_compared
            count = math.ceil(missing / max(settings.sample_rate, 1e-3))
            over = max(POLL_S, count / min(synthetic.rps, settings.max_per_second))
            sending = synthetic.send(count, over)
            driver.emit("synthetic", {"requests": sending, "url": synthetic.url})
        driver.sleep(POLL_S)


def _end(driver: Driver, phase: str, reason: str | None) -> None:
    """Mirroring off, shadow gone, the stable untouched otherwise; state final."""
    app, state = driver.app, driver.state
    assert state is not None
    if shadow_ops.remove(app.cluster, app.namespace, app.name):
        app.wait_ready(app.name)
    state.phase, state.reason = phase, reason
    state.record(phase, **({"reason": reason} if reason else {}))
    driver.save()
    driver.emit("info", {"message": f"shadow {phase}: {shadow_ops.shadow_name(app.name)} "
                                    f"removed, {state.stable_image} serves unchanged"})


def _describe(result: Comparison) -> str:
    if not result.compared:
        return f"nothing yet ({result.mirrored:.0f} mirrored, {result.errors:.0f} errors)"
    return ", ".join(f"{name}: {result.disagreed.get(name, 0):.0f}/{count:.0f} disagreed"
                     for name, count in result.compared.items())
