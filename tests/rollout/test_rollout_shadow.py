"""`mlship rollout shadow` end to end: the real control plane holds the objects, a real
Prometheus scrapes two real runtimes on loopback standing in for the pods — the stable one,
mirroring to the shadow one as the stable's pods do once the rollout sets their mirroring
settings — and the verdict comes from the comparison counters the stable exports.

No live traffic: the rollout's own synthetic requests (from the model's input profile) go to
the stable and are mirrored like live ones. The shadow of another model (same signature, same
latency, no errors: only its answers differ) fails; the stable is untouched either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlship_contract import check_failure, check_success
from mlship_prometheus import PrometheusServer
from mlship_rollout import (
    NAME,
    NEW_IMAGE,
    Runtime,
    deploy,
    deployment,
    image_of,
    invoke,
    state_of,
    write_config,
)

from mlship.errors import ExitCode
from mlship.render.traffic import revision_of

pytestmark = [pytest.mark.k8s, pytest.mark.prometheus]
SHADOW_ENV = "MLSHIP_RUNTIME_SHADOW_URL"


def shifted_model(path: Path) -> Path:
    """The iris test model's signature (x [N,4] -> y [N,4]) and arithmetic, plus 1 on every
    output: as fast, never failing, answers off by far more than 1 %."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), "w")
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Add", ["r", "one"], ["y"])], "shifted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[w, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


@pytest.fixture
def pair(prometheus: PrometheusServer, iris_model: Path, k8s_namespace: str
         ) -> Iterator[Callable[[Path], Runtime]]:
    """start(shadow model) -> the stable runtime, mirroring to a shadow runtime; scraped."""
    started: list[Runtime] = []

    def start(shadow_model: Path) -> Runtime:
        shadow = Runtime(shadow_model, prometheus, "--track", "shadow", "--revision",
                         revision_of(k8s_namespace, NAME, NEW_IMAGE))
        stable = Runtime(iris_model, prometheus, "--track", "stable", "--shadow-url",
                         shadow.url, "--shadow-max-per-second", "100")
        started.extend([shadow, stable])
        prometheus.set_targets([stable.target, shadow.target])
        prometheus.wait_up(stable.target)
        return stable

    yield start
    prometheus.set_targets([])
    for runtime in started:
        runtime.stop()


def _config(tmp_path: Path, model: Path, namespace: str) -> Path:
    return write_config(tmp_path, model, namespace, {
        "analysis": {"synthetic_traffic": {"rps": 20}},
        "shadow": {"min_compared": 20, "timeout": "90s"}})


def _run(control_plane, prometheus, config: Path, stable: Runtime):
    return invoke("shadow", "--image", NEW_IMAGE, "-c", str(config), "--kubeconfig",
                  str(control_plane.kubeconfig), "--prometheus-url", prometheus.url,
                  "--traffic-url", stable.url, "--skip-checks", "--json")


def _assert_removed_and_untouched(control_plane, namespace: str, before: dict) -> None:
    after = deployment(control_plane, namespace, NAME)
    assert image_of(after) == image_of(before)
    env = {item["name"] for item in after["spec"]["template"]["spec"]["containers"][0]
           .get("env") or []}
    assert SHADOW_ENV not in env  # the mirroring settings are gone again
    assert deployment(control_plane, namespace, f"{NAME}-shadow") == {}
    assert control_plane.get(f"/api/v1/namespaces/{namespace}/services/{NAME}-shadow") is None
    policies = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
    for policy in (f"{NAME}-shadow", f"{NAME}-shadow-mirror"):
        assert control_plane.get(f"{policies}/{policy}") is None


def test_identical_model_passes(control_plane, k8s_namespace, prometheus, pair, iris_model,
                                tmp_path):
    config = _config(tmp_path, iris_model, k8s_namespace)
    before = deploy(control_plane, config)
    stable = pair(iris_model)
    result = _run(control_plane, prometheus, config, stable)
    assert result.exit_code == 0, result.stderr
    state = check_success(("rollout", "shadow"), result.stdout)["rollout"]
    assert (state["strategy"], state["phase"]) == ("shadow", "passed"), result.stderr
    events = {entry["event"]: entry for entry in state["history"]}
    service = control_plane.get(f"/api/v1/namespaces/{k8s_namespace}/services/{NAME}")
    port = service["spec"]["ports"][0]["port"]  # the shadow's Service has the app's ports
    assert events["mirroring"]["url"] == f"http://{NAME}-shadow.{k8s_namespace}.svc:{port}"
    # The shadow's objects, the mirror's path through the app's NetworkPolicy included.
    assert events["shadow_created"]["objects"] == [
        f"NetworkPolicy/{NAME}-shadow-mirror", f"NetworkPolicy/{NAME}-shadow",
        f"Service/{NAME}-shadow", f"Deployment/{NAME}-shadow"]
    values = events["comparison"]["values"]
    assert events["comparison"]["status"] == "pass"
    assert values["compared"]["y"] >= 20
    assert values["disagreed"]["y"] == 0
    assert "synthetic requests to " + stable.url in result.stderr
    _assert_removed_and_untouched(control_plane, k8s_namespace, before)
    assert state_of(control_plane, k8s_namespace)["phase"] == "passed"


def test_model_answering_otherwise_fails_and_is_removed(control_plane, k8s_namespace,
                                                        prometheus, pair, iris_model,
                                                        tmp_path):
    config = _config(tmp_path, iris_model, k8s_namespace)
    before = deploy(control_plane, config)
    stable = pair(shifted_model(tmp_path / "shifted.onnx"))
    result = _run(control_plane, prometheus, config, stable)
    assert result.exit_code == ExitCode.ROLLOUT, result.stderr
    error = check_failure(("rollout", "shadow"), result.stdout, ExitCode.ROLLOUT)["error"]
    assert "output 'y':" in error["message"]
    assert "compared requests disagreed" in error["message"]
    assert "max_disagreement 0.0%" in error["message"]
    state = state_of(control_plane, k8s_namespace)
    assert (state["strategy"], state["phase"]) == ("shadow", "aborted")
    comparison = next(e for e in state["history"] if e["event"] == "comparison")
    values = comparison["values"]  # increase() over the same scrapes: every one disagreed
    assert values["compared"]["y"] >= 20
    assert values["disagreed"]["y"] == pytest.approx(values["compared"]["y"], rel=0.05)
    _assert_removed_and_untouched(control_plane, k8s_namespace, before)
    # The shadow's own answers were all 200: only their values differ.
    codes = prometheus.query('sum by (code) (mlship_requests_total{track="shadow",'
                             'endpoint="infer"})')
    assert {item["metric"]["code"] for item in codes} == {"200"}, json.dumps(codes)


def test_promote_on_pass_continues_into_the_canary(control_plane, k8s_namespace, prometheus,
                                                   iris_model, tmp_path):
    """Live traffic only: the stable mirrors it to the shadow; once the shadow passes, the
    canary of the same image takes its steps under the same load and is promoted."""
    from mlship_rollout import SplitLoad, canary_share

    rollout = {"traffic": "istio", "steps": [50, 100], "interval": "2s",
               "analysis": {"window": "5s", "min_requests": 8, "max_inconclusive": 4},
               "shadow": {"min_compared": 20, "timeout": "90s"}}
    config = write_config(tmp_path, iris_model, k8s_namespace, rollout)
    deploy(control_plane, config)
    revision = revision_of(k8s_namespace, NAME, NEW_IMAGE)
    shadow = Runtime(iris_model, prometheus, "--track", "shadow", "--revision", revision)
    stable = Runtime(iris_model, prometheus, "--track", "stable", "--shadow-url", shadow.url,
                     "--shadow-max-per-second", "100")
    canary = Runtime(iris_model, prometheus, "--track", "canary", "--revision", revision)
    runtimes = [shadow, stable, canary]
    try:
        prometheus.set_targets([r.target for r in runtimes])
        for runtime in runtimes:
            prometheus.wait_up(runtime.target)
        share = lambda: canary_share(control_plane, k8s_namespace, "istio")  # noqa: E731
        with SplitLoad(stable, canary, share) as load:
            result = invoke("shadow", "--image", NEW_IMAGE, "--promote-on-pass", "-c",
                            str(config), "--kubeconfig", str(control_plane.kubeconfig),
                            "--prometheus-url", prometheus.url, "--skip-checks", "--json")
        assert result.exit_code == 0, result.stderr
        # Every live request answered, while mirrored and while the stable restarted twice
        # (its mirroring settings set and removed: here only in the API server).
        assert {code for (_, code) in load.codes} == {200}, load.codes
        assert load.count("stable") > 0
        state = check_success(("rollout", "shadow"), result.stdout)["rollout"]
        assert (state["strategy"], state["phase"]) == ("canary", "promoted"), result.stderr
        assert image_of(deployment(control_plane, k8s_namespace, NAME)) == NEW_IMAGE
        assert deployment(control_plane, k8s_namespace, f"{NAME}-shadow") == {}
        assert "shadow passed" in result.stderr
        shadow_event = next(e for e in state["history"] if e["event"] == "shadow")
        assert shadow_event["status"] == "pass"
        assert shadow_event["values"]["compared"]["y"] >= 20
    finally:
        prometheus.set_targets([])
        for runtime in runtimes:
            runtime.stop()
