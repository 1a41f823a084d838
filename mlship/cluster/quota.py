"""Pre-deploy checks against the namespace's ResourceQuotas and LimitRanges.

Quota is counted at the rollout's **peak**, not at its end: with ``maxUnavailable: 0`` the
deployment controller runs up to ``replicas + maxSurge`` pods, new template beside old, so a
quota that fits the finished rollout can still stop it half way (the ReplicaSet's pod creation
is refused and the rollout stalls with a FailedCreate event). Objects this deploy creates count
against ``count/<resource>`` quotas. LimitRanges are checked per container and per pod.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from mlship.cluster.objects import (
    COMPUTE,
    Check,
    PreflightError,
    containers,
    in_one_unit,
    namespace_of,
    pod_specs,
    quantity,
    readable,
    shown,
)
from mlship.kube import describe, match_labels

if TYPE_CHECKING:
    from mlship.cluster.apply import Preview
    from mlship.kube import Cluster


def check_quota(cluster: Cluster, previews: list[Preview]) -> Check:
    namespace = namespace_of([p.desired for p in previews])
    if namespace is None:
        return Check("quota", "skipped", "no namespaced objects")
    quotas = readable(cluster, "v1", "ResourceQuota", namespace)
    if quotas is None:
        return Check("quota", "skipped", f"cannot list ResourceQuotas in {namespace} (forbidden)")
    if not quotas:
        return Check("quota", "passed", f"no ResourceQuota in {namespace}")
    demand = _demand(cluster, namespace, previews)
    notes, problems = [], []
    for quota in quotas:
        spec, state = quota["spec"], quota.get("status") or {}
        if spec.get("scopeSelector") or set(spec.get("scopes") or []) - {"NotTerminating",
                                                                          "NotBestEffort"}:
            notes.append(f"{quota['metadata']['name']} not evaluated (scoped)")
            continue
        hard, used = state.get("hard") or spec.get("hard") or {}, state.get("used") or {}
        for key, limit in hard.items():
            if key not in demand:
                continue
            mine_now, peak, how = demand[key]
            others = quantity(used.get(key, "0")) - mine_now
            if others + peak > quantity(limit):
                remaining = max(quantity(limit) - others, Decimal(0))
                needs, left, hard_limit, taken = in_one_unit(key, peak, remaining, limit,
                                                             others)
                problems.append(
                    f"ResourceQuota {namespace}/{quota['metadata']['name']}: {key}: the "
                    f"rollout needs {needs} ({how}), {left} of {hard_limit} remaining "
                    f"({taken} used by others)")
    if problems:
        raise PreflightError("; ".join(problems), hint="lower resources/replicas in "
                             "mlship.yaml, or ask for a larger quota")
    names = ", ".join(q["metadata"]["name"] for q in quotas)
    return Check("quota", "passed", f"fits ResourceQuota {names}"
                 + (f" ({'; '.join(notes)})" if notes else ""))


def _demand(cluster: Cluster, namespace: str,
            previews: list[Preview]) -> dict[str, tuple[Decimal, Decimal, str]]:
    """quota key -> (what this app's live pods use now, its peak during the rollout, words)."""
    demand: dict[str, tuple[Decimal, Decimal, str]] = {}
    for item in previews:
        obj = item.desired
        if item.live is None:  # object counts: only objects this deploy creates
            for key in _count_keys(obj):
                demand[key] = (Decimal(0), Decimal(1) + demand.get(key, (0, 0, ""))[1],
                               f"new {obj['kind']}")
        if obj["kind"] != "Deployment" or (
                item.live is not None and item.live["spec"]["template"]
                == item.result["spec"]["template"]):
            continue  # an unchanged pod template starts no new pods
        spec = obj["spec"]
        replicas = int(spec.get("replicas", (item.live or {}).get("spec", {}).get("replicas", 1)))
        surge = _surge(spec, replicas)
        current = [pod for pod in cluster.list("v1", "Pod", namespace,
                                               match_labels(spec["selector"]))
                   if pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
        per_pod = _pod_totals(spec["template"]["spec"])
        for key, value in per_pod.items():
            now = sum((_pod_totals(pod["spec"]).get(key, Decimal(0)) for pod in current),
                      Decimal(0))
            old_pods = len(current)
            # maxUnavailable 0: at most replicas + surge pods; the peak is at either end of
            # the rolling update (surge new pods beside all old ones, or all new beside surge).
            old_each = now / old_pods if old_pods else Decimal(0)
            peak = max(min(surge, replicas) * value + now,
                       replicas * value + min(surge, old_pods) * old_each) if replicas else 0
            new_pods = replicas + (min(surge, old_pods) if old_pods else 0)
            demand[key] = (now, Decimal(peak),
                           f"up to {new_pods} pods of {obj['metadata']['name']} x "
                           f"{in_one_unit(key, value, peak)[0]} during the rolling update")
    return demand


def _pod_totals(pod_spec: dict[str, Any]) -> dict[str, Decimal]:
    """Quota keys -> what one pod counts against them."""
    totals: dict[str, Decimal] = {"pods": Decimal(1), "count/pods": Decimal(1)}
    for container in pod_spec.get("containers") or []:
        resources = container.get("resources") or {}
        limits = resources.get("limits") or {}
        # An extended resource's request defaults to its limit.
        requests = {**{k: v for k, v in limits.items() if "/" in k},
                    **(resources.get("requests") or {})}
        for kind, values in (("requests", requests), ("limits", limits)):
            for name, value in values.items():
                keys = [f"{kind}.{name}"] + ([name] if kind == "requests" and name in COMPUTE
                                             else [])
                for key in keys:
                    totals[key] = totals.get(key, Decimal(0)) + quantity(value)
    return totals


def _count_keys(obj: dict[str, Any]) -> list[str]:
    kind, api_version = obj["kind"], obj["apiVersion"]
    plural = kind.lower()[:-1] + "ies" if kind.endswith("y") else kind.lower() + "s"
    group = api_version.split("/")[0] if "/" in api_version else ""
    keys = [f"count/{plural}.{group}" if group else f"count/{plural}"]
    if not group and plural in ("services", "configmaps", "persistentvolumeclaims", "secrets"):
        keys.append(plural)
    service_type = (obj.get("spec") or {}).get("type") if kind == "Service" else None
    if service_type == "LoadBalancer":
        keys += ["services.loadbalancers", "services.nodeports"]
    elif service_type == "NodePort":
        keys.append("services.nodeports")
    return keys


def _surge(spec: dict[str, Any], replicas: int) -> int:
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    surge = rolling.get("maxSurge", "25%")
    if isinstance(surge, str) and surge.endswith("%"):
        return math.ceil(replicas * int(surge[:-1]) / 100)
    return int(surge)


def check_limit_ranges(cluster: Cluster, objects: list[dict[str, Any]]) -> Check:
    namespace = namespace_of(objects)
    if namespace is None:
        return Check("limits", "skipped", "no namespaced objects")
    ranges = readable(cluster, "v1", "LimitRange", namespace)
    if ranges is None:
        return Check("limits", "skipped", f"cannot list LimitRanges in {namespace} (forbidden)")
    problems: list[PreflightError] = []
    for limit_range in ranges:
        where = f"LimitRange {namespace}/{limit_range['metadata']['name']}"
        for item in limit_range["spec"].get("limits") or []:
            if item.get("type") not in ("Container", "Pod"):
                continue
            for owner, container in _subjects(objects, item["type"]):
                try:
                    _check_bounds(f"{where}: {describe(owner)} container {container['name']}",
                                  item, container.get("resources") or {})
                except PreflightError as err:  # every container's, not just the first's
                    problems.append(err)
    if problems:
        raise PreflightError("; ".join(err.message for err in problems),
                             hint=problems[0].hint)
    names = ", ".join(r["metadata"]["name"] for r in ranges)
    return Check("limits", "passed",
                 f"fits LimitRange {names}" if ranges else f"no LimitRange in {namespace}")


def _subjects(objects: list[dict[str, Any]],
              kind: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(owner, container) for Container items; one summed pseudo-container for Pod items."""
    if kind == "Container":
        for owner, _, container in containers(objects):
            yield owner, container
        return
    for owner, pod_spec in pod_specs(objects):
        totals: dict[str, dict[str, Decimal]] = {"requests": {}, "limits": {}}
        for container in pod_spec.get("containers") or []:
            for part in ("requests", "limits"):
                for name, value in ((container.get("resources") or {}).get(part) or {}).items():
                    totals[part][name] = totals[part].get(name, Decimal(0)) + quantity(value)
        yield owner, {"name": "(pod total)", "resources": totals}


def _check_bounds(where: str, item: dict[str, Any], resources: dict[str, Any]) -> None:
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    hint = "set resources.requests/limits in mlship.yaml within the LimitRange"
    for name, bound in (item.get("max") or {}).items():
        for part, values in (("limits", limits), ("requests", requests)):
            if name not in values:
                if part == "limits":
                    raise PreflightError(f"{where}: no limits.{name}, but the max is {bound}",
                                         hint=hint)
                continue
            if quantity(values[name]) > quantity(bound):
                raise PreflightError(f"{where}: {part}.{name} {shown(values[name])} is above "
                                     f"the max {bound}", hint=hint)
    for name, bound in (item.get("min") or {}).items():
        for part, values in (("requests", requests), ("limits", limits)):
            if name in values and quantity(values[name]) < quantity(bound):
                raise PreflightError(f"{where}: {part}.{name} {shown(values[name])} is below "
                                     f"the min {bound}", hint=hint)
    for name, ratio in (item.get("maxLimitRequestRatio") or {}).items():
        if name in limits and name in requests and quantity(requests[name]):
            actual = quantity(limits[name]) / quantity(requests[name])
            if actual > quantity(ratio):
                raise PreflightError(f"{where}: limits.{name} / requests.{name} is "
                                     f"{shown(actual)}, above the maxLimitRequestRatio {ratio}",
                                     hint=hint)
