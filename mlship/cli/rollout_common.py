"""What every `mlship rollout` subcommand shares: its options, the driver built from
mlship.yaml and the cluster options, the progress view, and the one way results are reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mlship.cli import cluster as opts
from mlship.cli import output
from mlship.errors import BadInputError, ConfigError

if TYPE_CHECKING:
    from mlship.cli.rollout_view import RolloutView
    from mlship.config.schema import MlshipConfig
    from mlship.rollout.driver import Driver
    from mlship.rollout.state import RolloutState

JSON = typer.Option(False, "--json", callback=output.set_json_mode,
                     help="Print one JSON object on stdout.")
IMAGE = typer.Option(..., "--image", help="The new image (registry/repository:tag or @digest).",
                      show_default=False)
PROMETHEUS = typer.Option(None, "--prometheus-url", help="Prometheus base URL (default: "
                           "rollout.analysis.prometheus_url).", show_default=False)
INTERVAL = typer.Option(None, "--interval", help="Time at each step before its analysis, "
                         "e.g. 30s (default: rollout.interval).", show_default=False)
SKIP_CHECKS = typer.Option(False, "--skip-checks", help="Skip the pre-rollout checks (the new "
                           "image is in its registry), as deploy's --skip-checks does.")
TRAFFIC_URL = typer.Option(None, "--traffic-url", help="URL reaching the canary (a "
                            "port-forward): send synthetic requests from the model's signature "
                            "when live traffic is below min_requests.", show_default=False)


def make_driver(config: Path, kubeconfig: Path | None, context: str | None,
                namespace: str | None, timeout: float, view: RolloutView | None = None, *,
                skip_checks: bool = False) -> tuple[Driver, MlshipConfig]:
    from mlship.config.load import load_config
    from mlship.rollout.driver import Driver
    from mlship.rollout.ops import App

    loaded = load_config(config)
    cluster = opts.connect(kubeconfig, context)
    served = (*(name for name, _ in loaded.served_models), *(p.name for p in loaded.pipelines))
    app_ = App(cluster, namespace or loaded.namespace.name, loaded.name, loaded.rollout,
               loaded.service.port, timeout, served=served, skip_checks=skip_checks,
               version=loaded.model.version)
    return Driver(app_, view), loaded


def finish(action: str, driver: Driver, view: RolloutView, json_output: bool,
            work: Callable[[], RolloutState | None],
            synthetic: Any = None) -> None:
    from mlship.rollout.driver import Superseded

    try:
        with view:
            state = work()
    except Superseded as superseded:
        state = superseded.outcome()  # RolloutError unless another process promoted it
        verb = "promoted" if state.phase == "promoted" else "being promoted"
        output.info(f"{verb} by {state.owner}; this process stops driving it")
    except KeyboardInterrupt:
        output.info("the rollout stays as it is in the cluster: `mlship rollout abort` "
                    "undoes it, `promote` finishes it, `canary --resume` continues a canary")
        raise
    finally:
        if synthetic is not None:
            synthetic.stop()
    report(action, driver, state, json_output)


def report(action: str, driver: Driver, state: RolloutState | None, json_output: bool) -> None:
    from mlship.cli.rollout_view import summary_lines

    if json_output:
        document: dict[str, Any] = {"action": action, **where(driver),
                    "rollout": state.to_json() if state else None}
        if action == "status":
            document["undriven"] = state.undriven if state else None
        output.emit_json("rollout", document)
        return
    lines = summary_lines(driver.app.namespace, driver.app.name, state)
    for line in lines if action == "status" else lines[:1]:
        output.info(line)


def where(driver: Driver) -> dict[str, str]:
    return {"name": driver.app.name, "namespace": driver.app.namespace}


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadInputError(f"--steps: {text!r} is invalid: must be percentages like "
                            "10,25,50,100") from None
    if not steps or any(not 0 < step <= 100 for step in steps) or steps != sorted(set(steps)):
        raise BadInputError(f"--steps: {text!r} is invalid: increasing percentages 1..100")
    return steps


def interval_of(text: str | None, loaded: MlshipConfig) -> float:
    from mlship.config.rollout import duration_s

    if text is None:
        return loaded.rollout.interval_s
    try:
        return duration_s(text)
    except ValueError as err:
        raise BadInputError(f"--interval: {err}") from None


def parse_headers(pairs: list[str]) -> list[Any]:
    from mlship.config.rollout import HeaderMatch

    matches = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise BadInputError(f"--header: {pair!r} is invalid: must be NAME=VALUE")
        matches.append(HeaderMatch(name=name, value=value))
    return matches


def prometheus_of(url: str | None, loaded: MlshipConfig, config: Path) -> Any:
    from mlship.rollout.prometheus import Access, Prometheus

    url = url or loaded.rollout.analysis.prometheus_url
    if not url:
        raise ConfigError("rollout.analysis.prometheus_url is not set, and no --prometheus-url "
                          "was given: a canary cannot be judged without Prometheus")
    # Files named in rollout.analysis.prometheus are relative to mlship.yaml.
    access = Access.from_settings(loaded.rollout.analysis.prometheus, url,
                                  base=config.resolve().parent)
    prometheus = Prometheus(url, access=access)
    prometheus.check()  # before anything changes in the cluster
    return prometheus


def synthetic_of(url: str | None, loaded: MlshipConfig) -> Any:
    from mlship.rollout.synthetic import SyntheticTraffic

    settings = loaded.rollout.analysis.synthetic_traffic
    url = url or (settings.url if settings.enabled else None)
    if settings.enabled and not url:
        raise ConfigError("rollout.analysis.synthetic_traffic.enabled needs its url (or "
                          "--traffic-url)")
    return SyntheticTraffic(url, loaded.name, settings.rps) if url else None


def make_view() -> RolloutView:
    from mlship.cli.rollout_view import RolloutView

    return RolloutView(output.stderr_console(), live=output.color_enabled())
