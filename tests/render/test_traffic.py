"""The pure parts of rollouts: the rollout section, traffic objects, replica split, state."""

from __future__ import annotations

import pytest

from mlship.config.load import validate_config
from mlship.config.rollout import HeaderMatch, RolloutSettings, duration_s
from mlship.errors import ConfigError, RolloutError
from mlship.render.traffic import (
    canary_deployment,
    canary_replicas,
    effective_weight,
    gateway_rules,
    http_route,
    istio_http,
    revision_of,
    virtual_service,
)
from mlship.rollout.state import RolloutState


def _config(rollout: dict) -> object:
    return validate_config({"name": "iris", "model": {"source": "iris.onnx"},
                            "rollout": rollout})


def test_defaults_are_flaggers() -> None:
    settings = RolloutSettings()
    assert (settings.traffic, settings.steps, settings.interval_s) == ("replicas",
                                                                       [10, 25, 50, 100], 60.0)
    assert (settings.analysis.success_rate_min, settings.analysis.p99_ms_max) == (0.99, 500.0)


@pytest.mark.parametrize(("rollout", "fragment"), [
    ({"steps": [50, 25]}, "steps must increase"),
    ({"steps": [0, 50]}, "percentage 1..100"),
    ({"steps": [10, 101]}, "percentage 1..100"),
    ({"interval": "soon"}, "rollout.interval"),
    ({"analysis": {"window": "90"}}, "rollout.analysis.window"),
    ({"analysis": {"success_rate_min": 1.5}}, "rollout.analysis.success_rate_min"),
    ({"ab_match": [{"name": "x-canary", "value": "1"}]}, "needs traffic 'istio' or 'gateway'"),
    ({"traffic": "linkerd"}, "rollout.traffic"),
])
def test_bad_rollout_settings_are_one_line(rollout: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(rollout)
    assert fragment in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("1.5m", 90), ("500ms", 0.5),
                                               ("2h", 7200)])
def test_durations(text: str, seconds: float) -> None:
    assert duration_s(text) == seconds


def test_istio_route_splits_by_weight_and_matches_headers() -> None:
    match = HeaderMatch(name="X-Canary", value="yes")
    routes = istio_http("iris", "prod", 80, 25, [match])
    assert routes[0] == {"name": "ab", "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
                         "route": [{"destination": {
                             "host": "iris-canary.prod.svc.cluster.local",
                             "port": {"number": 80}}, "weight": 100}]}
    weights = [(d["destination"]["host"].split(".")[0], d["weight"]) for d in routes[1]["route"]]
    assert weights == [("iris-stable", 75), ("iris-canary", 25)]
    rendered = virtual_service("iris", "prod", {}, 80, RolloutSettings(traffic="istio"))
    assert rendered["spec"]["hosts"] == ["iris"]
    assert "gateways" not in rendered["spec"]
    assert rendered["spec"]["http"] == istio_http("iris", "prod", 80, 0)


def test_gateway_route_defaults_to_the_services_own_mesh_route() -> None:
    rules = gateway_rules("iris", 80, 10, [HeaderMatch(name="x-v", value="^2", type="regex")])
    assert rules[0]["matches"] == [{"headers": [{"type": "RegularExpression", "name": "x-v",
                                                 "value": "^2"}]}]
    assert [(ref["name"], ref["weight"]) for ref in rules[1]["backendRefs"]] == [
        ("iris-stable", 90), ("iris-canary", 10)]
    route = http_route("iris", "prod", {}, 80, RolloutSettings(traffic="gateway"))
    assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "iris",
                                            "port": 80}]


@pytest.mark.parametrize(("traffic", "stable", "weight", "canary", "effective"), [
    ("istio", 4, 10, 1, 10.0),
    ("istio", 4, 50, 2, 50.0),
    ("istio", 4, 100, 4, 100.0),
    ("gateway", 1, 0, 1, 0.0),  # A/B: one pod for the header-matched requests
    ("replicas", 2, 10, 1, 33.3),  # two stable pods cannot give 10 %: say what it is
    ("replicas", 9, 10, 1, 10.0),
    ("replicas", 4, 50, 4, 50.0),
    ("replicas", 4, 75, 4, 50.0),  # at most as many as the stable, then 100 % switches
    ("replicas", 4, 100, 4, 100.0),
])
def test_canary_replicas_and_the_share_they_give(traffic: str, stable: int, weight: int,
                                                 canary: int, effective: float) -> None:
    assert canary_replicas(traffic, stable, weight) == canary
    assert effective_weight(traffic, stable, canary, weight) == effective


def test_canary_deployment_is_the_stable_template_with_its_own_track_and_labels() -> None:
    stable = {
        "metadata": {"name": "iris", "namespace": "prod", "labels": {"app": "iris"},
                     "resourceVersion": "7", "uid": "x"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "iris"}},
                 "strategy": {"type": "RollingUpdate"},
                 "template": {"metadata": {"labels": {"app": "iris", "mlship.dev/track":
                                                      "stable"}},
                              "spec": {"containers": [
                                  {"name": "sidecar", "image": "proxy:1"},
                                  {"name": "model", "image": "iris:1",
                                   "env": [{"name": "MLSHIP_RUNTIME_TRACK", "value": "x"},
                                           {"name": "KEEP", "value": "1"}]}]}}},
    }
    canary = canary_deployment(stable, "iris:2", "abc", 1)
    assert canary["metadata"]["name"] == "iris-canary"
    assert "resourceVersion" not in canary["metadata"]
    assert canary["spec"]["selector"]["matchLabels"] == {"app": "iris",
                                                         "mlship.dev/track": "canary"}
    assert canary["spec"]["template"]["metadata"]["labels"]["mlship.dev/track"] == "canary"
    sidecar, model = canary["spec"]["template"]["spec"]["containers"]
    assert (sidecar["image"], model["image"]) == ("proxy:1", "iris:2")
    # What render gives: a local image (no registry) is never pulled, a tag in a registry is
    # re-checked, a digest is kept.
    assert model["imagePullPolicy"] == "IfNotPresent"
    pulled = canary_deployment(stable, "registry.example.com/iris:2", "abc", 1)
    assert pulled["spec"]["template"]["spec"]["containers"][1]["imagePullPolicy"] == "Always"
    pinned = canary_deployment(stable, f"registry.example.com/iris@sha256:{'a' * 64}", "abc",
                               1)
    assert pinned["spec"]["template"]["spec"]["containers"][1]["imagePullPolicy"] == \
        "IfNotPresent"
    assert model["env"] == [{"name": "KEEP", "value": "1"},
                            {"name": "MLSHIP_RUNTIME_TRACK", "value": "canary"},
                            {"name": "MLSHIP_RUNTIME_REVISION", "value": "abc"}]
    # the stable object is not modified in place
    assert stable["spec"]["template"]["metadata"]["labels"]["mlship.dev/track"] == "stable"


