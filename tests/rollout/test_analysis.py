"""Canary verdicts from measured values, and the PromQL that measures them.

The end-to-end runs against a real Prometheus are in tests/rollout/test_rollout.py; these
pin the decision rules and the query text.
"""

from __future__ import annotations

import pytest

from mlship.config.rollout import AnalysisSettings
from mlship.errors import RolloutError
from mlship.rollout.analysis import Prometheus, _single_value, evaluate, queries

SETTINGS = AnalysisSettings(min_requests=20, window="1m")


def test_canary_queries_select_its_revision_and_inference_endpoints_only() -> None:
    promql = queries("iris", "0123456789", AnalysisSettings(selector={"namespace": "prod"}))
    selector = ('model="iris",endpoint=~"infer|predict",namespace="prod",track="canary",'
                'revision="0123456789"')
    assert promql["requests"] == f"sum(increase(mlship_requests_total{{{selector}}}[1m]))"
    assert promql["success_rate"] == (
        f'(sum(rate(mlship_requests_total{{{selector},code!~"5..|422"}}[1m])) or vector(0)) / '
        f"sum(rate(mlship_requests_total{{{selector}}}[1m]))")
    assert promql["p99_ms"] == (
        "histogram_quantile(0.99, sum by (le) (rate(mlship_request_duration_seconds_bucket"
        f"{{{selector}}}[1m]))) * 1000")
    assert 'track!="canary"' in promql["stable_success_rate"]
    assert "revision" not in promql["stable_p99_ms"]


def test_an_app_of_several_models_is_judged_on_the_requests_to_all_of_them() -> None:
    promql = queries(("search", "rank", "search-rank"), "r", AnalysisSettings())
    assert 'model=~"search|rank|search-rank",endpoint=~"infer|predict"' in promql["requests"]
    assert 'model=~"search|rank|search-rank"' in promql["stable_p99_ms"]


def test_label_values_are_escaped() -> None:
    promql = queries('a"b', "r", AnalysisSettings())
    assert 'model="a\\"b"' in promql["requests"]


def test_pass() -> None:
    verdict = evaluate({"requests": 240, "success_rate": 0.995, "p99_ms": 120}, SETTINGS)
    assert verdict.status == "pass"
    assert verdict.failed() == []


def test_low_success_rate_fails_naming_metric_value_and_threshold() -> None:
    verdict = evaluate({"requests": 240, "success_rate": 0.52, "p99_ms": 12}, SETTINGS)
    assert verdict.status == "fail"
    assert verdict.reason == ("success rate 52.0 % (threshold >= 99.0 %, "
                              "rollout.analysis.success_rate_min)")


def test_slow_p99_fails_and_both_failures_are_named() -> None:
    verdict = evaluate({"requests": 240, "success_rate": 0.5, "p99_ms": 812.4}, SETTINGS)
    assert verdict.status == "fail"
    assert [check.metric for check in verdict.failed()] == ["success rate", "p99 latency"]
    assert "p99 latency 812 ms (threshold <= 500 ms, rollout.analysis.p99_ms_max)" in \
        verdict.reason


@pytest.mark.parametrize(("values", "reason"), [
    ({}, "too few requests to judge: no canary requests in the last 1m"),
    ({"requests": 0.0}, "no canary requests"),
    ({"requests": 12.4, "success_rate": 0.1}, "12 canary requests in the last 1m, "
                                              "rollout.analysis.min_requests is 20"),
    ({"requests": 30, "success_rate": 1.0}, "no data for p99 latency"),
])
def test_no_data_or_too_little_is_inconclusive_never_a_pass(values: dict, reason: str) -> None:
    verdict = evaluate(values, SETTINGS)
    assert verdict.status == "inconclusive"
    assert reason in verdict.reason


def test_prometheus_values_nan_and_empty_are_no_data() -> None:
    assert _single_value({"resultType": "vector", "result": []}) is None
    assert _single_value({"resultType": "vector", "result": [{"value": [1, "NaN"]}]}) is None
    assert _single_value({"resultType": "vector", "result": [{"value": [1, "0.5"]}]}) == 0.5
    assert _single_value({"resultType": "scalar", "result": [1, "+Inf"]}) is None


def test_unreachable_prometheus_is_one_line_with_a_hint() -> None:
    with pytest.raises(RolloutError) as caught:
        Prometheus("http://127.0.0.1:9", timeout_s=2).check()
    assert caught.value.message.startswith("cannot query Prometheus at http://127.0.0.1:9: ")
    assert "--prometheus-url" in (caught.value.hint or "")
