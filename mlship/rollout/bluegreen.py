"""Blue-green: the new version beside the old, then all traffic at once; the old one stays up
until promoted, so ``mlship rollout undo`` switches back instantly."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlship.rollout.driver import Driver
from mlship.rollout.state import RolloutState

if TYPE_CHECKING:
    from mlship.rollout.analysis import Prometheus
    from mlship.rollout.synthetic import SyntheticTraffic


def bluegreen(driver: Driver, image: str, *, promote: bool,
              analysis: tuple[Prometheus, float, SyntheticTraffic] | None = None
              ) -> RolloutState:
    """Start the new version beside the old, then switch all traffic at once; the old one
    stays up until ``promote`` (``undo`` switches back instantly).

    No request reaches green before the switch: under replica traffic the shared Service
    is pinned to the stable track before green exists. With ``analysis`` (Prometheus, an
    interval, synthetic traffic to green), green is judged before the switch, and a
    failing green is removed with nobody having been served by it."""
    state, app = driver.start("bluegreen", image, [100]), driver.app
    driver.emit("step", {"step": 1, "steps": 1, "weight": 100,
                       "canary_replicas": state.stable_replicas})
    app.pin_stable()
    app.create_canary(driver.stable, image, state.revision, state.stable_replicas)
    driver.wait_canary()
    if analysis is not None:
        prometheus, interval_s, synthetic = analysis
        state.step, state.weight = 0, 0
        driver.analyse_step(prometheus, interval_s, synthetic)
    app.switch_to_canary()
    state.step, state.weight, state.effective_weight = 0, 100, 100.0
    state.phase = "switched"
    state.record("switched")
    driver.save()
    driver.emit("switched", state.to_json())
    return driver.promote() if promote else state

