"""`mlship rollout` end to end: the real control plane holds the objects, a real Prometheus
judges real runtime processes.

The Deployments, Services, VirtualService and HTTPRoute live in the loopback API server (kwok
makes their pods Ready; none runs). The requests the analysis judges go to runtime processes
on loopback — one stable, one canary labelled ``track=canary,revision=<rev>`` exactly as the
canary Deployment's env would label it — sent by ``SplitLoad`` in the proportion the rollout
currently sets *in the API server* (route weights, or the replica ratio), the way a mesh or
kube-proxy would spread them. Prometheus scrapes both processes every second.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlship_contract import check_failure, check_success, clean_env, mlship
from mlship_prometheus import PrometheusServer
from mlship_rollout import (
    NAME,
    NEW_IMAGE,
    Runtime,
    SplitLoad,
    canary_share,
    deploy,
    deployment,
    faulty_model,
    image_of,
    invoke,
    rollout_config,
    route_weights,
    slow_model,
    state_of,
    write_config,
)

from mlship.errors import ExitCode
from mlship.render.traffic import ISTIO_API, TRACK_LABEL, revision_of

pytestmark = [pytest.mark.k8s, pytest.mark.prometheus]

@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


@pytest.fixture
def runtimes(prometheus: PrometheusServer, iris_model: Path, tmp_path: Path,
             k8s_namespace: str) -> Iterator[Callable[[str, Path], tuple[Runtime, Runtime]]]:
    """start(image, canary model) -> (stable, canary) runtimes, both scraped."""
    started: list[Runtime] = []

    def start(image: str, canary_model: Path) -> tuple[Runtime, Runtime]:
        stable = Runtime(iris_model, prometheus, "--track", "stable")
        canary = Runtime(canary_model, prometheus, "--track", "canary", "--revision",
                         revision_of(k8s_namespace, NAME, image))
        started.extend([stable, canary])
        prometheus.set_targets([stable.target, canary.target])
        prometheus.wait_up(stable.target)
        prometheus.wait_up(canary.target)
        return stable, canary

    yield start
    prometheus.set_targets([])
    for runtime in started:
        runtime.stop()


# ---- canary analysis on real metrics ------------------------------------------------------


def test_good_canary_is_promoted_on_istio_weights(control_plane, k8s_namespace, prometheus,
                                                 runtimes, iris_model, tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout_config("istio"))
    stable_before = deploy(control_plane, config)
    old_image = image_of(stable_before)
    stable, canary = runtimes(NEW_IMAGE, iris_model)
    share = lambda: canary_share(control_plane, k8s_namespace, "istio")  # noqa: E731
    started = time.monotonic()
    with SplitLoad(stable, canary, share) as load:
        result = invoke("canary", "--image", NEW_IMAGE, "-c", str(config), "--kubeconfig",
                        str(control_plane.kubeconfig), "--prometheus-url", prometheus.url,
                        "--json")
    took = time.monotonic() - started
    assert result.exit_code == 0, result.stderr
    document = check_success(("rollout", "canary"), result.stdout)
    state = document["rollout"]
    assert state["phase"] == "promoted", result.stderr
    analyses = [entry for entry in state["history"] if entry["event"] == "analysis"]
    passed = [entry for entry in analyses if entry["status"] == "pass"]
    assert [entry["weight"] for entry in passed] == [25, 50, 100]
    for entry in passed:  # values measured by Prometheus, from the runtime's own metrics
        assert entry["values"]["success rate"] == 1.0
        assert entry["values"]["requests"] >= 8
        assert 0 < entry["values"]["p99 latency"] <= 500
    assert {25.0, 50.0, 100.0} <= load.shares_seen  # the weights the API server held
    assert load.count("canary") > 0
    assert image_of(deployment(control_plane, k8s_namespace, NAME)) == NEW_IMAGE
    assert route_weights(control_plane, k8s_namespace, "istio") == (100, 0)
    canary_dep = deployment(control_plane, k8s_namespace, f"{NAME}-canary")
    assert canary_dep["spec"]["replicas"] == 0
    assert old_image != NEW_IMAGE
    print(f"good canary promoted in {took:.1f}s; query ms: "
          f"{[ms for entry in passed for ms in entry.get('query_ms', [])]}")


def test_faulty_canary_is_aborted_on_its_success_rate(control_plane, k8s_namespace, prometheus,
                                                       runtimes, iris_model, tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout_config("gateway"))
    stable_before = deploy(control_plane, config)
    stable, canary = runtimes(NEW_IMAGE, faulty_model(tmp_path / "faulty.onnx"))
    share = lambda: canary_share(control_plane, k8s_namespace, "gateway")  # noqa: E731
    with SplitLoad(stable, canary, share) as load:
        result = invoke("canary", "--image", NEW_IMAGE, "-c", str(config), "--kubeconfig",
                        str(control_plane.kubeconfig), "--prometheus-url", prometheus.url,
                        "--json")
    assert result.exit_code == ExitCode.ROLLOUT, result.stderr
    error = check_failure(("rollout", "canary"), result.stdout, ExitCode.ROLLOUT)["error"]
    message = error["message"]
    # At 25 % the first window may hold too few failed requests to judge: then at 50 %.
    assert re.search(r"aborted at step [12]/3 \((25|50) %\)", message), message
    assert "success rate" in message
    assert "threshold >= 99.0 %" in message
    assert "rollout.analysis.success_rate_min" in message
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [f"error: {message}"]  # one line, no traceback
    assert load.codes[("canary", 422)] > 0  # the failures the metrics counted were real
    # stable untouched: the same spec (replicas, pod template, image); only the state annotation
    assert deployment(control_plane, k8s_namespace, NAME)["spec"] == stable_before["spec"]
    assert route_weights(control_plane, k8s_namespace, "gateway") == (100, 0)
    assert deployment(control_plane, k8s_namespace, f"{NAME}-canary")["spec"]["replicas"] == 0
    state = state_of(control_plane, k8s_namespace)
    assert state["phase"] == "aborted"
    assert "success rate" in state["reason"]
    failed = [entry for entry in state["history"] if entry.get("status") == "fail"]
    assert len(failed) == 1
    assert failed[0]["values"]["success rate"] < 0.99


def test_slow_canary_is_aborted_on_p99_with_replica_ratio(control_plane, k8s_namespace,
                                                          prometheus, runtimes, iris_model,
                                                          tmp_path):
    rollout = rollout_config("replicas", p99_ms_max=10)
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout)
    stable_before = deploy(control_plane, config)
    stable, canary = runtimes(NEW_IMAGE, slow_model(tmp_path / "slow.onnx"))
    share = lambda: canary_share(control_plane, k8s_namespace, "replicas")  # noqa: E731
    with SplitLoad(stable, canary, share, rps=24) as load:
        result = invoke("canary", "--image", NEW_IMAGE, "-c", str(config), "--kubeconfig",
                        str(control_plane.kubeconfig), "--prometheus-url", prometheus.url)
    assert result.exit_code == ExitCode.ROLLOUT, result.stderr
    assert "p99 latency" in result.stderr
    assert "threshold <= 10 ms" in result.stderr
    assert "rollout.analysis.p99_ms_max" in result.stderr
    assert load.count("canary") > 0
    assert any(0 < share < 100 for share in load.shares_seen)  # the replica ratio, 1 of 3 pods
    assert deployment(control_plane, k8s_namespace, NAME)["spec"] == stable_before["spec"]
    service = control_plane.get(f"/api/v1/namespaces/{k8s_namespace}/services/{NAME}")
    assert TRACK_LABEL not in service["spec"]["selector"]
    assert deployment(control_plane, k8s_namespace, f"{NAME}-canary")["spec"]["replicas"] == 0
    assert state_of(control_plane, k8s_namespace)["phase"] == "aborted"


def test_idle_canary_is_inconclusive_until_synthetic_traffic_lets_it_be_judged(
        control_plane, k8s_namespace, prometheus, runtimes, iris_model, tmp_path):
    rollout = {**rollout_config("replicas"), "steps": [50, 100]}
    rollout["analysis"].update(max_inconclusive=2, synthetic_traffic={"rps": 20})
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout)
    deploy(control_plane, config)
    _, canary = runtimes(NEW_IMAGE, iris_model)
    args = ["--image", NEW_IMAGE, "-c", str(config), "--kubeconfig",
            str(control_plane.kubeconfig), "--prometheus-url", prometheus.url]
    idle = invoke("canary", *args)
    assert idle.exit_code == ExitCode.NO_DATA, idle.stderr  # not judged bad, never shown good
    assert "too few requests to judge: no canary requests in the last 5s" in idle.stderr
    # The canary is scraped (its mlship_ready series is there): nobody sent it a request.
    assert "the canary's pods are scraped but received no inference requests" in idle.stderr
    assert "(2 checks in a row, rollout.analysis.max_inconclusive)" in idle.stderr
    assert "--traffic-url" in idle.stderr  # the hint
    assert state_of(control_plane, k8s_namespace)["phase"] == "aborted"

    # No live traffic at all: only mlship's own requests, built from the model's signature.
    judged = invoke("canary", *args, "--traffic-url", canary.url, "--json")
    assert judged.exit_code == 0, judged.stderr
    state = check_success(("rollout", "canary"), judged.stdout)["rollout"]
    assert state["phase"] == "promoted"
    passed = [entry for entry in state["history"] if entry.get("status") == "pass"]
    assert [entry["weight"] for entry in passed] == [50, 100]
    assert all(entry["values"]["requests"] >= 8 for entry in passed)
    assert "synthetic requests to " + canary.url in judged.stderr


# ---- state in the cluster: other processes pick it up --------------------------------------


def test_paused_canary_is_seen_guarded_and_promoted_from_fresh_processes(
        control_plane, k8s_namespace, prometheus, runtimes, iris_model, tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout_config("gateway"))
    deploy(control_plane, config)
    stable, canary = runtimes(NEW_IMAGE, iris_model)
    share = lambda: canary_share(control_plane, k8s_namespace, "gateway")  # noqa: E731
    cluster_args = ["-c", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    with SplitLoad(stable, canary, share):
        result = invoke("canary", "--image", NEW_IMAGE, "--steps", "50", "--no-promote",
                        "--prometheus-url", prometheus.url, *cluster_args)
    assert result.exit_code == 0, result.stderr
    assert "paused at 50 %" in result.stderr
    assert route_weights(control_plane, k8s_namespace, "gateway") == (50, 50)

    status = mlship("rollout", "status", "--json", *cluster_args, cwd=tmp_path)
    assert status.code == 0, status.stderr
    state = check_success(("rollout", "status"), status.stdout)["rollout"]
    assert (state["phase"], state["weight"], state["image"]) == ("paused", 50, NEW_IMAGE)

    second = mlship("rollout", "bluegreen", "--image", "registry.local/iris:v3", "--json",
                    "--skip-checks",
                    *cluster_args, cwd=tmp_path)
    assert second.code == ExitCode.ROLLOUT, second.stderr
    check_failure(("rollout", "bluegreen"), second.stdout, ExitCode.ROLLOUT)
    assert "already paused" in second.stderr
    assert "rollout abort" in second.stderr

    promoted = mlship("rollout", "promote", "--json", *cluster_args, cwd=tmp_path)
    assert promoted.code == 0, promoted.stderr
    state = check_success(("rollout", "promote"), promoted.stdout)["rollout"]
    assert state["phase"] == "promoted"
    assert image_of(deployment(control_plane, k8s_namespace, NAME)) == NEW_IMAGE
    assert route_weights(control_plane, k8s_namespace, "gateway") == (100, 0)
    again = mlship("rollout", "promote", *cluster_args, cwd=tmp_path)
    assert again.code == 0
    assert "already promoted" in again.stderr


def test_abort_from_another_process_stops_the_driving_one(control_plane, k8s_namespace,
                                                          prometheus, iris_model, tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace,
                          {**rollout_config("istio"), "interval": "60s"})
    stable_before = deploy(control_plane, config)
    cluster_args = ["-c", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    driver = subprocess.Popen(
        [sys.executable, "-m", "mlship", "rollout", "canary", "--image", NEW_IMAGE,
         "--skip-checks",
         "--prometheus-url", prometheus.url, "--json", *cluster_args],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while route_weights(control_plane, k8s_namespace, "istio") != (75, 25):
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "the canary never reached 25 %"
            time.sleep(0.2)
        aborted = mlship("rollout", "abort", "--reason", "bad dashboards", "--json",
                         *cluster_args, cwd=tmp_path)
        assert aborted.code == 0, aborted.stderr
        state = check_success(("rollout", "abort"), aborted.stdout)["rollout"]
        assert (state["phase"], state["reason"]) == ("aborted", "bad dashboards")
        stdout, stderr = driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.communicate()  # closes the pipes even when an assertion above failed
    assert driver.returncode == ExitCode.ROLLOUT, stderr
    check_failure(("rollout", "canary"), stdout, ExitCode.ROLLOUT)
    assert "aborted by" in stderr
    assert "bad dashboards" in stderr
    assert route_weights(control_plane, k8s_namespace, "istio") == (100, 0)
    assert deployment(control_plane, k8s_namespace, f"{NAME}-canary")["spec"]["replicas"] == 0
    assert deployment(control_plane, k8s_namespace, NAME)["spec"] == stable_before["spec"]
    nothing = mlship("rollout", "abort", *cluster_args, cwd=tmp_path)
    assert nothing.code == 0
    assert "nothing to abort" in nothing.stderr


def test_ab_sends_only_header_matched_requests_to_the_canary(control_plane, k8s_namespace,
                                                             prometheus, runtimes, iris_model,
                                                             tmp_path):
    rollout = {**rollout_config("istio"), "ab_match": [{"name": "X-Canary", "value": "yes"}]}
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout)
    deploy(control_plane, config)
    stable, canary = runtimes(NEW_IMAGE, iris_model)
    path = control_plane.resource_path(ISTIO_API, "VirtualService", k8s_namespace, NAME)
    seen: list[list[dict[str, Any]]] = []

    def tagged_share() -> float:
        # The mesh, emulated: while the A/B route exists, the 30 % of clients that send
        # X-Canary: yes reach the canary; the weighted route gives it nothing.
        http = (control_plane.get(path) or {})["spec"]["http"]
        seen.append(http)
        return 30.0 if http[0].get("name") == "ab" else float(http[-1]["route"][1]["weight"])

    with SplitLoad(stable, canary, tagged_share):
        result = invoke("ab", "--image", NEW_IMAGE, "--iterations", "2", "-c", str(config),
                        "--kubeconfig", str(control_plane.kubeconfig), "--prometheus-url",
                        prometheus.url, "--json")
    assert result.exit_code == 0, result.stderr
    state = check_success(("rollout", "ab"), result.stdout)["rollout"]
    assert state["phase"] == "promoted"
    assert state["strategy"] == "ab"
    during = [http for http in seen if http[0].get("name") == "ab"]
    assert during, "the A/B route never appeared"
    assert during[0][0]["match"] == [{"headers": {"x-canary": {"exact": "yes"}}}]
    assert during[0][-1]["route"][1]["weight"] == 0
    assert route_weights(control_plane, k8s_namespace, "istio") == (100, 0)
    assert image_of(deployment(control_plane, k8s_namespace, NAME)) == NEW_IMAGE


# ---- blue-green -----------------------------------------------------------------------------


def test_deploy_waits_for_a_rollout_then_takes_its_fields_back(control_plane, k8s_namespace,
                                                              iris_model, tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout_config("replicas"))
    deploy(control_plane, config)
    cluster_args = ["-c", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    assert invoke("bluegreen", "--image", NEW_IMAGE, *cluster_args).exit_code == 0

    during = mlship("deploy", *cluster_args, "--skip-checks", "--json", cwd=tmp_path)
    assert during.code == ExitCode.ROLLOUT, during.stderr
    assert "bluegreen rollout" in check_failure(("deploy",), during.stdout, 8)["error"]["message"]

    assert mlship("rollout", "promote", *cluster_args, cwd=tmp_path).code == 0
    stable = deployment(control_plane, k8s_namespace, NAME)
    assert image_of(stable) == NEW_IMAGE
    managers = {entry["manager"] for entry in stable["metadata"]["managedFields"]}
    assert "mlship-rollout" in managers  # the promotion's image change is the rollout's

    third = "registry.local/iris:v3"
    after = mlship("deploy", *cluster_args, "--skip-checks", "--image", third, "--json",
                   cwd=tmp_path)
    assert after.code == 0, after.stderr
    assert "taking back the fields a finished rollout changed" in after.stderr
    stable = deployment(control_plane, k8s_namespace, NAME)
    assert image_of(stable) == third
    managers = {entry["manager"] for entry in stable["metadata"]["managedFields"]}
    assert "mlship-rollout" not in managers
    assert state_of(control_plane, k8s_namespace)["phase"] == "promoted"  # history kept


def test_bluegreen_switches_keeps_the_old_version_and_rolls_back(control_plane, k8s_namespace,
                                                                 iris_model, tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout_config("replicas"))
    stable_before = deploy(control_plane, config)
    old_image = image_of(stable_before)
    cluster_args = ["-c", str(config), "--kubeconfig", str(control_plane.kubeconfig)]

    def selector() -> dict[str, str]:
        service = control_plane.get(f"/api/v1/namespaces/{k8s_namespace}/services/{NAME}")
        return service["spec"]["selector"]

    switched = invoke("bluegreen", "--image", NEW_IMAGE, "--json", *cluster_args)
    assert switched.exit_code == 0, switched.stderr
    assert check_success(("rollout", "bluegreen"), switched.stdout)["rollout"]["phase"] == \
        "switched"
    assert selector()[TRACK_LABEL] == "canary"
    green = deployment(control_plane, k8s_namespace, f"{NAME}-canary")
    assert (green["status"]["readyReplicas"], image_of(green)) == (2, NEW_IMAGE)
    assert deployment(control_plane, k8s_namespace, NAME)["spec"] == stable_before["spec"]

    status = mlship("rollout", "status", *cluster_args, cwd=tmp_path)
    assert status.code == 0
    assert "bluegreen rollout of" in status.stderr
    assert "switched" in \
        status.stderr

    undone = mlship("rollout", "undo", "--json", *cluster_args, cwd=tmp_path)
    assert undone.code == 0, undone.stderr
    document = check_success(("rollout", "undo"), undone.stdout)
    assert (document["undo"], document["rollout"]["phase"]) == ("abort", "aborted")
    assert TRACK_LABEL not in selector()
    assert deployment(control_plane, k8s_namespace, f"{NAME}-canary")["spec"]["replicas"] == 0
    assert deployment(control_plane, k8s_namespace, NAME)["spec"] == stable_before["spec"]

    promoted = invoke("bluegreen", "--image", NEW_IMAGE, "--promote", *cluster_args)
    assert promoted.exit_code == 0, promoted.stderr
    # What the cluster holds, not only what the command said (a claim retried on a stale
    # Deployment once left "promoting" behind).
    assert state_of(control_plane, k8s_namespace)["phase"] == "promoted"
    assert image_of(deployment(control_plane, k8s_namespace, NAME)) == NEW_IMAGE
    assert TRACK_LABEL not in selector()
    assert deployment(control_plane, k8s_namespace, f"{NAME}-canary")["spec"]["replicas"] == 0

    rolled_back = mlship("rollout", "undo", "--json", *cluster_args, cwd=tmp_path)
    assert rolled_back.code == 0, rolled_back.stderr
    document = check_success(("rollout", "undo"), rolled_back.stdout)
    assert (document["undo"], document["rollout"]["phase"]) == ("rollback", "undone"), \
        (document, rolled_back.stderr)
    control_plane.wait_rollout(k8s_namespace, NAME)
    assert image_of(deployment(control_plane, k8s_namespace, NAME)) == old_image


# ---- failures: each one line, a documented exit code ----------------------------------------


def test_canary_the_quota_refuses_is_aborted_at_once_naming_it(control_plane, k8s_namespace,
                                                              iris_model, tmp_path):
    """The canary's ReplicaSet cannot create pods: the rollout stops with the controller's
    reason (exit 8) as deploy does, instead of waiting out --timeout."""
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout_config("replicas"))
    deploy(control_plane, config)
    control_plane.apply({"apiVersion": "v1", "kind": "ResourceQuota",
                         "metadata": {"name": "two-pods", "namespace": k8s_namespace},
                         "spec": {"hard": {"pods": "2"}}})
    result = invoke("bluegreen", "--image", NEW_IMAGE, "--timeout", "120", "--json", "-c",
                    str(config), "--kubeconfig", str(control_plane.kubeconfig))
    assert result.exit_code == ExitCode.ROLLOUT, result.stderr
    message = check_failure(("rollout", "bluegreen"), result.stdout, ExitCode.ROLLOUT)[
        "error"]["message"]
    assert f"Deployment {k8s_namespace}/{NAME}-canary: FailedCreate: " in message
    assert "exceeded quota: two-pods" in message
    assert "rollout aborted" in message
    assert state_of(control_plane, k8s_namespace)["phase"] == "aborted"


def test_rbac_refusal_is_one_forbidden_line(control_plane, k8s_namespace, iris_model, tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout_config("replicas"))
    deploy(control_plane, config)
    viewer = control_plane.create_user("rollout-viewer")
    control_plane.bind_cluster_role("rollout-viewer", "view", namespace=k8s_namespace)
    args = ["-c", str(config), "--kubeconfig", str(viewer)]
    deadline = time.monotonic() + 20  # RBAC reaches the authorizer through an informer
    while invoke("status", *args).exit_code != 0:
        assert time.monotonic() < deadline, "view rights never arrived"
        time.sleep(0.2)
    result = invoke("bluegreen", "--image", NEW_IMAGE, "--json", *args)
    assert result.exit_code == ExitCode.CLUSTER, result.stderr
    message = check_failure(("rollout", "bluegreen"), result.stdout, ExitCode.CLUSTER)[
        "error"]["message"]
    assert message.startswith(f"updating Deployment {NAME}: forbidden")
    assert state_of(control_plane, k8s_namespace) is None


def test_prometheus_problems_stop_a_canary_before_it_starts(control_plane, k8s_namespace,
                                                            iris_model, tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout_config("replicas"))
    deploy(control_plane, config)
    args = ["-c", str(config), "--kubeconfig", str(control_plane.kubeconfig), "--json"]
    closed = invoke("canary", "--image", NEW_IMAGE, "--prometheus-url", "http://127.0.0.1:9",
                    *args)
    assert closed.exit_code == ExitCode.ROLLOUT, closed.stderr
    message = check_failure(("rollout", "canary"), closed.stdout, ExitCode.ROLLOUT)[
        "error"]["message"]
    assert message.startswith("cannot query Prometheus at http://127.0.0.1:9")
    unset = invoke("canary", "--image", NEW_IMAGE, *args)
    assert unset.exit_code == ExitCode.BAD_INPUT, unset.stderr
    assert "rollout.analysis.prometheus_url is not set" in unset.stderr
    assert state_of(control_plane, k8s_namespace) is None  # nothing was changed


def test_no_kubeconfig_is_one_cluster_line(tmp_path, iris_model, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    config = write_config(tmp_path, iris_model, "ns", {})
    result = invoke("status", "-c", str(config), "--kubeconfig", str(tmp_path / "absent"),
                    "--json")
    assert result.exit_code == ExitCode.CLUSTER
    check_failure(("rollout", "status"), result.stdout, ExitCode.CLUSTER)
    assert result.stderr.startswith(f"error: {tmp_path / 'absent'}: no such kubeconfig file")


def test_every_subcommand_fails_with_one_documented_error(control_plane, k8s_namespace,
                                                         iris_model, tmp_path):
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout_config("replicas"))
    deploy(control_plane, config)
    args = ["-c", str(config), "--kubeconfig", str(control_plane.kubeconfig), "--json"]
    cases = {
        ("ab",): (["--image", NEW_IMAGE], ExitCode.BAD_INPUT, "cannot route by header"),
        ("promote",): ([], ExitCode.ROLLOUT, f"no rollout of {k8s_namespace}/{NAME} to promote"),
        ("undo",): ([], ExitCode.ROLLOUT, "no revision before 1 to roll back to"),
        ("canary",): (["--image", NEW_IMAGE, "--steps", "50,10"], ExitCode.BAD_INPUT,
                      "--steps: '50,10' is invalid"),
        ("abort",): (["--kubeconfig", str(tmp_path / "gone")], ExitCode.CLUSTER,
                     "no such kubeconfig file"),
    }
    for (command,), (extra, code, fragment) in cases.items():
        result = invoke(command, *args, *extra)
        assert result.exit_code == code, (command, result.stderr)
        message = check_failure(("rollout", command), result.stdout, code)["error"]["message"]
        assert fragment in message, (command, message)
