"""`mlship rollout bandit` end to end: a closed loop through a real API server, real runtime
processes and a real Prometheus.

As in test_rollout.py (whose helpers this reuses), the objects live in the loopback control
plane and the requests go to runtime processes on loopback labelled exactly as the arms'
Deployments would label them. ``SplitLoad`` plays the mesh: it splits its requests by the
weights on the VirtualService as the bandit writes them, so what the bandit measures next
depends on what it decided before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from mlship_contract import check_failure, check_success, mlship
from mlship_prometheus import PrometheusServer
from mlship_rollout import (
    NAME,
    NEW_IMAGE,
    Runtime,
    SplitLoad,
    deploy,
    deployment,
    faulty_model,
    image_of,
    invoke,
    state_of,
    write_config,
)

from mlship.errors import ExitCode
from mlship.render.traffic import ISTIO_API, revision_of

pytestmark = [pytest.mark.k8s, pytest.mark.prometheus]

MIN_SHARE, MAX_SHARE = 10, 80
ROUNDS = 6
THIRD_IMAGE = "registry.local/iris:v3"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


def bandit_config(**bandit: Any) -> dict[str, Any]:
    return {"traffic": "istio", "interval": "2s",
            "bandit": {"rounds": ROUNDS, "min_share": MIN_SHARE, "max_share": MAX_SHARE,
                       "seed": 7, "min_requests": 5, "confidence": None, **bandit}}


def backends(control_plane: Any, namespace: str) -> list[tuple[str, int]]:
    """(host, weight) of the VirtualService's default route, read from the API server."""
    path = control_plane.resource_path(ISTIO_API, "VirtualService", namespace, NAME)
    route = (control_plane.get(path) or {})["spec"]["http"][-1]["route"]
    return [(item["destination"]["host"].split(".")[0], item["weight"]) for item in route]


