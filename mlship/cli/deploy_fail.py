"""A deploy whose rollout failed: read the failed pod's last log lines while it still exists,
roll back, and say what happened in words that stay true after the rollback (the revision the
restored template now is, its image; the pod by name, its log lines as they were)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlship.cli import output
from mlship.errors import MlshipError, MlshipTimeoutError, RolloutError

if TYPE_CHECKING:
    from mlship.cluster.apply import Preview
    from mlship.cluster.wait import RolloutStatus
    from mlship.kube import Cluster


def fail(cluster: Cluster, status: RolloutStatus, deployment: Preview, *, rollback: bool,
         timeout: float) -> None:
    """Roll back when this deploy made a new revision, then raise exit 8 (failed) or 9."""
    from mlship.cluster import revisions
    from mlship.cluster.wait import wait_rollout

    ns, name = status.namespace, status.name
    logs = _captured_logs(cluster, status)  # before the rollback deletes the pod
    before = int(((deployment.live or {}).get("metadata", {}).get("annotations") or {})
                 .get(revisions.REVISION, 0)) or None
    live = cluster.get("apps/v1", "Deployment", name, ns) or {"metadata": {}}
    now = int((live["metadata"].get("annotations") or {}).get(revisions.REVISION, 0)) or None
    if not rollback:
        outcome = "not rolled back (--no-rollback)"
    elif before is None:
        outcome = "not rolled back: this was the Deployment's first revision"
    elif now is None or now <= before:
        outcome = "not rolled back: this deploy did not start a new revision"
    else:
        try:
            target = revisions.rollback(cluster, ns, name, to_revision=before)
            restored = wait_rollout(cluster, ns, name, timeout=timeout)
            outcome = _rolled_back(cluster, ns, name, target, restored)
        except MlshipError as err:  # report the rollout's failure first, then this one
            outcome = f"rollback to revision {before} failed: {err.message}"
    output.info(outcome)
    for line in logs:
        output.info(line)
    hint = _hint(status)
    if status.outcome == "timeout":
        raise MlshipTimeoutError(
            f"rollout of Deployment {ns}/{name} not complete after {timeout:g} s "
            f"({status.counts()})" + (f": {status.reason}" if status.reason else "")
            + f"; {outcome}", hint="raise --timeout if it is only slow; " + hint)
    raise RolloutError(f"rollout of Deployment {ns}/{name} failed: {status.reason}; {outcome}",
                       hint=hint)


def _rolled_back(cluster: Cluster, ns: str, name: str, target: int,
                 restored: RolloutStatus) -> str:
    """Kubernetes numbers a restored template as the newest revision: name that one (it is
    what `mlship history` and `kubectl rollout history` show), and where it came from."""
    from mlship.cluster.history import current, history

    now = current(history(cluster, ns, name))
    number = restored.revision or (now.number if now else target)
    image = f", image {now.image}" if now else ""
    where = f"rolled back to revision {number} (revision {target}'s template{image})" \
        if number != target else f"rolled back to revision {number}{image}"
    if restored.outcome == "complete":
        return f"{where}, {restored.available}/{restored.desired} available"
    return f"{where}, which did not recover either: {restored.reason or restored.outcome}"


def _captured_logs(cluster: Cluster, status: RolloutStatus) -> list[str]:
    """Lines to print about the failed pod's own output, where it can explain the failure."""
    from mlship.cluster.wait import LOGS_HELP, last_log_lines

    pod, reason = status.failed_pod, status.failed_reason
    if pod is None or reason not in LOGS_HELP:
        return []
    lines, why = last_log_lines(cluster, status.namespace, pod, status.failed_container,
                                previous=reason != "NotReady")
    which = "its last run" if reason != "NotReady" else "it"
    if why is not None:
        return [f"pod {pod}: its log could not be read before the rollback ({why})"]
    if not lines:
        return [f"pod {pod}: {which} logged nothing"]
    return [f"pod {pod}: the last {len(lines)} log lines of {which}, read before the "
            "rollback:", *(f"  | {line}" for line in lines)]


def _hint(status: RolloutStatus) -> str:
    """What to look at next: the pod's events where logs cannot help (a pull, scheduling),
    the kept log lines above where they can; never `logs deployment/NAME`, which after a
    rollback reads the healthy pods."""
    ns, name, pod = status.namespace, status.name, status.failed_pod
    reason = status.failed_reason
    if pod is None:
        return f"kubectl -n {ns} describe deployment {name}"
    if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
        return (f"the image could not be pulled: check its name and the pull secrets "
                f"(image.pull_secrets); kubectl -n {ns} describe pod {pod} shows the "
                "registry's answer, if the pod still exists")
    if reason == "Unschedulable":
        return (f"no node could take pod {pod}: lower resources or add nodes; kubectl -n "
                f"{ns} describe deployment {name} shows the scheduler's events")
    if reason in ("CreateContainerConfigError", "CreateContainerError"):
        return (f"pod {pod} could not create its container (a missing ConfigMap, Secret or "
                f"key): kubectl -n {ns} get events --field-selector involvedObject.name={pod}")
    return (f"the log lines of pod {pod} are above; kubectl -n {ns} get events "
            f"--field-selector involvedObject.name={pod} lists its events")
