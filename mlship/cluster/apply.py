"""Rendered manifests -> a cluster: order them, dry-run all of them, apply them.

``plan`` turns a rendered ``Bundle`` into the objects to send, in dependency order.
``preview`` server-side dry-runs every one of them before anything changes, so an invalid
object, an RBAC refusal or a field conflict stops the deploy while nothing is applied yet;
``apply`` then sends them for real and reports per object created / configured / unchanged
(by comparing the object before and after, minus fields the server and controllers own). If
object 5 of 9 still fails, ``PartialApplyError`` names the 4 applied and the one that failed.
Rollbacks are in ``mlship.cluster.revisions``, the rollout wait in ``mlship.cluster.wait``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlship.cluster.deployed import DEPLOYED
from mlship.cluster.history import CHANGE
from mlship.cluster.revisions import REVISION
from mlship.errors import ClusterError, MlshipError
from mlship.kube import ApplyConflictError, ForbiddenError, describe

if TYPE_CHECKING:
    from mlship.config.schema import MlshipConfig
    from mlship.kube import Cluster
    from mlship.render.bundle import Bundle

# Dependency order. The NetworkPolicy goes before the workloads (not after them, as kubectl's
# alphabetical -k order would have it) so no pod ever runs without its default-deny policy;
# monitoring CRDs come last because a missing CRD should not hold back the server itself.
KIND_ORDER = ("Namespace", "ServiceAccount", "Secret", "ConfigMap", "PersistentVolumeClaim",
              "Service", "NetworkPolicy", "Deployment", "CronJob", "InferenceService",
              "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor",
              "PrometheusRule")
# Set by the server or by controllers, never by mlship: not a change, not part of a diff.
_VOLATILE_METADATA = ("managedFields", "resourceVersion", "generation", "uid",
                      "creationTimestamp", "selfLink")
# The server's revision, and mlship's bookkeeping (patched after the fact, never rendered):
# what is deployed, a rollout's state (mlship.rollout.state.ANNOTATION), a revision's change.
_VOLATILE_ANNOTATIONS = (REVISION, DEPLOYED, "mlship.dev/rollout", CHANGE)


class PartialApplyError(ClusterError):
    """Some objects were applied before one failed: says exactly which."""


@dataclass(frozen=True)
class Preview:
    """One object as the server would store it (server-side dry run), next to the live one."""

    desired: dict[str, Any]
    live: dict[str, Any] | None
    result: dict[str, Any]
    checked: bool = True  # False when its namespace does not exist yet, so no dry run was possible

    @property
    def action(self) -> str:
        if self.live is None:
            return "created"
        return "unchanged" if normalize(self.live) == normalize(self.result) else "configured"


@dataclass(frozen=True)
class ObjectResult:
    kind: str
    name: str
    namespace: str | None
    action: str  # created | configured | unchanged

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "namespace": self.namespace,
                "action": self.action}

    def describe(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name} {self.action}"


@dataclass(frozen=True)
class ApplyResult:
    objects: list[ObjectResult]
    dry_run: bool

    @property
    def changed(self) -> bool:
        return any(item.action != "unchanged" for item in self.objects)


def with_overrides(config: MlshipConfig, *, namespace: str | None = None,
                   image: str | None = None) -> MlshipConfig:
    """The config with --namespace / --image applied, each validated like the file's key."""
    from mlship.config.load import override_section
    from mlship.config.quantities import parse_image_ref
    from mlship.errors import BadInputError

    if namespace is not None:
        config = override_section(config, "namespace", {"name": namespace},
                                  label="--namespace")
    if image is not None:
        try:
            ref = parse_image_ref(image)
        except ValueError:
            raise BadInputError(f"--image: {image!r} is not an image reference",
                                hint="e.g. 127.0.0.1:5000/iris@sha256:... as printed by "
                                     "`mlship push --json`") from None
        config = override_section(config, "image", {
            "registry": ref.registry, "repository": ref.path, "digest": ref.digest,
            "tag_policy": "fixed", "tag": ref.tag or "latest"}, label="--image")
    return config


def plan(bundle: Bundle) -> list[dict[str, Any]]:
    """The Kubernetes objects of a rendered bundle, in the order they are applied (copies:
    the apply path adds fields to what it sends)."""
    objects = [copy.deepcopy(obj) for obj in bundle.objects]
    return sorted(objects, key=_rank)  # stable: same-kind objects keep their file order


def _rank(obj: dict[str, Any]) -> int:
    kind = obj.get("kind", "")
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def preview(cluster: Cluster, objects: list[dict[str, Any]], *, force: bool = False,
            released: Mapping[str, str] | None = None) -> list[Preview]:
    """Server-side dry run of every object; the first refusal raises, with nothing applied.

    ``released`` maps objects (``describe(obj)``) to the field manager whose fields the real
    deploy takes back before applying (a finished rollout's, mlship.rollout.handback): a dry
    run cannot drop that ownership first, so a conflict with that manager alone is what the
    real apply would not meet, and the dry run takes those fields over instead (the same
    object results: the values stay, mlship owns what it sets)."""
    missing = _namespaces_to_create(cluster, objects)
    previews = []
    for obj in objects:
        namespace = obj["metadata"].get("namespace")
        live = None if namespace in missing else _get(cluster, obj)
        if namespace in missing:
            # The dry run of a namespaced object 404s until its Namespace exists for real.
            previews.append(Preview(obj, None, obj, checked=False))
            continue
        with _hint_for(obj):
            result = _dry_run(cluster, obj, force, (released or {}).get(describe(obj)))
        previews.append(Preview(obj, live, result))
    return previews


