"""Who owns which field: the part of an object a field manager set (from its managedFields),
and taking back what a finished rollout changed, so the next deploy is not a conflict.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

from mlship.kube import describe

if TYPE_CHECKING:
    from mlship.kube import Cluster


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
        live = cluster.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
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
