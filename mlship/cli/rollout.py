"""`mlship rollout canary | ab | bluegreen | bandit | status | promote | abort | undo`.

Every subcommand reads mlship.yaml for the app's name, namespace and ``rollout:`` section,
connects with the shared cluster options, and keeps all state in the cluster, so a promote or
abort from a fresh CI job acts on a rollout another job started. Progress goes to stderr (a
live status line on a terminal, plain lines otherwise); ``--json`` prints one
``mlship.rollout/v1`` document. The Kubernetes client and the analysis are imported inside the
commands.
"""

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

app = typer.Typer(name="rollout", no_args_is_help=True, rich_markup_mode=None,
                  help="Canary, A/B, blue-green and bandit rollouts judged on Prometheus metrics; "
                       "status, promote, abort and undo from any process.")

_JSON = typer.Option(False, "--json", callback=output.set_json_mode,
                     help="Print one JSON object on stdout.")
_IMAGE = typer.Option(..., "--image", help="The new image (registry/repository:tag or @digest).",
                      show_default=False)
_PROMETHEUS = typer.Option(None, "--prometheus-url", help="Prometheus base URL (default: "
                           "rollout.analysis.prometheus_url).", show_default=False)
_INTERVAL = typer.Option(None, "--interval", help="Time at each step before its analysis, "
                         "e.g. 30s (default: rollout.interval).", show_default=False)
_TRAFFIC_URL = typer.Option(None, "--traffic-url", help="URL reaching the canary (a "
                            "port-forward): send synthetic requests from the model's signature "
                            "when live traffic is below min_requests.", show_default=False)


def _driver(config: Path, kubeconfig: Path | None, context: str | None, namespace: str | None,
            timeout: float, view: RolloutView | None = None) -> tuple[Driver, MlshipConfig]:
    from mlship.config.load import load_config
    from mlship.rollout.driver import Driver
    from mlship.rollout.ops import App

    loaded = load_config(config)
    cluster = opts.connect(kubeconfig, context)
    served = (*(name for name, _ in loaded.served_models), *(p.name for p in loaded.pipelines))
    app_ = App(cluster, namespace or loaded.namespace.name, loaded.name, loaded.rollout,
               loaded.service.port, timeout, served=served)
    return Driver(app_, view), loaded


def canary(
    image: str | None = typer.Option(None, "--image", help="The new image; required unless "
                                     "--resume.", show_default=False),
    steps: str | None = typer.Option(None, "--steps", help="Comma-separated canary "
                                     "percentages, e.g. 10,50,100 (default: rollout.steps).",
                                     show_default=False),
    interval: str | None = _INTERVAL,
    prometheus_url: str | None = _PROMETHEUS,
    traffic_url: str | None = _TRAFFIC_URL,
    no_promote: bool = typer.Option(False, "--no-promote", help="Stop after the last step "
                                    "passes (phase paused) for `mlship rollout promote`."),
    resume: bool = typer.Option(False, "--resume", help="Continue the canary in progress from "
                                "its current step (e.g. after the job driving it died)."),
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = _JSON,
) -> None:
    """Shift traffic to IMAGE step by step, judging each step on Prometheus; abort on failure."""
    if image is None and not resume:
        raise BadInputError("--image is required (or --resume to continue a rollout)")
    chosen_steps = _steps(steps) if steps else None  # usage mistakes before any I/O
    view = _view()
    driver, loaded = _driver(config, kubeconfig, context, namespace, timeout, view)
    interval_s = _interval(interval, loaded)
    synthetic = _synthetic(traffic_url, loaded)
    prometheus = _prometheus(prometheus_url, loaded, config)
    if resume:
        driver.resume(image)
    else:
        assert image is not None
        driver.start("canary", image, chosen_steps or loaded.rollout.steps)
    _finish("canary", driver, view, json_output, lambda: driver.run_steps(
        prometheus, interval_s, promote=not no_promote, synthetic=synthetic), synthetic)