def _dry_run(cluster: Cluster, obj: dict[str, Any], force: bool,
             released: str | None) -> dict[str, Any]:
    try:
        return cluster.apply(obj, force=force, dry_run=True)
    except ApplyConflictError as err:
        if released is None or not err.managers or err.managers - {released}:
            raise
        return cluster.apply(obj, force=True, dry_run=True)


def apply(cluster: Cluster, previews: list[Preview], *, force: bool = False) -> ApplyResult:
    """Apply previewed objects in order; PartialApplyError names what was applied on a failure."""
    done: list[ObjectResult] = []
    pending = list(previews)
    while pending:
        item = pending.pop(0)
        obj = item.desired
        try:
            if not item.checked:
                # Its Namespace was created just now: dry-run this and the rest before going on.
                rest = preview(cluster, [p.desired for p in [item, *pending]], force=force)
                item, pending = rest[0], rest[1:]
            with _hint_for(obj):
                after = cluster.apply(obj, force=force)
        except MlshipError as err:
            raise _partial(err, done, obj, pending) from None
        live = item.live
        action = "created" if live is None else (
            "unchanged" if normalize(live) == normalize(after) else "configured")
        done.append(_result(obj, action))
    return ApplyResult(done, dry_run=False)


def dry_run_result(previews: list[Preview]) -> ApplyResult:
    return ApplyResult([_result(item.desired, item.action) for item in previews], dry_run=True)


def _result(obj: dict[str, Any], action: str) -> ObjectResult:
    meta = obj["metadata"]
    return ObjectResult(obj["kind"], meta["name"], meta.get("namespace"), action)


def _partial(err: MlshipError, done: list[ObjectResult], failed: dict[str, Any],
             pending: list[Preview]) -> MlshipError:
    if not done:
        return err  # nothing was applied: the error as it is
    applied = ", ".join(item.describe() for item in done)
    skipped = f"; not applied: {', '.join(describe(p.desired) for p in pending)}" \
        if pending else ""
    wrapped = PartialApplyError(
        f"applied {len(done)} of {len(done) + 1 + len(pending)} objects ({applied}), then "
        f"{describe(failed)} failed: {err.message}{skipped}",
        hint=(f"{err.hint}; " if err.hint else "") + "applying is idempotent: fix it and run "
             "mlship deploy again",
        details={"applied": [item.describe() for item in done], "failed": describe(failed),
                 "not_applied": [describe(p.desired) for p in pending]})
    wrapped.exit_code = err.exit_code
    return wrapped


def _namespaces_to_create(cluster: Cluster, objects: list[dict[str, Any]]) -> set[str]:
    """Namespaces this plan creates that do not exist yet."""
    planned = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "Namespace"}
    return {name for name in planned if _get(cluster, {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": name}}) is None}


def _get(cluster: Cluster, obj: dict[str, Any]) -> dict[str, Any] | None:
    meta = obj["metadata"]
    with _hint_for(obj):
        return cluster.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))


@contextlib.contextmanager
def _hint_for(obj: dict[str, Any]) -> Iterator[None]:
    """Say what to do when RBAC refuses the Namespace: the common namespace-admin case."""
    try:
        yield
    except ForbiddenError as err:
        if obj.get("kind") == "Namespace":
            err.hint = ("the namespace is managed by someone else: set namespace.create: false "
                        "in mlship.yaml, or ask for rights on namespaces")
        raise


def normalize(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without what the server and controllers own: status, managedFields, uid ..."""
    clean = copy.deepcopy(obj)
    clean.pop("status", None)
    meta = clean.get("metadata", {})
    for key in _VOLATILE_METADATA:
        meta.pop(key, None)
    annotations = meta.get("annotations") or {}
    for key in _VOLATILE_ANNOTATIONS:
        annotations.pop(key, None)
    if "annotations" in meta and not annotations:
        meta.pop("annotations")
    return clean


def unified_diff(live: dict[str, Any] | None, desired: dict[str, Any] | None) -> str:
    """A unified diff of the live object and what the server would make of ours ('' if none);
    ``desired`` None: the object is to be deleted (pruned)."""
    import difflib

    import yaml

    name = describe(desired if desired is not None else live or {}).replace(" ", "/")
    before = yaml.safe_dump(normalize(live), sort_keys=True) if live is not None else ""
    after = yaml.safe_dump(normalize(desired), sort_keys=True) if desired is not None else ""
    return "".join(difflib.unified_diff(before.splitlines(keepends=True),
                                        after.splitlines(keepends=True),
                                        fromfile=f"live/{name}" if live else "/dev/null",
                                        tofile=f"mlship/{name}" if desired else "/dev/null"))


# ---- rollback -------------------------------------------------------------------------------


