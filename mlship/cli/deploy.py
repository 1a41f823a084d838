"""`mlship deploy` and `mlship diff`: rendered manifests onto a cluster, or what that would change.

deploy = render -> plan -> connect -> server dry run of every object -> pre-deploy checks ->
apply -> wait for the rollout (live view) -> on failure, roll back. Each step is a function of
mlship.cluster (apply, checks, wait, revisions); this module only chains them and
talks to people (stderr) and programs (one JSON document on stdout).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mlship.cli import cluster as opts
from mlship.cli import output
from mlship.cli import registry_login as login_opts
from mlship.cli.deploy_fail import fail
from mlship.cli.deploy_plan import deployment_image, planned, with_recorded_image
from mlship.errors import (
    BadInputError,
    ExitCode,
    MlshipError,
)

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from mlship.cluster.apply import ApplyResult, Preview
    from mlship.cluster.wait import RolloutStatus
    from mlship.config.schema import MlshipConfig
    from mlship.image.credentials import RegistryCredential
    from mlship.kube import Cluster

_JSON_HELP = "Print one JSON object on stdout."
_IMAGE_HELP = "Deploy this image instead of the config's, e.g. the digest-pinned reference " \
              "`mlship push --json` printed."
DRY_RUN_MODES = ("client", "server")


def deploy(
    config: Path = opts.CONFIG,
    image: str | None = typer.Option(None, "--image", help=_IMAGE_HELP, show_default=False),
    dry_run: str | None = typer.Option(
        None, "--dry-run", metavar="client|server", show_default=False,
        help="client: print the objects, contact nothing. server: run the checks and a "
             "server-side dry run, change nothing."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the rollout to "
                              "complete, with a live view of replicas and events."),
    rollback: bool = typer.Option(True, "--rollback/--no-rollback", help="On a failed or "
                                  "timed-out rollout, restore the previous revision."),
    force_conflicts: bool = typer.Option(False, "--force-conflicts", help="Take over fields "
                                         "another field manager owns (else: exit 7)."),
    skip_checks: bool = typer.Option(False, "--skip-checks", help="Skip the pre-deploy checks "
                                     "(image in registry, quota, LimitRange, GPU nodes)."),
    registry_username: str | None = login_opts.USERNAME,
    registry_password_stdin: bool = login_opts.PASSWORD_STDIN,
    registry_auth: str | None = login_opts.REMOVED_AUTH,
    timeout: float = opts.TIMEOUT,
    kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT,
    namespace: str | None = opts.NAMESPACE,
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help=_JSON_HELP),
) -> None:
    """Apply the rendered manifests (server-side, field manager mlship) and wait for the rollout."""
    from mlship.cluster import apply as release
    from mlship.cluster.applyset import ApplySet, prune, with_parent
    from mlship.cluster.checks import run_checks
    from mlship.rollout import handback

    started = time.monotonic()
    if dry_run is not None and dry_run not in DRY_RUN_MODES:
        raise BadInputError(f"--dry-run: {dry_run!r} is invalid: must be client or server")
    login = login_opts.registry_login(registry_username, registry_password_stdin, registry_auth)
    plan = planned(config, namespace, image)
    loaded = plan.loaded
    payload: dict[str, Any] = {"namespace": loaded.namespace.name, "image": plan.image,
                               "dry_run": dry_run, "server": None, "context": None}
    applyset = ApplySet(loaded.name, loaded.namespace.name)
    if dry_run == "client":
        _warn_local_image(loaded, plan.image)
        _client_dry_run(with_parent(None, applyset, plan.objects, _app_labels(loaded))[0],
                        payload, started, json_output)
        return
    cluster = opts.connect(kubeconfig, context)
    payload.update(server=cluster.server, context=cluster.context)
    plan = with_recorded_image(cluster, plan, resolve=not skip_checks, login=login)
    payload["image"] = plan.image
    _warn_local_image(loaded, plan.image)
    objects, recorded = with_parent(cluster, applyset, plan.objects, _app_labels(loaded))
    _say(f"deploying {len(objects)} objects to {loaded.namespace.name} on {cluster.server}"
         + (f" (context {cluster.context})" if cluster.context else "")
         + (" - server dry run" if dry_run else ""))
    released = handback.take_back_from_rollouts(cluster, objects, dry_run=bool(dry_run))
    for name in released:
        _say(f"{'would take' if dry_run else 'taking'} back the fields a finished rollout "
             f"changed on {name}")
    previews = release.preview(cluster, objects, force=force_conflicts,
                               released=handback.released_managers(released))
    checks = [] if skip_checks else run_checks(
        cluster, previews, cuda_image=loaded.base_image if loaded.gpu.enabled else None,
        login=login)
    for check in checks:
        _say(f"check {check.name}: {check.status}: {check.detail}")
    result = release.dry_run_result(previews) if dry_run else \
        release.apply(cluster, previews, force=force_conflicts)
    _report(result)
    payload.update(objects=[item.to_dict() for item in result.objects], changed=result.changed,
                   checks=[check.to_dict() for check in checks], rollout=None)
    deployment = next((item for item in previews if item.desired["kind"] == "Deployment"), None)
    if deployment is not None and wait and not dry_run:
        status = _wait(cluster, deployment, timeout)
        if status.outcome != "complete":
            fail(cluster, status, deployment, rollback=rollback, timeout=timeout)
        _record(cluster, deployment, status, pin=not skip_checks, login=login)
        payload["rollout"] = status.to_dict()
        payload["pruned_config_maps"] = _prune(cluster, deployment.desired)
    # After the rollout succeeded (a failed one raised above, with nothing pruned).
    payload["pruned"] = prune(cluster, applyset, objects, recorded, _app_labels(loaded),
                              dry_run=bool(dry_run))
    if payload["pruned"]:
        _say(("would prune" if dry_run else "pruned") + f" {len(payload['pruned'])} object(s) "
             f"an earlier deploy applied and this render no longer has: "
             f"{', '.join(payload['pruned'])}")
    payload["duration_s"] = round(time.monotonic() - started, 2)
    if json_output:
        output.emit_json("deploy", payload)


def _record(cluster: Cluster, deployment: Preview, status: RolloutStatus, *, pin: bool,
            login: RegistryCredential | None) -> None:
    """A new revision made by this deploy says so on its ReplicaSet (`mlship history`), and
    the Deployment records the image it runs, by digest when the registry was asked (pin)."""
    from mlship.cluster import deployed, revisions
    from mlship.cluster.checks import registry_digest
    from mlship.cluster.history import Change, record_change

    image = str(deployment_image([deployment.desired]))
    before = ((deployment.live or {}).get("metadata", {}).get("annotations") or {}).get(
        revisions.REVISION)
    if status.revision is not None and str(status.revision) != before:
        record_change(cluster, status.namespace, status.name, Change.now("deploy", image))
    entry = deployed.recorded(deployment.live)
    if entry is not None and entry.image == image:
        return  # recorded already (by an earlier deploy or the promote that put it there)
    try:
        digest = registry_digest(image, login) if pin else None
    except MlshipError:
        digest = None  # the check just found it; a registry gone since costs only the pin
    deployed.record(cluster, status.namespace, status.name, image, digest, "deploy")


def _app_labels(loaded: MlshipConfig) -> dict[str, str]:
    """What marks the app's objects (the rendered common labels' selector part)."""
    return {"app.kubernetes.io/name": loaded.name, "app.kubernetes.io/managed-by": "mlship"}


def _prune(cluster: Cluster, deployment: dict[str, Any]) -> list[str]:
    """Settings ConfigMaps no kept revision uses; a refusal only costs a warning."""
    from mlship.cluster import revisions

    meta = deployment["metadata"]
    try:
        pruned = revisions.prune_config_maps(cluster, meta["namespace"], meta["name"])
    except MlshipError as err:
        output.warn(f"old ConfigMaps were not pruned: {err.message}")
        return []
    if pruned:
        _say(f"pruned {len(pruned)} ConfigMap(s) no kept revision uses: {', '.join(pruned)}")
    return pruned


def diff(
    config: Path = opts.CONFIG,
    image: str | None = typer.Option(None, "--image", help=_IMAGE_HELP, show_default=False),
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 12 when there are "
                                   "differences (1 stays reserved for internal errors)."),
    force_conflicts: bool = typer.Option(False, "--force-conflicts", help="Show the result of "
                                         "taking over fields another manager owns."),
    kubeconfig: Path | None = opts.KUBECONFIG,
    context: str | None = opts.CONTEXT,
    namespace: str | None = opts.NAMESPACE,
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help=_JSON_HELP),
) -> None:
    """Show what `mlship deploy` would change: live objects against a server-side dry run."""
    from mlship.cluster import apply as release
    from mlship.cluster.applyset import ApplySet, prunable, with_parent
    from mlship.rollout import handback

    plan = planned(config, namespace, image)
    loaded = plan.loaded
    cluster = opts.connect(kubeconfig, context)
    plan = with_recorded_image(cluster, plan)
    applyset = ApplySet(loaded.name, loaded.namespace.name)
    objects, recorded = with_parent(cluster, applyset, plan.objects, _app_labels(loaded))
    # What deploy would take back from a finished rollout first (so: no conflict with it).
    released = handback.take_back_from_rollouts(cluster, objects, dry_run=True,
                                                refuse_active=False)
    previews = release.preview(cluster, objects, force=force_conflicts,
                               released=handback.released_managers(released))
    entries = []
    for item in previews:
        text = release.unified_diff(item.live, item.result)
        action = "create" if item.live is None else ("update" if text else "none")
        entries.append({**release.ObjectResult(item.desired["kind"],
                                               item.desired["metadata"]["name"],
                                               item.desired["metadata"].get("namespace"),
                                               action).to_dict(), "diff": text})
    for obj in prunable(applyset.listed(cluster, recorded), objects):  # deploy would delete
        meta = obj["metadata"]
        entries.append({"kind": obj["kind"], "name": meta["name"],
                        "namespace": meta.get("namespace"), "action": "prune",
                        "diff": release.unified_diff(obj, None)})
    changed = [entry for entry in entries if entry["action"] != "none"]
    if not all(item.checked for item in previews):
        _say(f"namespace {loaded.namespace.name} does not exist yet: objects in it are shown "
             "as mlship sends them, not as the server would store them")
    if changed:
        _say(f"{len(changed)} of {len(entries)} objects differ: " + ", ".join(
            f"{entry['kind']} {entry['name']} ({entry['action']})" for entry in changed))
    else:
        _say(f"no differences: the {len(entries)} objects in the cluster match mlship.yaml")
    if json_output:
        output.emit_json("diff", {"namespace": loaded.namespace.name, "server": cluster.server,
                                  "objects": entries, "changed": bool(changed)})
    else:
        sys.stdout.write("".join(entry["diff"] for entry in entries))
        sys.stdout.flush()
    if exit_code and changed:
        raise typer.Exit(int(ExitCode.DIFFERENCES))


# ---- steps ----------------------------------------------------------------------------------


def _warn_local_image(loaded: MlshipConfig, image: str | None) -> None:
    """Once the deploy goes ahead: an image no node can pull is worth a line first."""
    from mlship.render.context import local_image_warning

    warning = local_image_warning(loaded, image or loaded.name)
    if warning:
        output.warn(warning)


def _client_dry_run(objects: list[dict[str, Any]], payload: dict[str, Any], started: float,
                    json_output: bool) -> None:
    import yaml

    _say(f"client dry run: {len(objects)} objects, in apply order; nothing was sent")
    if json_output:
        output.emit_json("deploy", {
            **payload, "changed": None, "checks": [], "rollout": None,
            "objects": [{"kind": o["kind"], "name": o["metadata"]["name"],
                         "namespace": o["metadata"].get("namespace"), "action": "planned"}
                        for o in objects],
            "manifests": objects, "duration_s": round(time.monotonic() - started, 2)})
        return
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    sys.stdout.flush()


def _report(result: ApplyResult) -> None:
    would = "would be " if result.dry_run else ""
    for item in result.objects:
        where = f"{item.namespace}/" if item.namespace else ""
        _say(f"  {item.kind} {where}{item.name} {would}{item.action}")
    if not result.changed:
        _say(f"no changes: all {len(result.objects)} objects {would}unchanged")
        return
    counts = {action: sum(1 for item in result.objects if item.action == action)
              for action in ("created", "configured", "unchanged")}
    _say(("server dry run: " if result.dry_run else "applied: ")
         + ", ".join(f"{count} {action}" for action, count in counts.items() if count))


def _wait(cluster: Cluster, deployment: Preview, timeout: float) -> RolloutStatus:
    from mlship.cluster.wait import wait_rollout

    meta = deployment.desired["metadata"]
    with _RolloutView(output.stderr_console(), live=output.color_enabled()) as view:
        status = wait_rollout(cluster, meta["namespace"], meta["name"], timeout=timeout,
                              on_update=view)
    if status.outcome == "complete":
        _say(f"rollout complete: Deployment {meta['namespace']}/{meta['name']} revision "
             f"{status.revision}, {status.available}/{status.desired} available "
             f"({status.elapsed_s:.1f} s)")
    return status


def _say(message: str) -> None:
    from rich.markup import escape

    output.stderr_console().print(escape(message), soft_wrap=True)


class _RolloutView(output.LiveDisplay):
    """Rollout progress on stderr: a Rich live panel on a terminal, plain new lines otherwise."""

    def __init__(self, console: Console, live: bool) -> None:
        self.live = None
        if live:
            from rich.live import Live

            # Not transient: the last panel (its events) stays on screen above the result.
            self.live = Live(console=console, refresh_per_second=8)
        super().__init__(console, self.live)
        self.printed: set[str] = set()
        self.last_counts = ""
        self.first = True

    def __call__(self, status: RolloutStatus) -> None:
        first, self.first = self.first, False
        if not status.observed or (first and status.outcome == "complete"):
            return  # stale counts, or nothing rolled: the caller's summary line says it all
        if self.live is not None:
            self.live.update(self._panel(status))
            return
        counts = f"rollout {status.namespace}/{status.name}: {status.counts()}"
        if counts != self.last_counts:
            self.last_counts = counts
            _say(counts)
        for line in [f"  problem: {p}" for p in status.problems] + \
                [f"  event: {e}" for e in status.events]:
            key = re.sub(r" \(x\d+\)$", "", line)  # a repeat count is not a new event
            if key not in self.printed:
                self.printed.add(key)
                _say(line)

    @staticmethod
    def _panel(status: RolloutStatus) -> RenderableType:
        from rich.console import Group
        from rich.markup import escape
        from rich.text import Text

        head = Text.from_markup(
            f"[bold]Deployment {escape(status.namespace)}/{escape(status.name)}[/bold] "
            f"revision {status.revision or '?'}  [dim]{status.elapsed_s:.0f} s[/dim]")
        bar = Text.from_markup(
            f"updated [cyan]{status.updated}/{status.desired}[/cyan]  ready "
            f"[cyan]{status.ready}/{status.desired}[/cyan]  available "
            f"[green]{status.available}/{status.desired}[/green]")
        lines: list[RenderableType] = [head, bar]
        lines += [Text(f"  {p}", style="red") for p in status.problems[:3]]
        lines += [Text(f"  {e}", style="dim") for e in status.events]
        return Group(*lines)