def ab(
    image: str = _IMAGE,
    header: list[str] = typer.Option([], "--header", help="NAME=VALUE sending a request to "
                                     "the canary; repeatable (default: rollout.ab_match)."),
    iterations: int | None = typer.Option(None, "--iterations", min=1, help="Analysis checks "
                                          "(default: rollout.ab_iterations).",
                                          show_default=False),
    interval: str | None = _INTERVAL,
    prometheus_url: str | None = _PROMETHEUS,
    traffic_url: str | None = _TRAFFIC_URL,
    no_promote: bool = typer.Option(False, "--no-promote", help="Stop after the last check "
                                    "passes (phase paused) for `mlship rollout promote`."),
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = _JSON,
) -> None:
    """A/B test: only requests with the given headers reach IMAGE (Istio or Gateway API)."""
    view = _view()
    driver, loaded = _driver(config, kubeconfig, context, namespace, timeout, view)
    settings = loaded.rollout
    if header:
        settings = settings.model_copy(update={"ab_match": _headers(header)})
    if settings.traffic == "replicas":
        raise ConfigError("rollout.traffic: 'replicas' cannot route by header; A/B needs "
                          "'istio' or 'gateway'")
    if not settings.ab_match:
        raise BadInputError("no header to match: pass --header NAME=VALUE or set "
                            "rollout.ab_match")
    driver.app.settings = settings
    interval_s, synthetic = _interval(interval, loaded), _synthetic(traffic_url, loaded)
    prometheus = _prometheus(prometheus_url, loaded, config)
    driver.start("ab", image, [0] * (iterations or settings.ab_iterations))
    _finish("ab", driver, view, json_output, lambda: driver.run_steps(
        prometheus, interval_s, promote=not no_promote, synthetic=synthetic), synthetic)


def bluegreen(
    image: str = _IMAGE,
    promote: bool = typer.Option(False, "--promote", help="Finish at once after the switch "
                                 "(default: rollout.bluegreen.auto_promote); otherwise the old "
                                 "version stays up for an instant `mlship rollout undo`."),
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = _JSON,
) -> None:
    """Start IMAGE beside the stable version, then switch all traffic to it once it is ready."""
    view = _view()
    driver, loaded = _driver(config, kubeconfig, context, namespace, timeout, view)
    auto = promote or loaded.rollout.bluegreen.auto_promote
    _finish("bluegreen", driver, view, json_output,
            lambda: driver.bluegreen(image, promote=auto))


def bandit(
    image: list[str] = typer.Option(..., "--image", help="A new image; repeat for more "
                                    "versions. The stable is always an arm too.",
                                    show_default=False),
    rounds: int | None = typer.Option(None, "--rounds", min=1, help="Weight updates (default: "
                                      "rollout.bandit.rounds).", show_default=False),
    interval: str | None = typer.Option(None, "--interval", help="Time between weight "
                                        "updates, e.g. 30s (default: rollout.bandit.interval, "
                                        "else rollout.interval).", show_default=False),
    prometheus_url: str | None = _PROMETHEUS,
    promote: bool = typer.Option(False, "--promote", help="Promote the best version after the "
                                 "last round; otherwise stop in phase paused at the learned "
                                 "weights, for `mlship rollout promote` or `abort`."),
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = _JSON,
) -> None:
    """Split traffic between the stable and each IMAGE with a multi-armed bandit whose rewards
    come from Prometheus (Istio or Gateway API weights)."""
    from mlship.rollout.bandit import check_bounds
    from mlship.rollout.policy import BanditPolicy

    view = _view()
    driver, loaded = _driver(config, kubeconfig, context, namespace, timeout, view)
    settings = loaded.rollout.bandit
    if loaded.rollout.traffic == "replicas":
        raise ConfigError("rollout.traffic: 'replicas' cannot give a bandit's shares (the "
                          "replica ratio is coarse); a bandit needs 'istio' or 'gateway'")
    problem = check_bounds(len(image) + 1, settings.min_share, settings.max_share)
    if problem:
        raise ConfigError(f"rollout.bandit: {problem}; change min_share/max_share or the "
                          "number of --image")
    interval_s = _interval(interval or settings.interval, loaded)
    prometheus = _prometheus(prometheus_url, loaded, config)
    policy = BanditPolicy(driver, prometheus, settings)
    policy.start(image, rounds or settings.rounds)
    _finish("bandit", driver, view, json_output, lambda: policy.run(interval_s,
                                                                     promote=promote))


def status(
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    json_output: bool = _JSON,
) -> None:
    """Show the rollout state stored in the cluster (phase, step, weight, last analysis)."""
    from mlship.rollout.state import read

    driver, _ = _driver(config, kubeconfig, context, namespace, 30.0)
    _, state = read(driver.app.cluster, driver.app.namespace, driver.app.name)
    _report("status", driver, state, json_output)


