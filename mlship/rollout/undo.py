"""``mlship rollout undo``: take back the last change, explicitly.

An unfinished rollout is switched back (an abort). Otherwise the stable Deployment goes back to
the revision before the current one, or to ``--to-revision N``, the way deploy's rollback does,
and the change is recorded on the revision (``mlship history`` shows it). There is no undo of
nothing: the last rollout ended aborted, or the last change already was an undo.
"""

from __future__ import annotations

from typing import Any

from mlship.cluster.history import Change, Revision, current, history, record_change
from mlship.errors import RolloutError
from mlship.rollout.driver import Driver
from mlship.rollout.state import RolloutState


def undo(driver: Driver, to_revision: int | None = None) -> dict[str, Any]:
    """Switch back an unfinished rollout; else roll the stable Deployment back to the
    revision before the current one (or ``to_revision``), and wait for it as deploy's
    rollback does. Refused, with the reason, when there is nothing to take back: the last
    rollout ended in an abort (its image never replaced the stable), or the last change
    already was an undo (undoing it again would flip back)."""
    from mlship.cluster.revisions import rollback  # the same rollback `mlship deploy` does

    state = driver.read()
    if state is not None and state.active:
        aborted = driver.abort("undone by `mlship rollout undo`")
        return {"action": "abort", "state": aborted.to_json() if aborted else None}
    app = driver.app
    before = current(history(app.cluster, app.namespace, app.name))
    if to_revision is None:
        _refuse_pointless_undo(driver, state, before)
    target = rollback(app.cluster, app.namespace, app.name, to_revision=to_revision)
    app.guard = lambda: None  # no rollout is being driven: nobody to be superseded by
    app.wait_ready(app.name)
    after = current(history(app.cluster, app.namespace, app.name))
    if before is None or after is None:  # a Deployment always has its current revision
        raise RolloutError(f"Deployment {app.namespace}/{app.name} has no current revision")
    record_change(app.cluster, app.namespace, app.name, Change.now(
        "undo", f"from revision {before.number} ({before.image}) to revision {target} "
                f"({after.image})"))
    app.record_deployed(after.image, "undo")
    if state is not None and state.phase == "promoted" and before.image == state.image:
        driver.state = state
        driver.claim(state, "undone", "undone")
    return {"action": "rollback", "state": state.to_json() if state else None,
            "result": {"from": {"revision": before.number, "image": before.image},
                       "to": {"revision": target, "now": after.number,
                              "image": after.image}}}


def _refuse_pointless_undo(driver: Driver, state: RolloutState | None,
                           now: Revision | None) -> None:
    app = driver.app
    if state is not None and state.phase == "aborted" and now is not None and \
            now.image == state.stable_image:
        raise RolloutError(
            f"the last rollout of {app.namespace}/{app.name} ({state.strategy} of "
            f"{state.image}) ended aborted: {state.stable_image} was never replaced, so "
            "there is nothing to undo",
            hint="`mlship history` lists the revisions; `mlship rollout undo "
                 "--to-revision N` goes back to one of them")
    if now is not None and now.change is not None and now.change.action == "undo":
        raise RolloutError(
            f"the last change of {app.namespace}/{app.name} already was an undo "
            f"({now.change.detail}); undoing it again would only switch back",
            hint="`mlship history` lists the revisions; pass --to-revision N")
