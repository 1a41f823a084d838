"""`mlship delete`: remove everything mlship applied for the app, as its ApplySet lists it.

What goes: the ApplySet's members (``mlship.cluster.applyset``), what carries the app's labels
(a rollout's canaries and arms, the kept settings ConfigMaps, objects of a deploy older than
the ApplySet), then the ApplySet's parent. The Namespace stays unless ``--delete-namespace``
(deleting it deletes whatever else lives there). Needs only mlship.yaml for the app's name
and namespace: no render, so it works after the model file is gone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from mlship.cli import cluster as opts
from mlship.cli import output
from mlship.errors import MlshipTimeoutError


def delete(
    config: Path = opts.CONFIG,
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted; "
                                 "delete nothing."),
    delete_namespace: bool = typer.Option(False, "--delete-namespace", help="Delete the "
                                          "Namespace too, when mlship applied it (and with it "
                                          "everything else inside)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the objects are "
                              "gone (finalizers run)."),
    timeout: float = opts.TIMEOUT,
    kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT,
    namespace: str | None = opts.NAMESPACE,
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Delete every object mlship applied for this app (deploy and rollouts)."""
    from mlship.cluster.apply import with_overrides
    from mlship.cluster.applyset import ApplySet, everything
    from mlship.config.load import load_config
    from mlship.kube import describe

    started = time.monotonic()
    loaded = with_overrides(load_config(config), namespace=namespace)
    cluster = opts.connect(kubeconfig, context)
    applyset = ApplySet(loaded.name, loaded.namespace.name)
    selector = f"app.kubernetes.io/name={loaded.name},app.kubernetes.io/managed-by=mlship"
    results: list[dict[str, Any]] = []
    deleted: list[dict[str, Any]] = []
    for obj in everything(cluster, applyset, selector):
        meta = obj["metadata"]
        entry = {"kind": obj["kind"], "name": meta["name"], "namespace": meta.get("namespace")}
        if obj["kind"] == "Namespace" and not delete_namespace:
            action = "kept"
        elif dry_run:
            action = "would delete"
        elif cluster.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace")):
            action = "deleted"
            deleted.append(obj)
        else:
            action = "absent"  # gone meanwhile (a controller, or another delete)
        results.append({**entry, "action": action})
        _say(f"  {describe(obj)} {action}")
    if wait and deleted:
        _wait_gone(cluster, deleted, timeout)
    counts = {action: sum(1 for r in results if r["action"] == action)
              for action in ("deleted", "would delete", "absent", "kept")}
    summary = ", ".join(f"{count} {action}" for action, count in counts.items() if count)
    _say(f"{'dry run: ' if dry_run else ''}{summary or 'nothing to delete'} for "
         f"{loaded.name} in {loaded.namespace.name} on {cluster.server}"
         + ("; the Namespace stays (--delete-namespace deletes it)" if counts["kept"] else ""))
    if json_output:
        output.emit_json("delete", {
            "namespace": loaded.namespace.name, "server": cluster.server,
            "context": cluster.context, "applyset": applyset.id, "dry_run": dry_run,
            "objects": results, "duration_s": round(time.monotonic() - started, 2)})


def _wait_gone(cluster: Any, objects: list[dict[str, Any]], timeout: float) -> None:
    from mlship.kube import describe

    deadline = time.monotonic() + timeout
    pending = list(objects)
    while pending:
        pending = [obj for obj in pending if cluster.get(
            obj["apiVersion"], obj["kind"], obj["metadata"]["name"],
            obj["metadata"].get("namespace")) is not None]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise MlshipTimeoutError(
                f"{len(pending)} object(s) still there after {timeout:g} s: "
                + ", ".join(describe(obj) for obj in pending[:5]),
                hint="finalizers hold them: kubectl get them -o yaml and look at "
                     "metadata.finalizers; or raise --timeout")
        time.sleep(0.25)


def _say(message: str) -> None:
    from rich.markup import escape

    output.stderr_console().print(escape(message), soft_wrap=True)
