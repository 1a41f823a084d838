"""Rendered manifests -> a cluster: order them, dry-run all of them, apply, and roll back.

``plan`` turns a rendered ``Bundle`` into the objects to send, in dependency order.
``preview`` server-side dry-runs every one of them before anything changes, so an invalid
object, an RBAC refusal or a field conflict stops the deploy while nothing is applied yet;
``apply`` then sends them for real and reports per object created / configured / unchanged
(by comparing the object before and after, minus fields the server and controllers own). If
object 5 of 9 still fails, ``PartialApplyError`` names the 4 applied and the one that failed.
``rollback`` restores an earlier Deployment revision the way ``kubectl rollout undo`` does, but
as a server-side apply by field manager ``mlship``. The rollout wait is in ``mlship.rollout_wait``.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlship.errors import ClusterError, MlshipError, RolloutError
from mlship.kube import FIELD_MANAGER, ForbiddenError, describe

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
REVISION = "deployment.kubernetes.io/revision"
# Set by the server or by controllers, never by mlship: not a change, not part of a diff.
_VOLATILE_METADATA = ("managedFields", "resourceVersion", "generation", "uid",
                      "creationTimestamp", "selfLink")
_VOLATILE_ANNOTATIONS = (REVISION,)


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
    """The config with --namespace / --image applied, validated like the file itself."""
    from mlship.config.load import validate_config
    from mlship.config.quantities import parse_image_ref
    from mlship.errors import BadInputError

    if namespace is None and image is None:
        return config
    raw = config.model_dump()
    if namespace is not None:
        raw["namespace"]["name"] = namespace
    if image is not None:
        try:
            ref = parse_image_ref(image)
        except ValueError:
            raise BadInputError(f"--image: {image!r} is not an image reference",
                                hint="e.g. 127.0.0.1:5000/iris@sha256:... as printed by "
                                     "`mlship push --json`") from None
        raw["image"].update(registry=ref.registry, repository=ref.path, digest=ref.digest,
                            tag_policy="fixed", tag=ref.tag or "latest")
    return validate_config(raw, label="--namespace/--image")


def plan(bundle: Bundle) -> list[dict[str, Any]]:
    """The Kubernetes objects of a rendered bundle, in the order they are applied."""
    import yaml

    objects = [document for path, text in bundle.files.items()
               if path.startswith("k8s/") and path.endswith(".yaml")
               and path != "k8s/kustomization.yaml"
               for document in yaml.safe_load_all(text) if document]
    return sorted(objects, key=_rank)  # stable: same-kind objects keep their file order


def _rank(obj: dict[str, Any]) -> int:
    kind = obj.get("kind", "")
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def preview(cluster: Cluster, objects: list[dict[str, Any]], *,
            force: bool = False) -> list[Preview]:
    """Server-side dry run of every object; the first refusal raises, with nothing applied."""
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
            result = cluster.apply(obj, force=force, dry_run=True)
        previews.append(Preview(obj, live, result))
    return previews


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


def unified_diff(live: dict[str, Any] | None, desired: dict[str, Any]) -> str:
    """A unified diff of the live object and what the server would make of ours; '' if none."""
    import difflib

    import yaml

    name = describe(desired).replace(" ", "/")
    before = yaml.safe_dump(normalize(live), sort_keys=True) if live is not None else ""
    after = yaml.safe_dump(normalize(desired), sort_keys=True)
    return "".join(difflib.unified_diff(before.splitlines(keepends=True),
                                        after.splitlines(keepends=True),
                                        fromfile=f"live/{name}" if live else "/dev/null",
                                        tofile=f"mlship/{name}"))


# ---- rollback -------------------------------------------------------------------------------


def rollback(cluster: Cluster, namespace: str, name: str, *,
             to_revision: int | None = None) -> int:
    """Restore an earlier revision of Deployment ``namespace/name``; returns that revision.

    ``kubectl rollout undo`` semantics: the pod template of the ReplicaSet carrying revision
    ``to_revision`` (default: the newest revision before the current one) becomes the
    Deployment's template again. It is sent as a server-side apply by field manager ``mlship``
    holding every field mlship already owned (so replicas, strategy etc. stay as they are) and
    taking the template over from any other manager (``kubectl set image``). The deployment
    controller then scales that ReplicaSet back up and numbers it as the newest revision.
    Only the pod template is restored: ConfigMaps and other objects stay as applied.
    Raises RolloutError (exit 8) when there is no such revision.
    """
    obj, revision = rollback_object(cluster, namespace, name, to_revision=to_revision)
    if obj is not None:
        cluster.apply(obj, force=True)
    return revision


def rollback_object(cluster: Cluster, namespace: str, name: str, *,
                    to_revision: int | None = None) -> tuple[dict[str, Any] | None, int]:
    """What ``rollback`` applies (None when the template already is that revision's)."""
    deployment = cluster.get("apps/v1", "Deployment", name, namespace)
    if deployment is None:
        raise RolloutError(f"Deployment {namespace}/{name} does not exist: nothing to roll back")
    current = int((deployment["metadata"].get("annotations") or {}).get(REVISION, 0))
    by_revision = {revision: rs for rs in owned_replica_sets(cluster, deployment)
                   if (revision := int((rs["metadata"].get("annotations") or {})
                                       .get(REVISION, 0)))}
    earlier = [revision for revision in by_revision if revision < current]
    target = to_revision if to_revision is not None else max(earlier, default=None)
    if target is None or target not in by_revision:
        known = ", ".join(str(r) for r in sorted(by_revision)) or "none"
        raise RolloutError(
            f"Deployment {namespace}/{name}: no revision {target or f'before {current}'} to "
            f"roll back to (revisions kept: {known})",
            hint="the first deploy has nothing to go back to; older ones are pruned past "
                 "revisionHistoryLimit")
    template = _template(by_revision[target]["spec"]["template"])
    if template == _template(deployment["spec"]["template"]):
        return None, target
    owned = extract(deployment, FIELD_MANAGER)
    meta = {"name": name, "namespace": namespace,
            **{key: owned["metadata"][key] for key in ("labels", "annotations")
               if key in owned.get("metadata", {})}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {**owned.get("spec", {}), "template": template}}, target


def _template(template: dict[str, Any]) -> dict[str, Any]:
    """A pod template without the ReplicaSet's hash label and the server's null timestamp."""
    clean = copy.deepcopy(template)
    meta = {key: value for key, value in (clean.get("metadata") or {}).items()
            if value is not None}
    meta.get("labels", {}).pop("pod-template-hash", None)
    clean["metadata"] = meta
    return clean


def owned_replica_sets(cluster: Cluster, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """The ReplicaSets the Deployment controls (by owner uid, not just by labels)."""
    meta = deployment["metadata"]
    selector = ",".join(f"{key}={value}" for key, value in
                        deployment["spec"]["selector"].get("matchLabels", {}).items())
    return [rs for rs in cluster.list("apps/v1", "ReplicaSet", meta["namespace"], selector)
            if any(ref.get("uid") == meta["uid"] and ref.get("controller")
                   for ref in rs["metadata"].get("ownerReferences") or [])]


def extract(obj: dict[str, Any], manager: str) -> dict[str, Any]:
    """The fields of ``obj`` that ``manager`` owns through Apply (client-go's Extract...)."""
    for entry in obj["metadata"].get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply" \
                and not entry.get("subresource"):
            owned = _owned(obj, entry.get("fieldsV1") or {})
            return owned if isinstance(owned, dict) else {}
    return {}


def _owned(value: Any, fields: dict[str, Any]) -> Any:
    """``value`` filtered to a managedFields (fieldsV1) trie: f:field, k:{key}, v:value."""
    children = {key: sub for key, sub in fields.items() if key != "."}
    if not children:
        return copy.deepcopy(value)  # a leaf, or a map/list owned as a whole
    if isinstance(value, dict):
        return {key[2:]: _owned(value[key[2:]], sub) for key, sub in children.items()
                if key.startswith("f:") and key[2:] in value}
    if isinstance(value, list):
        kept = []
        for item in value:
            for key, sub in children.items():
                if key.startswith("k:") and isinstance(item, dict) and all(
                        item.get(k) == v for k, v in json.loads(key[2:]).items()):
                    kept.append(_owned(item, sub))
                elif key.startswith("v:") and json.loads(key[2:]) == item:
                    kept.append(copy.deepcopy(item))
        return kept
    return copy.deepcopy(value)


def take_back_from_rollouts(cluster: Cluster, objects: list[dict[str, Any]], *,
                            dry_run: bool) -> list[str]:
    """Before deploying: refuse while a rollout holds the app; after one ended, drop the
    ownership its field manager (``mlship-rollout``) kept of image, selector and weights.

    A promoted canary leaves the stable image owned by ``mlship-rollout``; without this the
    next deploy would fail on a field conflict that only --force-conflicts (which would also
    take fields from everybody else) could get past. Returns the objects released.
    """
    from mlship.cluster import state as rollout_state

    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        meta = obj["metadata"]
        live = cluster.get("apps/v1", "Deployment", meta["name"], meta.get("namespace"))
        text = ((live or {}).get("metadata", {}).get("annotations") or {}).get(
            rollout_state.ANNOTATION)
        if text:
            state = rollout_state.RolloutState.from_annotation(text, describe(obj))
            rollout_state.refuse_if_active(state, meta.get("namespace", ""), meta["name"])
    released = []
    for obj in objects:
        meta = obj["metadata"]
        live = _get(cluster, obj)
        entries = (live or {}).get("metadata", {}).get("managedFields") or []
        kept = [entry for entry in entries if entry.get("manager") != rollout_state.ROLLOUT_MANAGER]
        if len(kept) == len(entries) or not kept:
            continue
        released.append(describe(obj))
        if not dry_run:
            # A merge patch replaces the list: the rollout's entry is gone, nothing else moves.
            cluster.patch(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"),
                          {"metadata": {"managedFields": kept}})
    return released


def prune_config_maps(cluster: Cluster, namespace: str, name: str) -> list[str]:
    """Delete this app's content-addressed (immutable) ConfigMaps that no workload uses any more.

    Every settings change makes a new ConfigMap (its name is its hash) so that a rollback gets
    its own settings back; old ones stay as long as a kept ReplicaSet revision (or a canary, or
    the CronJob) refers to them, and are removed after that. Returns the names deleted.
    """
    selector = f"app.kubernetes.io/name={name},app.kubernetes.io/managed-by={FIELD_MANAGER}"
    candidates = [item for item in cluster.list("v1", "ConfigMap", namespace, selector)
                  if item.get("immutable")]
    if not candidates:
        return []
    used: set[str] = set()
    for api_version, kind in (("apps/v1", "Deployment"), ("apps/v1", "ReplicaSet"),
                              ("batch/v1", "CronJob")):
        for workload in cluster.list(api_version, kind, namespace):
            used |= config_maps_used(workload)
    removed = []
    for item in candidates:
        config_map = item["metadata"]["name"]
        if config_map not in used and cluster.delete("v1", "ConfigMap", config_map, namespace):
            removed.append(config_map)
    return removed


def config_maps_used(workload: dict[str, Any]) -> set[str]:
    """Names of the ConfigMaps a Deployment's, ReplicaSet's or CronJob's pods refer to."""
    spec = workload.get("spec") or {}
    if workload.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    names: set[str] = set()
    for container in [*(pod.get("containers") or []), *(pod.get("initContainers") or [])]:
        for source in container.get("envFrom") or []:
            names.add((source.get("configMapRef") or {}).get("name", ""))
        for variable in container.get("env") or []:
            names.add(((variable.get("valueFrom") or {}).get("configMapKeyRef") or {})
                      .get("name", ""))
    for volume in pod.get("volumes") or []:
        names.add((volume.get("configMap") or {}).get("name", ""))
        for source in (volume.get("projected") or {}).get("sources") or []:
            names.add((source.get("configMap") or {}).get("name", ""))
    names.discard("")
    return names