def promote(
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = _JSON,
) -> None:
    """Promote the rollout in progress now, skipping its remaining steps."""
    view = _view()
    driver, _ = _driver(config, kubeconfig, context, namespace, timeout, view)
    _finish("promote", driver, view, json_output, driver.promote)


def abort(
    reason: str = typer.Option("aborted by `mlship rollout abort`", "--reason",
                               help="Recorded in the rollout state."),
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = _JSON,
) -> None:
    """Abort the rollout in progress: traffic back to stable, canary to zero (exit 0)."""
    view = _view()
    driver, _ = _driver(config, kubeconfig, context, namespace, timeout, view)
    _finish("abort", driver, view, json_output, lambda: driver.abort(reason))


def undo(
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = _JSON,
) -> None:
    """Switch an unfinished rollout back to the old version; after a promotion, roll back."""
    from mlship.errors import RolloutError
    from mlship.rollout.driver import Superseded

    view = _view()
    driver, _ = _driver(config, kubeconfig, context, namespace, timeout, view)
    try:
        with view:
            result = driver.undo()
    except Superseded as superseded:
        now = superseded.state
        raise RolloutError("the rollout changed while undo ran: it is now "
                           f"{now.phase if now else 'gone'}",
                           hint="see `mlship rollout status`") from None
    if json_output:
        output.emit_json("rollout", {"action": "undo", **_where(driver),
                                     "rollout": result["state"], "undo": result["action"],
                                     "result": result.get("result")})
    elif result["action"] == "rollback":
        output.info(f"rolled Deployment {driver.app.namespace}/{driver.app.name} back to "
                    f"revision {result['result']}")


for _name, _command in (("canary", canary), ("ab", ab), ("bluegreen", bluegreen),
                        ("bandit", bandit), ("status", status), ("promote", promote),
                        ("abort", abort), ("undo", undo)):
    app.command(_name)(_command)


# -- helpers --------------------------------------------------------------------------------


def _finish(action: str, driver: Driver, view: RolloutView, json_output: bool,
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
    _report(action, driver, state, json_output)


def _report(action: str, driver: Driver, state: RolloutState | None, json_output: bool) -> None:
    from mlship.cli.rollout_view import summary_lines

    if json_output:
        output.emit_json("rollout", {"action": action, **_where(driver),
                                     "rollout": state.to_json() if state else None})
        return
    lines = summary_lines(driver.app.namespace, driver.app.name, state)
    for line in lines if action == "status" else lines[:1]:
        output.info(line)


def _where(driver: Driver) -> dict[str, str]:
    return {"name": driver.app.name, "namespace": driver.app.namespace}


def _steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadInputError(f"--steps: {text!r} is invalid: must be percentages like "
                            "10,25,50,100") from None
    if not steps or any(not 0 < step <= 100 for step in steps) or steps != sorted(set(steps)):
        raise BadInputError(f"--steps: {text!r} is invalid: increasing percentages 1..100")
    return steps


def _interval(text: str | None, loaded: MlshipConfig) -> float:
    from mlship.config.rollout import duration_s

    if text is None:
        return loaded.rollout.interval_s
    try:
        return duration_s(text)
    except ValueError as err:
        raise BadInputError(f"--interval: {err}") from None


def _headers(pairs: list[str]) -> list[Any]:
    from mlship.config.rollout import HeaderMatch

    matches = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise BadInputError(f"--header: {pair!r} is invalid: must be NAME=VALUE")
        matches.append(HeaderMatch(name=name, value=value))
    return matches


def _prometheus(url: str | None, loaded: MlshipConfig, config: Path) -> Any:
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


def _synthetic(url: str | None, loaded: MlshipConfig) -> Any:
    from mlship.rollout.synthetic import SyntheticTraffic

    settings = loaded.rollout.analysis.synthetic_traffic
    url = url or (settings.url if settings.enabled else None)
    if settings.enabled and not url:
        raise ConfigError("rollout.analysis.synthetic_traffic.enabled needs its url (or "
                          "--traffic-url)")
    return SyntheticTraffic(url, loaded.name, settings.rps) if url else None


def _view() -> RolloutView:
    from mlship.cli.rollout_view import RolloutView

    return RolloutView(output.stderr_console(), live=output.color_enabled())
