"""What the pre-deploy checks share: their result type, their error, and how they read the
objects about to be applied (pod specs, containers, quantities) and the cluster (lists RBAC
may refuse).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from mlship.config.quantities import parse_quantity
from mlship.errors import ClusterError
from mlship.kube import ForbiddenError

if TYPE_CHECKING:
    from mlship.kube import Cluster


WORKLOADS = ("Deployment", "CronJob")


COMPUTE = ("cpu", "memory", "ephemeral-storage")


class PreflightError(ClusterError):
    """The cluster cannot run what would be applied (quota, LimitRange, no fitting GPU node)."""


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # passed | skipped
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objects:
        if obj.get("kind") == "Deployment":
            yield obj, obj["spec"]["template"]["spec"]
        elif obj.get("kind") == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any],
                                                                dict[str, Any], Any]]:
    for owner, pod_spec in pod_specs(objects):
        for container in (pod_spec.get("initContainers") or []) + \
                (pod_spec.get("containers") or []):
            yield owner, pod_spec, container


def namespace_of(objects: list[dict[str, Any]]) -> str | None:
    return next((obj["metadata"]["namespace"] for obj in objects
                 if obj["metadata"].get("namespace")), None)


def readable(cluster: Cluster, api_version: str, kind: str,
              namespace: str | None) -> list[dict[str, Any]] | None:
    """The list, or None when RBAC does not allow reading it."""
    try:
        return cluster.list(api_version, kind, namespace)
    except ForbiddenError:
        return None


def quantity(value: Any) -> Decimal:
    """A quantity as a number, whether the API's string or an already summed Decimal."""
    if isinstance(value, Decimal):
        return value
    try:
        return parse_quantity(str(value))
    except ValueError:  # the grammar is the API server's: this is a bug to report, not a crash
        raise PreflightError(f"{value!r} is not a Kubernetes quantity mlship can read",
                             hint="pass --skip-checks, and report the value") from None


def shown(value: Any) -> str:
    """A quantity for people: 0.5 -> '0.5', 536870912 -> '512Mi'."""
    number = quantity(value)
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20)):
        if number >= size and number % size == 0:
            return f"{number // size}{suffix}"
    return f"{number.normalize():f}"


def in_one_unit(key: str, *values: Any) -> list[str]:
    """Quantities of quota key ``key`` for one message, all in the same unit: CPU in cores
    when every value is whole, else in millicores (900m, 1000m); bytes in the largest of
    Gi/Mi/Ki that divides every value (512Mi, 1024Mi), else in bytes; counts as numbers."""
    numbers = [quantity(value) for value in values]
    if key.rsplit(".", maxsplit=1)[-1] == "cpu":
        if all(number == number.to_integral_value() for number in numbers):
            return [f"{number:f}".split(".")[0] for number in numbers]
        return [f"{(number * 1000).normalize():f}m" for number in numbers]
    if key.rsplit(".", maxsplit=1)[-1] in ("memory", "ephemeral-storage", "storage"):
        for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if all(number % size == 0 for number in numbers):
                return [f"{number // size}{suffix}" for number in numbers]
    return [f"{number.normalize():f}" for number in numbers]
