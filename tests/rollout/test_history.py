"""What mlship believes is deployed, against the real API server: history, explicit undo, the
blue-green switch, and a status that says when nothing drives a rollout.

kwok makes the pods Ready (none runs), so the images are names only and the start commands
run with --skip-checks; tests/rollout/test_prechecks.py runs the registry check for real.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from mlship_contract import check_failure, check_success, mlship
from mlship_rollout import NAME, NEW_IMAGE, canary_share, deployment, image_of, write_config

from mlship.errors import ExitCode
from mlship.render.traffic import TRACK_LABEL

pytestmark = pytest.mark.k8s


def _deploy(config: Path, kubeconfig: Path, *extra: str) -> None:
    run = mlship("deploy", "-c", str(config), "--kubeconfig", str(kubeconfig), "--skip-checks",
                 *extra, cwd=config.parent)
    assert run.code == 0, run


def _history(config: Path, kubeconfig: Path) -> dict[str, Any]:
    run = mlship("history", "-c", str(config), "--kubeconfig", str(kubeconfig), "--json",
                 cwd=config.parent)
    assert run.code == 0, run
    return check_success(("history",), run.stdout)


def _rollout(config: Path, kubeconfig: Path, *argv: str) -> Any:
    return mlship("rollout", *argv, "-c", str(config), "--kubeconfig", str(kubeconfig),
                  cwd=config.parent)


def test_history_and_an_explicit_undo(control_plane, k8s_namespace, iris_model, tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, {"traffic": "replicas"})
    kubeconfig = control_plane.kubeconfig
    _deploy(config, kubeconfig)
    stable = image_of(deployment(control_plane, k8s_namespace, NAME))
    promoted = _rollout(config, kubeconfig, "bluegreen", "--image", NEW_IMAGE, "--promote",
                        "--skip-checks")
    assert promoted.code == 0, promoted

    revisions = _history(config, kubeconfig)["revisions"]
    assert [(r["number"], r["image"], r["current"]) for r in revisions] == [
        (1, stable, False), (2, NEW_IMAGE, True)]
    assert revisions[0]["change"]["action"] == "deploy"
    assert revisions[1]["change"]["action"] == "promote"
    assert revisions[1]["change"]["detail"] == f"bluegreen of {NEW_IMAGE} (replacing {stable})"
    assert revisions[1]["version"] == "1"
    assert revisions[1]["config_map"].startswith(f"{NAME}-config-")

    undone = _rollout(config, kubeconfig, "undo")  # waits like deploy's rollback
    assert undone.code == 0, undone
    assert f"back: from {NEW_IMAGE} (revision 2) → to {stable} (revision 1, now 3)" in \
        undone.stderr
    assert image_of(deployment(control_plane, k8s_namespace, NAME)) == stable
    assert deployment(control_plane, k8s_namespace, NAME)["status"]["updatedReplicas"] == 2

    again = _rollout(config, kubeconfig, "undo", "--json")  # would only flip back: refused
    assert again.code == ExitCode.ROLLOUT, again
    message = check_failure(("rollout", "undo"), again.stdout, ExitCode.ROLLOUT)["error"][
        "message"]
    assert "already was an undo (from revision 2" in message
    explicit = _rollout(config, kubeconfig, "undo", "--to-revision", "2", "--json")
    assert explicit.code == 0, explicit
    moved = check_success(("rollout", "undo"), explicit.stdout)["result"]
    assert (moved["from"]["image"], moved["to"]["image"]) == (stable, NEW_IMAGE)
    actions = [r["change"]["action"] for r in _history(config, kubeconfig)["revisions"]]
    assert actions[-1] == "undo"


def test_undo_after_an_aborted_rollout_is_refused(control_plane, k8s_namespace, iris_model,
                                                  tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, {"traffic": "replicas"})
    kubeconfig = control_plane.kubeconfig
    _deploy(config, kubeconfig)
    assert _rollout(config, kubeconfig, "bluegreen", "--image", NEW_IMAGE,
                    "--skip-checks").code == 0
    assert _rollout(config, kubeconfig, "abort").code == 0
    refused = _rollout(config, kubeconfig, "undo")
    assert refused.code == ExitCode.ROLLOUT, refused
    assert "ended aborted" in refused.stderr
    assert "was never replaced, so there is nothing to undo" in refused.stderr


def test_bluegreen_sends_no_request_to_green_before_the_switch(control_plane, k8s_namespace,
                                                              iris_model, tmp_path):
    """The Service is pinned to the stable track before green exists: green pods that turn
    Ready are no endpoints of it until the switch (under replica traffic the Service is the
    only way in). The share is read from the API server the whole time, as kube-proxy would."""
    import threading

    config = write_config(tmp_path, iris_model, k8s_namespace, {"traffic": "replicas"})
    kubeconfig = control_plane.kubeconfig
    _deploy(config, kubeconfig)
    seen: list[tuple[float, str | None]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            annotations = deployment(control_plane, k8s_namespace, NAME)["metadata"].get(
                "annotations") or {}
            phase = json.loads(annotations.get("mlship.dev/rollout", "{}")).get("phase")
            seen.append((canary_share(control_plane, k8s_namespace, "replicas"), phase))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        switched = _rollout(config, kubeconfig, "bluegreen", "--image", NEW_IMAGE,
                            "--skip-checks")
    finally:
        stop.set()
        watcher.join(5)
    assert switched.code == 0, switched
    # The Service moves from stable to green in one patch, and the state says "switched" just
    # after it: a sample between the two reads 100 % with the phase not yet switched. What an
    # unpinned Service would show instead is a share in between, as green pods turn Ready.
    shares = [share for share, _ in seen]
    assert any(phase != "switched" for _, phase in seen), seen
    assert set(shares) <= {0.0, 100.0}, seen
    assert shares == sorted(shares), seen  # 0 until the switch, 100 from it on
    assert shares[0] == 0.0, seen
    green = deployment(control_plane, k8s_namespace, f"{NAME}-canary")
    assert green["status"]["readyReplicas"] == 2
    service = control_plane.get(f"/api/v1/namespaces/{k8s_namespace}/services/{NAME}")
    assert service["spec"]["selector"][TRACK_LABEL] == "canary"


def test_status_says_when_nothing_drives_a_rollout(control_plane, k8s_namespace, iris_model,
                                                   tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, {"traffic": "replicas"})
    kubeconfig = control_plane.kubeconfig
    _deploy(config, kubeconfig)
    stale = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 300))
    state = {"strategy": "canary", "phase": "progressing", "image": NEW_IMAGE,
             "stable_image": "old", "revision": "0123456789", "traffic": "replicas",
             "steps": [50, 100], "stable_replicas": 2, "owner": "ci-runner/4242/dead",
             "step": 0, "weight": 50, "effective_weight": 50.0, "started": stale,
             "updated": stale, "inconclusive": 0, "reason": None, "history": [],
             "arms": [], "bandit": None}
    control_plane.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                         "metadata": {"name": NAME, "namespace": k8s_namespace,
                                      "annotations": {"mlship.dev/rollout": json.dumps(state)}}},
                        field_manager="mlship-rollout")
    shown = _rollout(config, kubeconfig, "status")
    assert shown.code == 0, shown
    assert "nothing is driving it: no update for" in shown.stderr
    assert "(the process ci-runner/4242/dead stopped?)" in shown.stderr
    assert "`mlship rollout canary --resume` continues it" in shown.stderr
    document = _rollout(config, kubeconfig, "status", "--json")
    assert check_success(("rollout", "status"), document.stdout)["undriven"] is True
    watched = _rollout(config, kubeconfig, "status", "--watch", "--timeout", "30")
    assert watched.code == 0, watched  # --watch ends: nobody will ever move this one
    assert watched.stderr.count("nothing is driving it") == 1
