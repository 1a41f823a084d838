"""The typed parts of the render context: what each optional object of the bundle needs.

Kubernetes API fragments (volumes, network rules, route specs) stay ``Manifest`` maps in the
API's own field names, printed by the ``to_yaml`` filter: they are data for the cluster, not
mlship's vocabulary. Everything mlship decides about them is a field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]  # a fragment in Kubernetes API field names


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    metrics: list[Manifest]
    scale_down_window_s: int


@dataclass(frozen=True)
class Claim:
    """A PersistentVolumeClaim the bundle creates for a model volume."""

    name: str
    spec: Manifest


@dataclass(frozen=True)
class Monitoring:
    error_summary: str
    latency_summary: str
    error_rate_expr: str
    latency_expr: str
    service_monitor: bool
    prometheus_rule: bool
    dashboard: str  # none | configmap | file
    scrape_interval: str
    error_rate_threshold: float
    p99_latency_s: float
    selector: str  # the PromQL label matchers of the app's series
    # gpu.enabled: pods serving on CPU (a GPU provider that did not load, fallback allowed).
    cpu_fallback_expr: str | None = None
    cpu_fallback_summary: str = ""


@dataclass(frozen=True)
class BatchJob:
    """The CronJob's settings; ``model_args`` name the main model when several are served."""

    schedule: str
    input: str
    output: str
    concurrency_policy: str
    backoff_limit: int
    active_deadline_s: int
    model_args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrafficObjects:
    """The per-track Services and the weighted route Istio or Gateway API rollouts patch."""

    kind: str  # istio | gateway
    stable_service: Manifest
    canary_service: Manifest
    route: Manifest


@dataclass(frozen=True)
class Drift:
    """The drift baseline ConfigMap, its mount, and the alert rules."""

    configmap: str
    baseline_key: str
    baseline_json: str
    baseline_sha256: str
    path: str
    volume: Manifest
    mount: Manifest
    group: str
    rules: list[Manifest]


@dataclass(frozen=True)
class MeshPolicies:
    """Istio security for the app's pods: mTLS STRICT and the callers' authorization rules
    (``mlship.render.callers``); the pod joins the mesh with its probes rewritten."""

    kind: str  # istio
    authorization_rules: list[Manifest]
    pod_labels: dict[str, str]
    pod_annotations: dict[str, str]
