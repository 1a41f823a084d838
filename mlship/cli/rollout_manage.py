"""`mlship rollout status | promote | abort | undo` and `mlship history`: a rollout seen, ended
or taken back from any process, and the Deployment's revisions."""

from __future__ import annotations

from pathlib import Path

import typer

from mlship.cli import cluster as opts
from mlship.cli import output
from mlship.cli.rollout_common import (
    JSON,
    finish,
    make_driver,
    make_view,
    report,
    where,
)


def status(
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    json_output: bool = JSON,
) -> None:
    """Show the rollout state stored in the cluster (phase, step, weight, last analysis)."""
    from mlship.rollout.state import read

    driver, _ = make_driver(config, kubeconfig, context, namespace, 30.0)
    _, state = read(driver.app.cluster, driver.app.namespace, driver.app.name)
    report("status", driver, state, json_output)


def promote(
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = JSON,
) -> None:
    """Promote the rollout in progress now, skipping its remaining steps."""
    view = make_view()
    driver, _ = make_driver(config, kubeconfig, context, namespace, timeout, view)
    finish("promote", driver, view, json_output, driver.promote)


def abort(
    reason: str = typer.Option("aborted by `mlship rollout abort`", "--reason",
                               help="Recorded in the rollout state."),
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = JSON,
) -> None:
    """Abort the rollout in progress: traffic back to stable, canary to zero (exit 0)."""
    view = make_view()
    driver, _ = make_driver(config, kubeconfig, context, namespace, timeout, view)
    finish("abort", driver, view, json_output, lambda: driver.abort(reason))


def undo(
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = JSON,
) -> None:
    """Switch an unfinished rollout back to the old version; after a promotion, roll back."""
    from mlship.errors import RolloutError
    from mlship.rollout.driver import Superseded

    view = make_view()
    driver, _ = make_driver(config, kubeconfig, context, namespace, timeout, view)
    try:
        with view:
            result = driver.undo()
    except Superseded as superseded:
        now = superseded.state
        raise RolloutError("the rollout changed while undo ran: it is now "
                           f"{now.phase if now else 'gone'}",
                           hint="see `mlship rollout status`") from None
    if json_output:
        output.emit_json("rollout", {"action": "undo", **where(driver),
                                     "rollout": result["state"], "undo": result["action"],
                                     "result": result.get("result")})
    elif result["action"] == "rollback":
        output.info(f"rolled Deployment {driver.app.namespace}/{driver.app.name} back to "
                    f"revision {result['result']}")


