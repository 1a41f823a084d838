"""Canary analysis: the runtime's own metrics, queried from Prometheus, against thresholds.

The canary's series carry ``track="canary"`` and ``revision="<rev>"`` (labels the runtime adds
from MLSHIP_RUNTIME_TRACK/REVISION, which the canary Deployment sets), so the queries need no
relabeling and never mix in the stable's requests or an earlier canary's. Only inference
endpoints count: probes and scrapes would otherwise dominate both rate and latency.

``evaluate`` is a pure function of the measured values; "no data" or fewer requests than
``min_requests`` is *inconclusive*, never a pass. Prometheus is reached through
``mlship.rollout.prometheus`` (one GET per query, with the configured credentials).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mlship.errors import RolloutError
from mlship.rollout.prometheus import Prometheus, _single_value

__all__ = ["Check", "Prometheus", "Verdict", "_single_value", "analyse", "arm_queries",
           "evaluate", "queries"]

if TYPE_CHECKING:
    from mlship.config.rollout import AnalysisSettings

INFERENCE_ENDPOINTS = "infer|predict"
Status = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Check:
    """One metric against its threshold; ``passed`` None when there was nothing to judge."""

    metric: str
    value: float | None
    threshold: float
    unit: str
    setting: str
    passed: bool | None

    def describe(self) -> str:
        """``success rate 52.0 % (threshold >= 99.0 %)``."""
        relation = ">=" if self.metric in ("success rate", "requests") else "<="
        return (f"{self.metric} {_show(self.value, self.unit)} (threshold {relation} "
                f"{_show(self.threshold, self.unit)}, rollout.analysis.{self.setting})")


@dataclass(frozen=True)
class Verdict:
    status: Status
    checks: list[Check]
    reason: str
    stable: dict[str, float | None] = field(default_factory=dict)
    query_ms: list[float] = field(default_factory=list)
    # Why there was nothing to judge: no-traffic, other-revision, not-scraped or no-answer.
    no_data: str | None = None

    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.passed is False]

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason,
                "checks": [asdict(check) for check in self.checks], "stable": self.stable,
                "query_ms": [round(ms, 1) for ms in self.query_ms], "no_data": self.no_data}


def _show(value: float | None, unit: str) -> str:
    if value is None:
        return "no data"
    if unit == "%":
        return f"{value * 100:.1f} %"
    if unit == "ms":
        return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"
    return f"{value:.0f}"


Matcher = tuple[str, str, str]  # (label, operator, value)


def _selector(matchers: list[Matcher]) -> str:
    # A JSON string literal is a valid PromQL one: quotes and backslashes come out escaped.
    return ",".join(f"{label}{op}{json.dumps(value)}" for label, op, value in matchers)


def queries(model: str | Sequence[str], revision: str,
            settings: AnalysisSettings) -> dict[str, str]:
    """PromQL for the canary (``requests``, ``success_rate``, ``p99_ms``) and, for context in
    reports only, the stable (``stable_success_rate``, ``stable_p99_ms``)."""
    window = settings.window
    base = _base(model, settings)

    def metrics_of(track: list[Matcher]) -> dict[str, str]:
        sel = _selector([*base, *track])
        ok = _selector([*base, *track, ("code", "!~", settings.failure_codes)])
        total = f"sum(rate(mlship_requests_total{{{sel}}}[{window}]))"
        return {
            "requests": f"sum(increase(mlship_requests_total{{{sel}}}[{window}]))",
            # `or vector(0)`: no successful series at all is a rate of 0, not "no data".
            "success_rate": f"(sum(rate(mlship_requests_total{{{ok}}}[{window}])) or vector(0))"
                            f" / {total}",
            "p99_ms": "histogram_quantile(0.99, sum by (le) (rate("
                      f"mlship_request_duration_seconds_bucket{{{sel}}}[{window}]))) * 1000",
        }

    canary = metrics_of([("track", "=", "canary"), ("revision", "=", revision)])
    stable = metrics_of([("track", "!=", "canary")])
    return {**canary, "stable_success_rate": stable["success_rate"],
            "stable_p99_ms": stable["p99_ms"]}


def _base(model: str | Sequence[str], settings: AnalysisSettings) -> list[Matcher]:
    """``model``: one V2 name, or every name one process serves (models and pipelines), whose
    requests together judge the version."""
    names = [model] if isinstance(model, str) else list(model)
    # Several names are DNS-1123 labels (mlship.config.repository): nothing to escape.
    matcher: Matcher = ("model", "=", names[0]) if len(names) == 1 else \
        ("model", "=~", "|".join(names))
    base: list[Matcher] = [matcher, ("endpoint", "=~", INFERENCE_ENDPOINTS)]
    return base + [(label, "=", value) for label, value in settings.selector.items()]


def arm_matchers(track: str, revision: str) -> list[Matcher]:
    """One bandit arm's series. The stable's pods set no track (or ``stable``), so it is
    everything that is not a canary track; the others carry their track and revision."""
    if track == "stable":
        return [("track", "!~", "canary.*")]
    return [("track", "=", track), ("revision", "=", revision)]


def arm_queries(model: str | Sequence[str], track: str, revision: str,
                settings: AnalysisSettings) -> dict[str, str]:
    """Cumulative counters of one bandit arm: ``requests``, ``ok`` (not failure_codes),
    ``seconds`` and ``timed`` (sum and count of request durations). A bandit takes their
    differences between two rounds, so every request counts in exactly one interval, however
    the interval and the scrapes line up (a ``rate`` window would count some twice)."""
    sel = _selector([*_base(model, settings), *arm_matchers(track, revision)])
    ok = _selector([*_base(model, settings), *arm_matchers(track, revision),
                    ("code", "!~", settings.failure_codes)])
    return {"requests": f"sum(mlship_requests_total{{{sel}}})",
            "ok": f"sum(mlship_requests_total{{{ok}}})",
            "seconds": f"sum(mlship_request_duration_seconds_sum{{{sel}}})",
            "timed": f"sum(mlship_request_duration_seconds_count{{{sel}}})"}


def evaluate(values: dict[str, float | None], settings: AnalysisSettings) -> Verdict:
    """The verdict on measured values (``requests``, ``success_rate``, ``p99_ms``)."""
    requests = values.get("requests")
    enough = requests is not None and requests >= settings.min_requests
    count = Check("requests", requests, float(settings.min_requests), "", "min_requests",
                  enough)
    rate, p99 = values.get("success_rate"), values.get("p99_ms")
    checks = [count,
              Check("success rate", rate, settings.success_rate_min, "%", "success_rate_min",
                    None if rate is None or not enough else rate >= settings.success_rate_min),
              Check("p99 latency", p99, settings.p99_ms_max, "ms", "p99_ms_max",
                    None if p99 is None or not enough else p99 <= settings.p99_ms_max)]
    stable = {"success_rate": values.get("stable_success_rate"),
              "p99_ms": values.get("stable_p99_ms")}
    if not enough:
        seen = "no canary requests" if not requests else f"{requests:.0f} canary requests"
        return Verdict("inconclusive", checks, f"too few requests to judge: {seen} in the last "
                       f"{settings.window}, rollout.analysis.min_requests is "
                       f"{settings.min_requests}", stable)
    failed = [check for check in checks if check.passed is False]
    if failed:
        return Verdict("fail", checks, "; ".join(check.describe() for check in failed), stable)
    if any(check.passed is None for check in checks):
        missing = ", ".join(check.metric for check in checks if check.passed is None)
        return Verdict("inconclusive", checks, f"no data for {missing}", stable)
    return Verdict("pass", checks, "; ".join(check.describe() for check in checks[1:]), stable)


def analyse(prometheus: Prometheus, model: str | Sequence[str], revision: str,
            settings: AnalysisSettings) -> Verdict:
    """Query every metric and judge; a failing query makes the check inconclusive."""
    values: dict[str, float | None] = {}
    timings: list[float] = []
    try:
        for key, promql in queries(model, revision, settings).items():
            values[key], elapsed = prometheus.query(promql)
            timings.append(elapsed)
    except RolloutError as err:
        verdict = evaluate({}, settings)
        return Verdict("inconclusive", verdict.checks, err.message, query_ms=timings,
                       no_data="no-answer")
    verdict = evaluate(values, settings)
    no_data, reason = None, verdict.reason
    if verdict.status == "inconclusive" and not values.get("requests"):
        no_data, why = diagnose_no_data(prometheus, model, revision, settings)
        reason = f"{reason}: {why}"
    return Verdict(verdict.status, verdict.checks, reason, verdict.stable, timings, no_data)


def diagnose_no_data(prometheus: Prometheus, model: str | Sequence[str], revision: str,
                     settings: AnalysisSettings) -> tuple[str, str]:
    """Why the canary shows no requests: every runtime exports ``mlship_ready`` with its track
    and revision from the moment it is scraped, requests or not, so its series tell a quiet
    canary from one Prometheus does not see, or sees under another revision."""
    base = [m for m in _base(model, settings) if m[0] != "endpoint"]
    mine = _selector([*base, ("track", "=", "canary"), ("revision", "=", revision)])
    try:
        if prometheus.label_values(f"mlship_ready{{{mine}}}", "revision"):
            return "no-traffic", ("the canary's pods are scraped but received no inference "
                                  "requests: no traffic reached them")
        others = prometheus.label_values(
            f"mlship_ready{{{_selector([*base, ('track', '=', 'canary')])}}}", "revision")
    except RolloutError as err:
        return "no-answer", err.message
    if others:
        return "other-revision", (f"Prometheus has canary series only with revision "
                                  f"{', '.join(others)}, not {revision}: an older canary's "
                                  "pods, or pods of another rollout")
    return "not-scraped", ("Prometheus has no series from the canary's pods: its scrape of them "
                           "fails or is not configured (check the ServiceMonitor, or the "
                           "scrape config's selector)")
