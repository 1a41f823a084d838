"""`mlship rollout canary | ab | bluegreen | bandit | status | promote | abort | undo`.

Every subcommand reads mlship.yaml for the app's name, namespace and ``rollout:`` section,
connects with the shared cluster options, and keeps all state in the cluster, so a promote or
abort from a fresh CI job acts on a rollout another job started. Progress goes to stderr (a
live status line on a terminal, plain lines otherwise); ``--json`` prints one
``mlship.rollout/v1`` document. The Kubernetes client and the analysis are imported inside the
commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mlship.cli import cluster as opts
from mlship.cli import rollout_manage as manage
from mlship.cli.rollout_common import (
    IMAGE,
    INTERVAL,
    JSON,
    PROMETHEUS,
    SKIP_CHECKS,
    TRAFFIC_URL,
    finish,
    interval_of,
    make_driver,
    make_view,
    parse_headers,
    parse_steps,
    prometheus_of,
    synthetic_of,
)
from mlship.errors import BadInputError, ConfigError

if TYPE_CHECKING:
    from mlship.rollout.state import RolloutState

app = typer.Typer(name="rollout", no_args_is_help=True, rich_markup_mode=None,
                  help="Canary, A/B, blue-green and bandit rollouts judged on Prometheus metrics; "
                       "status, promote, abort and undo from any process.")

def canary(
    image: str | None = typer.Option(None, "--image", help="The new image; required unless "
                                     "--resume.", show_default=False),
    steps: str | None = typer.Option(None, "--steps", help="Comma-separated canary "
                                     "percentages, e.g. 10,50,100 (default: rollout.steps).",
                                     show_default=False),
    interval: str | None = INTERVAL,
    prometheus_url: str | None = PROMETHEUS,
    traffic_url: str | None = TRAFFIC_URL,
    no_promote: bool = typer.Option(False, "--no-promote", help="Stop after the last step "
                                    "passes (phase paused) for `mlship rollout promote`."),
    resume: bool = typer.Option(False, "--resume", help="Continue the canary in progress from "
                                "its current step (e.g. after the job driving it died)."),
    skip_checks: bool = SKIP_CHECKS,
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = JSON,
) -> None:
    """Shift traffic to IMAGE step by step, judging each step on Prometheus; abort on failure."""
    if image is None and not resume:
        raise BadInputError("--image is required (or --resume to continue a rollout)")
    chosen_steps = parse_steps(steps) if steps else None  # usage mistakes before any I/O
    view = make_view()
    driver, loaded = make_driver(config, kubeconfig, context, namespace, timeout, view,
                                 skip_checks=skip_checks)
    interval_s = interval_of(interval, loaded)
    synthetic = synthetic_of(traffic_url, loaded)
    prometheus = prometheus_of(prometheus_url, loaded, config)
    if resume:
        driver.resume(image)
    else:
        assert image is not None
        driver.start("canary", image, chosen_steps or loaded.rollout.steps)
    finish("canary", driver, view, json_output, lambda: driver.run_steps(
        prometheus, interval_s, promote=not no_promote, synthetic=synthetic), synthetic)


def ab(
    image: str = IMAGE,
    header: list[str] = typer.Option([], "--header", help="NAME=VALUE sending a request to "
                                     "the canary; repeatable (default: rollout.ab_match)."),
    iterations: int | None = typer.Option(None, "--iterations", min=1, help="Analysis checks "
                                          "(default: rollout.ab_iterations).",
                                          show_default=False),
    interval: str | None = INTERVAL,
    prometheus_url: str | None = PROMETHEUS,
    traffic_url: str | None = TRAFFIC_URL,
    no_promote: bool = typer.Option(False, "--no-promote", help="Stop after the last check "
                                    "passes (phase paused) for `mlship rollout promote`."),
    skip_checks: bool = SKIP_CHECKS,
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = JSON,
) -> None:
    """A/B test: only requests with the given headers reach IMAGE (Istio or Gateway API)."""
    view = make_view()
    driver, loaded = make_driver(config, kubeconfig, context, namespace, timeout, view,
                                 skip_checks=skip_checks)
    settings = loaded.rollout
    if header:
        settings = settings.model_copy(update={"ab_match": parse_headers(header)})
    if settings.traffic == "replicas":
        raise ConfigError("rollout.traffic: 'replicas' cannot route by header; A/B needs "
                          "'istio' or 'gateway'")
    if not settings.ab_match:
        raise BadInputError("no header to match: pass --header NAME=VALUE or set "
                            "rollout.ab_match")
    driver.app.settings = settings
    interval_s, synthetic = interval_of(interval, loaded), synthetic_of(traffic_url, loaded)
    prometheus = prometheus_of(prometheus_url, loaded, config)
    driver.start("ab", image, [0] * (iterations or settings.ab_iterations))
    finish("ab", driver, view, json_output, lambda: driver.run_steps(
        prometheus, interval_s, promote=not no_promote, synthetic=synthetic), synthetic)


def bluegreen(
    image: str = IMAGE,
    promote: bool = typer.Option(False, "--promote", help="Finish at once after the switch "
                                 "(default: rollout.bluegreen.auto_promote); otherwise the old "
                                 "version stays up for an instant `mlship rollout undo`."),
    traffic_url: str | None = typer.Option(None, "--traffic-url", help="URL reaching the new "
                                           "pods before the switch (a port-forward): judge "
                                           "them first under synthetic requests.",
                                           show_default=False),
    prometheus_url: str | None = PROMETHEUS,
    interval: str | None = INTERVAL,
    skip_checks: bool = SKIP_CHECKS,
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = JSON,
) -> None:
    """Start IMAGE beside the stable version, then switch all traffic to it once it is ready.

    No request reaches the new version before the switch. With --traffic-url (a URL reaching
    the new pods, e.g. a port-forward to one), it is first judged on Prometheus under synthetic
    requests from the model's input profile, and not switched to when it fails.
    """
    from mlship.rollout.bluegreen import bluegreen as run_bluegreen

    view = make_view()
    driver, loaded = make_driver(config, kubeconfig, context, namespace, timeout, view,
                                 skip_checks=skip_checks)
    auto = promote or loaded.rollout.bluegreen.auto_promote
    synthetic = synthetic_of(traffic_url, loaded)
    analysis = None if synthetic is None else (
        prometheus_of(prometheus_url, loaded, config), interval_of(interval, loaded), synthetic)
    finish("bluegreen", driver, view, json_output,
            lambda: run_bluegreen(driver, image, promote=auto, analysis=analysis), synthetic)


def bandit(
    image: list[str] = typer.Option(..., "--image", help="A new image; repeat for more "
                                    "versions. The stable is always an arm too.",
                                    show_default=False),
    rounds: int | None = typer.Option(None, "--rounds", min=1, help="Weight updates (default: "
                                      "rollout.bandit.rounds).", show_default=False),
    interval: str | None = typer.Option(None, "--interval", help="Time between weight "
                                        "updates, e.g. 30s (default: rollout.bandit.interval, "
                                        "else rollout.interval).", show_default=False),
    prometheus_url: str | None = PROMETHEUS,
    promote: bool = typer.Option(False, "--promote", help="Promote the best version after the "
                                 "last round; otherwise stop in phase paused at the learned "
                                 "weights, for `mlship rollout promote` or `abort`."),
    skip_checks: bool = SKIP_CHECKS,
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = JSON,
) -> None:
    """Split traffic between the stable and each IMAGE with a multi-armed bandit whose rewards
    come from Prometheus (Istio or Gateway API weights)."""
    from mlship.rollout.bandit import check_bounds
    from mlship.rollout.policy import BanditPolicy

    view = make_view()
    driver, loaded = make_driver(config, kubeconfig, context, namespace, timeout, view,
                                 skip_checks=skip_checks)
    settings = loaded.rollout.bandit
    if loaded.rollout.traffic == "replicas":
        raise ConfigError("rollout.traffic: 'replicas' cannot give a bandit's shares (the "
                          "replica ratio is coarse); a bandit needs 'istio' or 'gateway'")
    problem = check_bounds(len(image) + 1, settings.min_share, settings.max_share)
    if problem:
        raise ConfigError(f"rollout.bandit: {problem}; change min_share/max_share or the "
                          "number of --image")
    interval_s = interval_of(interval or settings.interval, loaded)
    prometheus = prometheus_of(prometheus_url, loaded, config)
    policy = BanditPolicy(driver, prometheus, settings)
    policy.start(image, rounds or settings.rounds)
    finish("bandit", driver, view, json_output, lambda: policy.run(interval_s,
                                                                     promote=promote))




def shadow(
    image: str = IMAGE,
    prometheus_url: str | None = PROMETHEUS,
    traffic_url: str | None = typer.Option(None, "--traffic-url", help="URL reaching the "
                                           "stable (a port-forward): synthetic requests from "
                                           "the model's input profile, mirrored like live "
                                           "ones, when live traffic is too low.",
                                           show_default=False),
    promote_on_pass: bool = typer.Option(False, "--promote-on-pass", help="When the shadow "
                                         "passes, continue into a canary of IMAGE "
                                         "(rollout.steps, judged on live traffic or "
                                         "rollout.analysis.synthetic_traffic), promoted when "
                                         "every step passes."),
    interval: str | None = INTERVAL,
    skip_checks: bool = SKIP_CHECKS,
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = JSON,
) -> None:
    """Run IMAGE as a shadow that no user reaches: the stable mirrors a sample of requests to
    it and compares the answers output by output (rollout.shadow); pass or fail on the
    comparison in Prometheus, then remove the shadow. Exit 8 when it disagrees beyond
    tolerance, 13 when too few requests were compared."""
    from mlship.rollout.shadow import run_shadow

    view = make_view()
    driver, loaded = make_driver(config, kubeconfig, context, namespace, timeout, view,
                                 skip_checks=skip_checks)
    synthetic = synthetic_of(traffic_url, loaded)
    prometheus = prometheus_of(prometheus_url, loaded, config)
    interval_s = interval_of(interval, loaded) if promote_on_pass else 0.0

    def work() -> RolloutState:
        state = run_shadow(driver, image, prometheus, loaded.rollout.shadow, synthetic)
        if not promote_on_pass:
            return state
        passed = next(e for e in reversed(state.history) if e.event == "comparison")
        canary_state = driver.start("canary", image, loaded.rollout.steps)
        canary_state.record("shadow", **passed.details)  # what let the canary start
        driver.save()
        # --traffic-url reaches the stable: the canary's synthetic requests, if any, come
        # from rollout.analysis.synthetic_traffic.url.
        return driver.run_steps(prometheus, interval_s, promote=True,
                                synthetic=synthetic_of(None, loaded))

    finish("shadow", driver, view, json_output, work, synthetic)


for _name, _command in (("canary", canary), ("ab", ab), ("bluegreen", bluegreen),
                        ("bandit", bandit), ("shadow", shadow), ("status", manage.status),
                        ("promote", manage.promote), ("abort", manage.abort),
                        ("undo", manage.undo)):
    app.command(_name)(_command)