def test_revision_differs_by_namespace_app_and_image() -> None:
    base = revision_of("prod", "iris", "iris:2")
    assert len(base) == 10
    assert len({base, revision_of("staging", "iris", "iris:2"),
                revision_of("prod", "wine", "iris:2"), revision_of("prod", "iris", "iris:3")}) == 4


def test_state_round_trips_through_its_annotation_and_rejects_junk() -> None:
    state = RolloutState(strategy="canary", phase="progressing", image="iris:2",
                         stable_image="iris:1", revision="abc", traffic="istio",
                         steps=[10, 100], stable_replicas=2, owner="host/1/x")
    state.record("started")
    again = RolloutState.from_annotation(state.to_annotation(), "Deployment prod/iris")
    assert again == state
    assert again.active
    with pytest.raises(RolloutError, match=r"Deployment prod/iris: annotation mlship\.dev/rollout"):
        RolloutState.from_annotation("{not json", "Deployment prod/iris")


# ---- a bandit's N arms ------------------------------------------------------------------------


def test_bandit_arms_reuse_the_rendered_services_then_get_their_own() -> None:
    from mlship.render.traffic import arm_service, arm_track

    assert [arm_track(i) for i in range(4)] == ["stable", "canary", "canary-2", "canary-3"]
    assert [arm_service("iris", i) for i in range(3)] == ["iris-stable", "iris-canary",
                                                          "iris-canary-2"]


def test_routes_carry_one_weighted_backend_per_arm() -> None:
    backends = [("iris-stable", 20), ("iris-canary", 50), ("iris-canary-2", 30)]
    primary = istio_http("iris", "prod", 80, 0, backends=backends)[-1]["route"]
    assert [(r["destination"]["host"], r["weight"]) for r in primary] == [
        ("iris-stable.prod.svc.cluster.local", 20), ("iris-canary.prod.svc.cluster.local", 50),
        ("iris-canary-2.prod.svc.cluster.local", 30)]
    refs = gateway_rules("iris", 80, 0, backends=backends)[-1]["backendRefs"]
    assert [(ref["name"], ref["weight"]) for ref in refs] == [(n, w) for n, w in backends]
    # without backends: the canary split, unchanged
    assert [r["weight"] for r in istio_http("iris", "prod", 80, 25)[-1]["route"]] == [75, 25]


def test_a_third_arm_gets_its_own_deployment_and_service() -> None:
    from mlship.render.traffic import arm_service_object

    stable = {"metadata": {"name": "iris", "namespace": "prod", "labels": {"app": "iris"}},
              "spec": {"selector": {"matchLabels": {"app": "iris"}},
                       "template": {"metadata": {"labels": {"app": "iris"}},
                                    "spec": {"containers": [{"name": "model",
                                                             "image": "iris:1"}]}}}}
    third = canary_deployment(stable, "iris:3", "rev3", 1, track="canary-2")
    assert third["metadata"]["name"] == "iris-canary-2"
    assert third["spec"]["selector"]["matchLabels"]["mlship.dev/track"] == "canary-2"
    assert {"name": "MLSHIP_RUNTIME_TRACK", "value": "canary-2"} in \
        third["spec"]["template"]["spec"]["containers"][0]["env"]
    canary_service = {"metadata": {"name": "iris-canary", "namespace": "prod",
                                   "labels": {"app": "iris", "mlship.dev/track": "canary"},
                                   "resourceVersion": "9"},
                      "spec": {"selector": {"app": "iris", "mlship.dev/track": "canary"},
                               "clusterIP": "10.0.0.9",
                               "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                                          "targetPort": "http"}]}}
    service = arm_service_object(canary_service, "iris", 2)
    assert service["metadata"] == {"name": "iris-canary-2", "namespace": "prod",
                                   "labels": {"app": "iris", "mlship.dev/track": "canary-2"}}
    assert service["spec"]["selector"] == {"app": "iris", "mlship.dev/track": "canary-2"}
    assert "clusterIP" not in service["spec"]  # a new Service gets its own


def test_bandit_queries_tell_the_arms_apart() -> None:
    from mlship.config.rollout import AnalysisSettings
    from mlship.rollout.analysis import arm_queries

    stable = arm_queries("iris", "stable", "", AnalysisSettings())
    arm = arm_queries("iris", "canary-2", "abc", AnalysisSettings())
    assert 'track!~"canary.*"' in stable["requests"]
    assert 'track="canary-2",revision="abc"' in arm["requests"]
    assert 'code!~"5..|422"' in arm["ok"]
    assert arm["seconds"].startswith("sum(mlship_request_duration_seconds_sum{")
