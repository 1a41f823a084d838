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

WATCH_POLL_S = 2.0


def status(
    watch: bool = typer.Option(False, "--watch", "-w", help="Keep printing what changes until "
                               "the rollout ends (or --timeout)."),
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = JSON,
) -> None:
    """Show the rollout state stored in the cluster (phase, step, weight, last analysis, what
    to run next, and whether a process is still driving it).

    Examples:

        mlship rollout status

        mlship rollout status --watch --timeout 600
    """
    import time

    from mlship.cli.rollout_view import summary_lines
    from mlship.rollout.state import read

    driver, _ = make_driver(config, kubeconfig, context, namespace, 30.0)
    _, state = read(driver.app.cluster, driver.app.namespace, driver.app.name)
    if watch and not json_output:
        printed: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            lines = summary_lines(driver.app.namespace, driver.app.name, state)
            for line in lines:
                if line not in printed:
                    output.info(line)
            printed = lines
            if state is None or not state.active or state.undriven or \
                    time.monotonic() >= deadline:
                return
            time.sleep(WATCH_POLL_S)
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
    to_revision: int | None = typer.Option(None, "--to-revision", min=1, help="Roll the "
                                           "stable back to this revision (`mlship history` "
                                           "lists them) instead of the one before.",
                                           show_default=False),
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    timeout: float = opts.TIMEOUT, json_output: bool = JSON,
) -> None:
    """Switch an unfinished rollout back to the old version; after a promotion (or a
    deploy), roll the stable back to the revision before, and wait for it.

    Examples:

        mlship rollout undo

        mlship rollout undo --to-revision 3
    """
    from mlship.errors import RolloutError
    from mlship.rollout.driver import Superseded
    from mlship.rollout.undo import undo as run_undo

    view = make_view()
    driver, _ = make_driver(config, kubeconfig, context, namespace, timeout, view)
    try:
        with view:
            result = run_undo(driver, to_revision)
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
        moved = result["result"]
        output.info(f"rolled Deployment {driver.app.namespace}/{driver.app.name} back: from "
                    f"{moved['from']['image']} (revision {moved['from']['revision']}) → to "
                    f"{moved['to']['image']} (revision {moved['to']['revision']}, now "
                    f"{moved['to']['now']})")


def history(
    config: Path = opts.CONFIG, kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT, namespace: str | None = opts.NAMESPACE,
    json_output: bool = JSON,
) -> None:
    """List the stable Deployment's revisions: image, model version, settings, who made each
    and how (deploy, promote, undo, rollback), and the last rollout's outcome.

    Examples:

        mlship history

        mlship history --json | jq '.revisions[-1].image'
    """
    from mlship.cluster.history import history as revisions_of
    from mlship.rollout.state import read

    driver, _ = make_driver(config, kubeconfig, context, namespace, 30.0)
    app = driver.app
    revisions = revisions_of(app.cluster, app.namespace, app.name)
    _, state = read(app.cluster, app.namespace, app.name)
    last = None if state is None else {"strategy": state.strategy, "image": state.image,
                                       "phase": state.phase, "reason": state.reason,
                                       "updated": state.updated}
    if json_output:
        output.emit_json("history", {**where(driver),
                                     "revisions": [r.to_dict() for r in revisions],
                                     "last_rollout": last})
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Deployment {app.namespace}/{app.name}", title_justify="left")
    for column in ("revision", "image", "version", "settings", "made by", "when"):
        table.add_column(column, overflow="fold")
    for revision in revisions:
        change = revision.change
        made = f"{change.action}: {change.detail} ({change.by})" if change else "(not recorded)"
        table.add_row(f"{revision.number}{' *' if revision.current else ''}",
                      escape(revision.image), escape(revision.version or ""),
                      escape(revision.config_map or ""), escape(made),
                      change.at if change else revision.created)
    output.stdout_console().print(table)
    if state is not None:
        output.info(f"last rollout: {state.strategy} of {state.image}: {state.phase}"
                    + (f" ({state.reason})" if state.reason else ""))