def test_bandit_moves_weight_to_the_better_version_and_stays_in_bounds(
        control_plane, k8s_namespace, prometheus, iris_model, tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, bandit_config())
    deploy(control_plane, config)
    # The stable is the worse version here: it fails (422) on half of the inputs, the new
    # image never does. So the weight has to move *away* from the version already serving.
    worse = Runtime(faulty_model(tmp_path / "faulty.onnx"), prometheus, "--track", "stable")
    better = Runtime(iris_model, prometheus, "--track", "canary", "--revision",
                     revision_of(k8s_namespace, NAME, NEW_IMAGE))
    seen: list[tuple[list[int], list[int]]] = []  # (object's weights, state's) once written

    def canary_share() -> float:
        state = state_of(control_plane, k8s_namespace)  # first: then the route is at least as new
        weights = [weight for _, weight in backends(control_plane, k8s_namespace)]
        if state and state["strategy"] == "bandit" and \
                sum(arm["weight"] for arm in state["arms"]) == 100:
            seen.append((weights, [arm["weight"] for arm in state["arms"]]))
        return float(weights[1])

    try:
        prometheus.set_targets([worse.target, better.target])
        prometheus.wait_up(worse.target)
        prometheus.wait_up(better.target)
        with SplitLoad(worse, better, canary_share, rps=40) as load:
            result = invoke("bandit", "--image", NEW_IMAGE, "-c", str(config), "--kubeconfig",
                            str(control_plane.kubeconfig), "--prometheus-url", prometheus.url,
                            "--json")
    finally:
        prometheus.set_targets([])
        worse.stop()
        better.stop()
    assert result.exit_code == 0, result.stderr
    state = check_success(("rollout", "bandit"), result.stdout)["rollout"]
    assert (state["strategy"], state["phase"]) == ("bandit", "paused")
    assert [arm["image"] for arm in state["arms"]][1] == NEW_IMAGE
    rounds = [entry for entry in state["history"] if entry["event"] == "weights"]
    assert [entry["round"] for entry in rounds] == list(range(ROUNDS + 1))
    assert rounds[0]["weights"] == [50, 50]  # no evidence yet: an even split
    for entry in rounds:  # every weight the bandit wrote, as the state recorded it
        assert sum(entry["weights"]) == 100
        assert all(MIN_SHARE <= weight <= MAX_SHARE for weight in entry["weights"]), entry
    # ... and as the API server held it, read by the load generator throughout
    assert len(seen) > ROUNDS
    for on_object, _ in seen:
        assert sum(on_object) == 100
        assert all(MIN_SHARE <= weight <= MAX_SHARE for weight in on_object), on_object
    assert {tuple(on_state) for _, on_state in seen} >= {(50, 50)}
    # The stable's failures were measured from Prometheus, the new image's successes too.
    first = rounds[1]["rewards"]
    assert first[0]["success_rate"] < 0.8
    assert first[1]["success_rate"] == 1.0
    assert load.count("canary") > 0
    # Weight moved toward the better version within 3 rounds and stayed there.
    canary = [entry["weights"][1] for entry in rounds]
    moved = next((index for index, weight in enumerate(canary) if weight >= MAX_SHARE - 5),
                 None)
    assert moved is not None, f"the weight never moved to the better version: {canary}"
    assert moved <= 3, canary
    assert all(weight > 50 for weight in canary[moved:]), canary
    assert backends(control_plane, k8s_namespace) == [(f"{NAME}-stable", 100 - canary[-1]),
                                                      (f"{NAME}-canary", canary[-1])]
    assert state["bandit"]["prob_best"][1] > 0.95
    print(f"bandit canary weights by round: {canary}; P(best) {state['bandit']['prob_best']}")

    cluster_args = ["-c", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    status = mlship("rollout", "status", *cluster_args, cwd=tmp_path)
    assert status.code == 0, status.stderr
    assert f"round {ROUNDS}/{ROUNDS}: " in status.stderr
    promoted = mlship("rollout", "promote", "--json", *cluster_args, cwd=tmp_path)
    assert promoted.code == 0, promoted.stderr
    after = check_success(("rollout", "promote"), promoted.stdout)["rollout"]
    assert (after["phase"], after["image"]) == ("promoted", NEW_IMAGE)  # the best arm won
    assert image_of(deployment(control_plane, k8s_namespace, NAME)) == NEW_IMAGE
    assert backends(control_plane, k8s_namespace) == [(f"{NAME}-stable", 100),
                                                      (f"{NAME}-canary", 0)]
    assert deployment(control_plane, k8s_namespace, f"{NAME}-canary")["spec"]["replicas"] == 0


def test_three_arms_get_their_own_objects_and_abort_clears_them(control_plane, k8s_namespace,
                                                                 prometheus, iris_model,
                                                                 tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace,
                          bandit_config(rounds=1, algorithm="epsilon_greedy"))
    stable_before = deploy(control_plane, config)
    args = ["-c", str(config), "--kubeconfig", str(control_plane.kubeconfig), "--json"]
    result = invoke("bandit", "--image", NEW_IMAGE, "--image", THIRD_IMAGE, "--interval", "1s",
                    "--prometheus-url", prometheus.url, *args)
    assert result.exit_code == 0, result.stderr
    state = check_success(("rollout", "bandit"), result.stdout)["rollout"]
    assert [arm["track"] for arm in state["arms"]] == ["stable", "canary", "canary-2"]
    # No requests at all: nothing learned, so the split stays even within the bounds.
    assert backends(control_plane, k8s_namespace) == [
        (f"{NAME}-stable", 34), (f"{NAME}-canary", 33), (f"{NAME}-canary-2", 33)]
    third = deployment(control_plane, k8s_namespace, f"{NAME}-canary-2")
    assert (image_of(third), third["status"]["readyReplicas"]) == (THIRD_IMAGE, 2)
    service = control_plane.get(f"/api/v1/namespaces/{k8s_namespace}/services/"
                                f"{NAME}-canary-2")
    assert service["spec"]["selector"]["mlship.dev/track"] == "canary-2"

    aborted = invoke("abort", *args)
    assert aborted.exit_code == 0, aborted.stderr
    assert check_success(("rollout", "abort"), aborted.stdout)["rollout"]["phase"] == "aborted"
    assert backends(control_plane, k8s_namespace) == [(f"{NAME}-stable", 100),
                                                      (f"{NAME}-canary", 0)]
    assert deployment(control_plane, k8s_namespace, f"{NAME}-canary")["spec"]["replicas"] == 0
    # The third arm's objects existed only for this bandit: deleted, not left at zero.
    assert deployment(control_plane, k8s_namespace, f"{NAME}-canary-2") == {}
    assert control_plane.get(f"/api/v1/namespaces/{k8s_namespace}/services/"
                             f"{NAME}-canary-2") is None
    assert deployment(control_plane, k8s_namespace, NAME)["spec"] == stable_before["spec"]


def test_bandit_refuses_what_it_cannot_do_before_changing_anything(control_plane,
                                                                     k8s_namespace, prometheus,
                                                                     iris_model, tmp_path):
    replicas = write_config(tmp_path, iris_model, k8s_namespace,
                            {**bandit_config(), "traffic": "replicas"})
    deploy(control_plane, replicas)
    args = ["--kubeconfig", str(control_plane.kubeconfig), "--prometheus-url", prometheus.url,
            "--json"]
    result = invoke("bandit", "--image", NEW_IMAGE, "-c", str(replicas), *args)
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    message = check_failure(("rollout", "bandit"), result.stdout, ExitCode.BAD_INPUT)[
        "error"]["message"]
    assert message.startswith("rollout.traffic: 'replicas' cannot give a bandit's shares")
    # Eight arms cannot each keep 15 %: the bounds are checked against the --image count.
    many = ["--image" if i % 2 == 0 else f"registry.local/iris:v{i}" for i in range(2, 16)]
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    config = write_config(crowded, iris_model, k8s_namespace, bandit_config(min_share=15))
    result = invoke("bandit", *many, "-c", str(config), *args)
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    message = check_failure(("rollout", "bandit"), result.stdout, ExitCode.BAD_INPUT)[
        "error"]["message"]
    assert "8 arms at min_share 15 % need 120 % (> 100)" in message
    assert state_of(control_plane, k8s_namespace) is None


def test_a_bandit_that_goes_blind_aborts_after_max_inconclusive_rounds(
        control_plane, k8s_namespace, iris_model, tmp_path):
    """Prometheus stops answering mid-run: no evidence for any arm, so after
    rollout.analysis.max_inconclusive rounds the bandit aborts, as a canary would, instead of
    routing on what it cannot see. (An unreachable Prometheus at the start is refused before
    anything changes.) The bandit runs as its own process, so it can be watched and stopped."""
    import subprocess
    import sys

    from mlship_contract import clean_env

    rollout = {**bandit_config(rounds=60), "interval": "1s",
               "analysis": {"max_inconclusive": 2}}
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout)
    stable_before = deploy(control_plane, config)
    own = PrometheusServer(tmp_path / "prometheus").start()
    log = tmp_path / "bandit.err"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlship", "rollout", "bandit", "--image", NEW_IMAGE,
             "--skip-checks",
             "--prometheus-url", own.url, "--timeout", "120", "-c", str(config),
             "--kubeconfig", str(control_plane.kubeconfig), "--json"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=clean_env())
    try:
        deadline = time.monotonic() + 150
        state: dict[str, Any] = {}
        while time.monotonic() < deadline and process.poll() is None:
            state = state_of(control_plane, k8s_namespace) or {}
            if any(e.get("event") == "weights" and e.get("round", 0) >= 1
                   for e in state.get("history", [])):
                break  # the first round routed on real answers
            time.sleep(0.2)
        else:
            raise AssertionError(f"no round within 150 s: {state}\n{log.read_text()[-3000:]}")
    finally:
        own.stop()
    try:
        stdout, _ = process.communicate(timeout=150)
    finally:
        process.kill()
    assert process.returncode == ExitCode.NO_DATA, log.read_text()[-3000:]
    error = check_failure(("rollout", "bandit"), stdout, ExitCode.NO_DATA)
    message = error["error"]["message"]
    assert "no arm could be measured in 2 rounds in a row" in message, message
    assert own.url.removeprefix("http://") in message, message
    assert state_of(control_plane, k8s_namespace)["phase"] == "aborted"
    assert backends(control_plane, k8s_namespace) == [(f"{NAME}-stable", 100),
                                                      (f"{NAME}-canary", 0)]
    assert deployment(control_plane, k8s_namespace, f"{NAME}-canary")["spec"]["replicas"] == 0
    assert deployment(control_plane, k8s_namespace, NAME)["spec"] == stable_before["spec"]
