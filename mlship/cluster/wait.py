"""Wait for a Deployment's rollout, and say why it is stuck in words taken from the cluster.

Polls the Deployment, its ReplicaSets, the new revision's pods and their events (a poll of
four small lists every half second is cheaper to get right than four watches, and a watch
would not see anything sooner on a rollout that takes seconds). Complete means what
``kubectl rollout status`` means: the new generation observed, every replica updated and
available, no old ones left. Failed means one of:

- the Deployment's ``Progressing`` condition says ``ProgressDeadlineExceeded``;
- ``ReplicaFailure`` (the ReplicaSet cannot create pods: PodSecurity, quota, LimitRange);
- a new pod waits in CrashLoopBackOff, ImagePullBackOff, ErrImagePull, InvalidImageName or a
  CreateContainer* error: each needs a new image or config, so waiting longer cannot help;
- a new pod runs but fails its readiness probe (Warning ``Unhealthy``) for longer than the
  probe's own ``periodSeconds x failureThreshold``.

Unschedulable pods are reported but not failed at once: a cluster autoscaler may add a node.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlship.cluster.revisions import REVISION, owned_replica_sets
from mlship.kube import match_labels

if TYPE_CHECKING:
    from mlship.kube import Cluster

FATAL_WAITING = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull",
                           "InvalidImageName", "CreateContainerConfigError",
                           "CreateContainerError", "RunContainerError"})
RECENT_EVENTS = 5
LOG_LINE_CHARS = 300
POLL_S = 0.5


@dataclass
class RolloutStatus:
    """One look at a rollout; ``outcome`` is progressing, complete, failed or timeout."""

    namespace: str
    name: str
    revision: int | None = None
    desired: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0
    total: int = 0
    outcome: str = "progressing"
    observed: bool = False  # the controller has seen the newest generation: counts are current
    reason: str | None = None  # why it failed (or why it is slow, at a timeout)
    problems: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    # The first new pod found failing, and why (a FATAL_WAITING reason, NotReady or
    # Unschedulable): the pod deploy's failure report names, its logs read before a rollback.
    failed_pod: str | None = None
    failed_container: str | None = None
    failed_reason: str | None = None

    def counts(self) -> str:
        return (f"{self.updated}/{self.desired} updated, {self.ready}/{self.desired} ready, "
                f"{self.available}/{self.desired} available")

    def to_dict(self) -> dict[str, Any]:
        return {"deployment": f"{self.namespace}/{self.name}", "revision": self.revision,
                "outcome": self.outcome, "desired": self.desired, "updated": self.updated,
                "ready": self.ready, "available": self.available, "reason": self.reason,
                "duration_s": round(self.elapsed_s, 2)}


def wait_rollout(cluster: Cluster, namespace: str, name: str, *, timeout: float,
                 on_update: Callable[[RolloutStatus], None] | None = None,
                 poll_s: float = POLL_S) -> RolloutStatus:
    """Poll until the rollout completes, fails, or ``timeout`` seconds pass; never raises for
    those outcomes (the caller decides about rollback), only for API errors (ClusterError)."""
    started = time.monotonic()
    unready_since: dict[str, float] = {}
    while True:
        status = observe(cluster, namespace, name, unready_since)
        status.elapsed_s = time.monotonic() - started
        if status.outcome == "progressing" and status.elapsed_s >= timeout:
            status.outcome = "timeout"
            status.reason = status.reason or (status.problems[0] if status.problems else None)
        if on_update is not None:
            on_update(status)
        if status.outcome != "progressing":
            return status
        time.sleep(poll_s)


def observe(cluster: Cluster, namespace: str, name: str,
            unready_since: dict[str, float] | None = None) -> RolloutStatus:
    """The rollout's state now; ``unready_since`` carries probe-failure times between polls."""
    status = RolloutStatus(namespace, name)
    deployment = cluster.get("apps/v1", "Deployment", name, namespace)
    if deployment is None:
        status.outcome, status.reason = "failed", f"Deployment {namespace}/{name} was deleted"
        return status
    spec, state = deployment["spec"], deployment.get("status") or {}
    status.desired = int(spec.get("replicas", 1))
    status.updated = int(state.get("updatedReplicas") or 0)
    status.ready = int(state.get("readyReplicas") or 0)
    status.available = int(state.get("availableReplicas") or 0)
    status.total = int(state.get("replicas") or 0)
    observed = int(state.get("observedGeneration") or 0) >= deployment["metadata"]["generation"]
    revision = (deployment["metadata"].get("annotations") or {}).get(REVISION)
    status.revision = int(revision) if revision and observed else None
    status.observed = observed
    conditions = {c["type"]: c for c in state.get("conditions") or []}
    if not observed:
        return status  # the controller has not seen this generation: nothing new to read yet
    new_rs = next((rs for rs in owned_replica_sets(cluster, deployment)
                   if (rs["metadata"].get("annotations") or {}).get(REVISION) == revision), None)
    pods, events = _pods_and_events(cluster, namespace, deployment, new_rs)
    status.events = [_event_line(event) for event in events[-RECENT_EVENTS:]]
    fatal = _diagnose(status, pods, events, unready_since if unready_since is not None else {})
    progressing = conditions.get("Progressing", {})
    replica_failure = conditions.get("ReplicaFailure", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        detail = f"; {status.problems[0]}" if status.problems else ""
        status.outcome, status.reason = "failed", \
            f"progress deadline exceeded: {progressing.get('message', '')}{detail}"
    elif replica_failure.get("status") == "True":
        status.outcome, status.reason = "failed", \
            f"{replica_failure.get('reason', 'ReplicaFailure')}: {replica_failure.get('message')}"
    elif fatal:
        status.outcome, status.reason = "failed", fatal
    elif (status.updated >= status.desired and status.total <= status.updated
          and status.available >= status.updated):
        status.outcome = "complete"
    return status


def _pods_and_events(cluster: Cluster, namespace: str, deployment: dict[str, Any],
                     new_rs: dict[str, Any] | None) -> tuple[list[dict[str, Any]],
                                                             list[dict[str, Any]]]:
    """The new revision's pods, and the events about them, their ReplicaSet and the scaling."""
    if new_rs is None:
        return [], []
    selector = match_labels(new_rs["spec"]["selector"])
    pods = [pod for pod in cluster.list("v1", "Pod", namespace, selector)
            if not pod["metadata"].get("deletionTimestamp")]
    about = {new_rs["metadata"]["uid"]} | {pod["metadata"]["uid"] for pod in pods}
    rs_name = new_rs["metadata"]["name"]
    since = _applied_at(deployment)
    events = [event for event in cluster.list("v1", "Event", namespace)
              if _event_time(event)[:19] >= since
              and (event["involvedObject"].get("uid") in about
                   or (event["involvedObject"].get("uid") == deployment["metadata"]["uid"]
                       and rs_name in (event.get("message") or "")))]
    events.sort(key=_event_time)
    return pods, events


def _applied_at(deployment: dict[str, Any]) -> str:
    """When the template was last applied, by the server's clock (as events are stamped): a
    ReplicaSet reused from an earlier attempt must not bring that attempt's events along."""
    times = [str(entry.get("time") or "") for entry in
             deployment["metadata"].get("managedFields") or []
             if entry.get("operation") in ("Apply", "Update") and not entry.get("subresource")
             and "f:template" in json.dumps(entry.get("fieldsV1") or {})]
    return max(times, default="")[:19]


def _event_time(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime")
               or event.get("firstTimestamp") or event["metadata"].get("creationTimestamp")
               or "")


def _event_line(event: dict[str, Any]) -> str:
    involved = event["involvedObject"]
    count = f" (x{event['count']})" if (event.get("count") or 1) > 1 else ""
    return (f"{event.get('type', 'Normal')} {event.get('reason', '')} "
            f"{involved.get('kind', '').lower()}/{involved.get('name', '')}: "
            f"{(event.get('message') or '').strip()}{count}")


def _diagnose(status: RolloutStatus, pods: list[dict[str, Any]], events: list[dict[str, Any]],
              unready_since: dict[str, float]) -> str | None:
    """Fill ``status.problems``; return the reason to fail now, if there is one."""
    warnings: dict[str, dict[str, Any]] = {}
    for event in events:  # the newest Warning per pod and reason
        if event.get("type") == "Warning":
            warnings[f"{event['involvedObject'].get('uid')}/{event.get('reason')}"] = event
    now = time.monotonic()
    fatal = None
    for pod in pods:
        meta, pod_status = pod["metadata"], pod.get("status") or {}
        where = f"pod {meta['name']}"
        for condition in pod_status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                status.problems.append(f"{where} unschedulable: {condition.get('message', '')}")
                _failing(status, meta["name"], None, "Unschedulable", keep=True)
        statuses = (pod_status.get("initContainerStatuses") or []) + \
            (pod_status.get("containerStatuses") or [])
        for container in statuses:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in FATAL_WAITING:
                problem = f"{where}: container {container['name']} {reason}" \
                          f"{_crash_detail(container)}: {waiting.get('message', '').strip()}"
                status.problems.append(problem)
                fatal = fatal or problem
                _failing(status, meta["name"], container["name"], reason)
            unhealthy = warnings.get(f"{meta['uid']}/Unhealthy")
            if container.get("started") and not container.get("ready") and unhealthy:
                first = unready_since.setdefault(meta["uid"], now)
                problem = f"{where}: container {container['name']} is running but not ready: " \
                          f"{unhealthy.get('message', '').strip()}"
                status.problems.append(problem)
                _failing(status, meta["name"], container["name"], "NotReady")
                if now - first >= _readiness_budget(pod, container["name"]):
                    fatal = fatal or f"{problem} (for {now - first:.0f} s)"
    return fatal


def _failing(status: RolloutStatus, pod: str, container: str | None, reason: str, *,
             keep: bool = False) -> None:
    """The first failing pod wins, except that an unschedulable one (``keep``) gives way to
    a pod whose container fails: that one says more."""
    if status.failed_pod is None or (status.failed_reason == "Unschedulable" and not keep):
        status.failed_pod, status.failed_container, status.failed_reason = \
            pod, container, reason


# Waiting reasons whose cause is in the container's own output; the others (a pull, an
# unschedulable pod, a missing ConfigMap) are in the pod's events, and no log exists.
LOGS_HELP = frozenset({"CrashLoopBackOff", "RunContainerError", "NotReady"})


def last_log_lines(cluster: Cluster, namespace: str, pod: str, container: str | None, *,
                   previous: bool, lines: int = 20) -> tuple[list[str], str | None]:
    """The last ``lines`` of a container's log (the crashed run's with ``previous``), read
    before a rollback deletes the pod; ([], why) when they cannot be read."""
    from kubernetes.client import CoreV1Api
    from kubernetes.client.exceptions import ApiException

    try:
        text = CoreV1Api(cluster.api_client).read_namespaced_pod_log(
            pod, namespace, container=container, previous=previous, tail_lines=lines,
            _request_timeout=10)
    except ApiException as err:
        return [], f"HTTP {err.status}: {(err.reason or '').strip() or 'no reason given'}"
    except Exception as err:  # logs are a courtesy: they never fail the report
        return [], str(err).splitlines()[0] if str(err) else type(err).__name__
    return str(text or "").splitlines()[-lines:], None


def _crash_detail(container: dict[str, Any]) -> str:
    terminated = (container.get("lastState") or {}).get("terminated") or {}
    if not terminated:
        return ""
    restarts = container.get("restartCount", 0)
    logged = last_log_line(str(terminated.get("message") or ""))
    said = f"; it logged: {logged}" if logged else ""
    return (f" (last exit code {terminated.get('exitCode')}, "
            f"{terminated.get('reason') or 'Error'}; {restarts} restarts{said})")


def last_log_line(message: str, most: int = LOG_LINE_CHARS) -> str:
    """The line that says why a container exited, from its termination message: the kubelet
    fills it with the log's tail (terminationMessagePolicy FallbackToLogsOnError), where the
    runtime's last error line names the cause and the lines after it are the shutdown's. A JSON
    log line gives its ``message``; a log with no error line gives nothing."""
    errors = [line.strip() for line in message.splitlines() if _is_error(line.strip())]
    if not errors:  # e.g. OOMKilled mid-start: the last line says nothing about why
        return ""
    text = errors[-1]
    with contextlib.suppress(ValueError, AttributeError):
        record = json.loads(text)
        if isinstance(record, dict) and record.get("message"):
            text = str(record["message"])
    return text if len(text) <= most else text[: most - 3] + "..."


def _is_error(line: str) -> bool:
    with contextlib.suppress(ValueError):
        record = json.loads(line)
        if isinstance(record, dict):
            return str(record.get("level", "")).lower() in ("error", "critical", "fatal")
    return any(word in line.split()[:5] for word in ("ERROR", "CRITICAL", "FATAL"))


def _readiness_budget(pod: dict[str, Any], container_name: str) -> float:
    """How long a readiness probe may fail before the pod counts as broken."""
    for container in pod["spec"].get("containers") or []:
        if container["name"] == container_name and container.get("readinessProbe"):
            probe = container["readinessProbe"]
            return float(probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3))
    return 30.0
