"""The ``rollout:`` section of ``mlship.yaml``: how traffic moves to a new image, and when to stop.

Defaults follow Flagger's: steps of 10, 25, 50 and 100 % one minute apart, each gated by the
canary's success rate (>= 99 %) and p99 latency (<= 500 ms) over the last minute, as the
runtime's own metrics report them through Prometheus. ``mlship rollout`` reads this section;
``mlship render`` reads ``traffic`` to emit the Services and route that Istio or Gateway API
weights need.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mlship.config.fields import (
    ApiGroup,
    DnsLabel,
    DnsSubdomain,
    Duration,
    FieldProblem,
    HeaderName,
    Hostname,
    IstioGateway,
    IstioHost,
    Kind,
    PrometheusDuration,
    PrometheusLabel,
    Section,
    Url,
)
from mlship.config.grammar import DURATION
from mlship.config.prometheus import PrometheusAccess
from mlship.config.shadow import ShadowSettings

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Named so the rollout state, which stores a bandit's choice of them, takes the same values.
Algorithm = Literal["thompson", "epsilon_greedy"]
Reward = Literal["success_rate", "latency", "success_rate_and_latency", "custom"]


def duration_s(text: str) -> float:
    """``"90s"`` -> 90.0, ``"1.5m"`` -> 90.0, ``"500ms"`` -> 0.5."""
    match = DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 30s, 1m, 500ms)")
    return float(match["number"]) * _UNIT_S[match["unit"]]


def _check_regex(key: str, pattern: str) -> None:
    import re
    import warnings

    try:
        with warnings.catch_warnings():  # "possible nested set" and the like: still a regex
            warnings.simplefilter("ignore")
            re.compile(pattern)
    except re.error as err:
        raise FieldProblem(key, pattern, f"must be a regular expression ({err})") from None


class IstioSettings(Section):
    hosts: list[IstioHost] = Field([], description="VirtualService hosts; empty means the "
                                   "Service name (mesh traffic inside the cluster).")
    gateways: list[IstioGateway] = Field([], description="Istio Gateways the VirtualService "
                                         "binds to (add 'mesh' to keep in-cluster traffic "
                                         "too).")


class ParentRef(Section):
    name: DnsSubdomain = Field(..., description="Gateway (or Service) name.")
    namespace: DnsLabel | None = Field(None, description="Its namespace; None means the "
                                       "model's.")
    kind: Kind = Field("Gateway", description="Gateway, or Service for a mesh (GAMMA) route.")
    group: ApiGroup = Field("gateway.networking.k8s.io", description="'' for kind Service.")
    section_name: DnsSubdomain | None = Field(None, description="Listener name on the "
                                              "Gateway.")


class GatewaySettings(Section):
    parent_refs: list[ParentRef] = Field(
        [], description="Where the HTTPRoute attaches; empty means the model's own Service "
                        "(a GAMMA mesh route for in-cluster traffic).")
    hostnames: list[Hostname] = Field([], description="HTTPRoute hostnames; empty matches "
                                      "all.")


class HeaderMatch(Section):
    name: HeaderName = Field(..., description="HTTP header name.")
    value: str = Field(..., min_length=1, description="Value to match.")
    type: Literal["exact", "regex"] = Field("exact", description="Exact or regex match.")

    @model_validator(mode="after")
    def _regex(self) -> HeaderMatch:
        if self.type == "regex":
            _check_regex("value", self.value)
        return self


class SyntheticTraffic(Section):
    enabled: bool = Field(False, description="Send requests generated from the model's "
                                             "signature when live traffic is below "
                                             "min_requests (needs url or --traffic-url).")
    url: Url | None = Field(None, description="Base URL reaching the canary from where mlship "
                                              "runs, e.g. a port-forward to the canary.")
    rps: float = Field(5.0, gt=0, le=1000, description="Synthetic requests per second at most.")


class AnalysisSettings(Section):
    prometheus_url: Url | None = Field(
        None, description="Prometheus HTTP API base URL (e.g. http://prometheus.monitoring:9090"
                          " via a port-forward); also --prometheus-url.")
    prometheus: PrometheusAccess = Field(default_factory=PrometheusAccess)
    success_rate_min: float = Field(0.99, ge=0, le=1, description="Lowest share of canary "
                                    "requests that must not fail (see failure_codes).")
    p99_ms_max: float = Field(500.0, gt=0, description="Highest p99 request latency of the "
                                                       "canary, in milliseconds.")
    min_requests: int = Field(20, ge=1, description="Fewest canary requests in the window for "
                                                    "a verdict; fewer is inconclusive.")
    window: PrometheusDuration = Field("1m", description="PromQL range of each query "
                                                         "(a Prometheus duration).")
    max_inconclusive: int = Field(3, ge=1, description="Inconclusive checks in a row (too few "
                                  "requests, no data) before the rollout is aborted.")
    failure_codes: str = Field("5..|422", min_length=1, description="Regex of HTTP codes that "
                               "count as failures (422: onnxruntime failed on the input).")
    selector: dict[PrometheusLabel, str] = Field({}, description="Extra label matchers for "
                                                 "every query, e.g. {namespace: prod}.")
    synthetic_traffic: SyntheticTraffic = Field(default_factory=SyntheticTraffic)

    @model_validator(mode="after")
    def _regex(self) -> AnalysisSettings:
        _check_regex("failure_codes", self.failure_codes)
        return self


class BlueGreenSettings(Section):
    auto_promote: bool = Field(False, description="Finish at once after the switch, instead of "
                               "keeping the old version for an instant `rollout undo`.")


class BanditSettings(Section):
    algorithm: Algorithm = Field(
        "thompson", description="Thompson sampling (shares = probability each version is the "
                                "best), or epsilon-greedy (the best running mean gets "
                                "1 - epsilon).")
    epsilon: float = Field(0.1, ge=0, le=1, description="Exploration share of epsilon_greedy.")
    interval: Duration | None = Field(None, description="Time between "
                                 "two weight updates; None means rollout.interval.")
    rounds: int = Field(10, ge=1, le=1000, description="Weight updates before the bandit "
                        "stops (phase paused, for `mlship rollout promote` or `abort`).")
    confidence: float | None = Field(0.95, gt=0.5, le=1, description="Stop earlier once one "
                                     "version is the best with this probability; None: never.")
    min_share: int = Field(5, ge=0, le=100, description="Lowest weight of any version, in %: "
                           "every version keeps being measured.")
    max_share: int = Field(95, ge=1, le=100, description="Highest weight of any version, in %.")
    reward: Reward = Field(
        "success_rate", description="What a version earns per interval: its success rate "
                                    "(see rollout.analysis.failure_codes), a latency score "
                                    "target / (target + mean latency), their product, or "
                                    "the value of `query` (higher is better).")
    latency_target_ms: float = Field(100.0, gt=0, description="Mean latency that scores 0.5 "
                                     "in the latency rewards.")
    query: str | None = Field(None, min_length=1, description="PromQL for reward custom: one "
                              "value per version per interval, {track} and {revision} "
                              "replaced by the version's labels.")
    min_requests: int = Field(5, ge=0, description="Fewest requests a version needs in an "
                              "interval for the interval to count as evidence.")
    seed: int | None = Field(None, description="Seed of the sampling, for reproducible "
                             "weights; None: a fresh one per run.")

    @property
    def kind(self) -> Literal["beta", "gaussian"]:
        """Success counts make a Beta posterior; any per-interval score a Gaussian one."""
        return "beta" if self.reward == "success_rate" else "gaussian"

    @model_validator(mode="after")
    def _check(self) -> BanditSettings:
        if self.min_share > self.max_share:
            raise FieldProblem("min_share", self.min_share, "must not exceed max_share")
        if self.min_share * 2 > 100:
            raise FieldProblem("min_share", self.min_share, "two versions at min_share "
                               "exceed 100 %")
        if (self.reward == "custom") != (self.query is not None):
            raise FieldProblem("query", self.query, "set query exactly when reward is custom")
        return self


class RolloutSettings(Section):
    traffic: Literal["replicas", "istio", "gateway"] = Field(
        "replicas", description="How the canary gets its share: replica ratio behind the "
                                "shared Service, Istio VirtualService weights, or Gateway API "
                                "HTTPRoute weights.")
    istio: IstioSettings = Field(default_factory=IstioSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    steps: list[int] = Field([10, 25, 50, 100], min_length=1, description="Canary traffic "
                             "percentages, increasing, each analysed before the next.")
    interval: Duration = Field("1m", description="Time at each step before its analysis.")
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    ab_match: list[HeaderMatch] = Field(
        [], description="Headers that send a request to the canary during `rollout ab` "
                        "(istio and gateway traffic only); all must match.")
    ab_iterations: int = Field(5, ge=1, description="Analysis checks of an A/B rollout.")
    bluegreen: BlueGreenSettings = Field(default_factory=BlueGreenSettings)
    bandit: BanditSettings = Field(default_factory=BanditSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)

    @property
    def interval_s(self) -> float:
        return duration_s(self.interval)

    @model_validator(mode="after")
    def _check(self) -> RolloutSettings:
        if any(not 0 < step <= 100 for step in self.steps):
            raise FieldProblem("steps", self.steps, "every step must be a percentage 1..100")
        if self.steps != sorted(set(self.steps)):
            raise FieldProblem("steps", self.steps, "steps must increase, without repeats")
        if self.ab_match and self.traffic == "replicas":
            raise FieldProblem("ab_match", "[...]", "header matching needs traffic 'istio' or "
                                                    "'gateway'; replicas cannot see headers")
        return self


def canary_name(name: str) -> str:
    """The canary Deployment and Service of app ``name``."""
    return f"{name}-canary"


def stable_service_name(name: str) -> str:
    return f"{name}-stable"
