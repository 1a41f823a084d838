"""Deploying over a finished rollout: refuse while one holds the app, and take back the fields
its field manager (``mlship-rollout``) still owns, so the next deploy is no conflict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlship.kube import describe
from mlship.rollout import state as rollout_state

if TYPE_CHECKING:
    from mlship.kube import Cluster


def take_back_from_rollouts(cluster: Cluster, objects: list[dict[str, Any]], *,
                            dry_run: bool, refuse_active: bool = True) -> list[str]:
    """Before deploying: refuse while a rollout holds the app; after one ended, drop the
    ownership its field manager (``mlship-rollout``) kept of image, selector and weights.

    A promoted canary leaves the stable image owned by ``mlship-rollout``; without this the
    next deploy would fail on a field conflict that only --force-conflicts (which would also
    take fields from everybody else) could get past. Returns the objects released (with
    ``dry_run``: would release; mlship.cluster.apply.preview then simulates it, so a server
    dry run and ``mlship diff`` meet no conflict the real deploy does not).
    ``refuse_active`` False (diff): only say what would be released, whatever holds the app.
    """
    for obj in objects if refuse_active else []:
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


def released_managers(released: list[str]) -> dict[str, str]:
    """What mlship.cluster.apply.preview needs to know of ``take_back_from_rollouts``."""
    return dict.fromkeys(released, rollout_state.ROLLOUT_MANAGER)
