"""Sections of ``mlship.yaml`` that only the Kubernetes stage reads.

Defaults are the hardened choice (NetworkPolicy on, PodDisruptionBudget on, spread over zones
and nodes); a section is switched off explicitly, never forgotten.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mlship.config.fields import (
    Cron,
    DnsLabel,
    EnvName,
    FieldProblem,
    LabelKey,
    Labels,
    LabelValue,
    PrometheusDuration,
    Release,
    ResourceName,
    RoleArn,
    SecretMountPath,
    Section,
)
from mlship.config.paths import overlaps


class NamespaceSettings(Section):
    name: DnsLabel = Field("mlship", description="Namespace of every object.")
    create: bool = Field(True, description="Render the Namespace, labelled for Pod Security "
                                           "Standards 'restricted'.")


class Toleration(Section):
    key: LabelKey = Field(..., description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] = Field("Exists", description="Match any value, or "
                                                                     "exactly value.")
    value: LabelValue | None = Field(None, description="Taint value under operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        "NoSchedule", description="Taint effect; null tolerates every effect.")

    @model_validator(mode="after")
    def _value_with_equal(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise FieldProblem("value", self.value, "must be empty under operator Exists "
                                                    "(Kubernetes refuses it); use Equal")
        return self


class GpuSettings(Section):
    enabled: bool = Field(False, description="Schedule on GPU nodes and use the CUDA provider.")
    count: int = Field(1, ge=1, description="GPUs per pod.")
    resource: ResourceName = Field("nvidia.com/gpu", description="Extended resource name.")
    onnxruntime_gpu_version: Release = Field(
        "1.26.0",
        description="onnxruntime-gpu release of the GPU lock (runtime/requirements-gpu.lock; "
                    "1.26 means its newest 1.26.x); the base image must have the CUDA and "
                    "cuDNN majors its wheel requires (1.26: CUDA 12, 1.27 on: CUDA 13).")
    node_selector: Labels = Field({}, description="Extra nodeSelector for GPU nodes.")
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu")],
        description="Tolerations for tainted GPU nodes.")


class StartupProbe(Section):
    period_s: int = Field(5, ge=1, description="Seconds between startup checks.")
    budget_s: int | None = Field(None, ge=1, description="Longest allowed model load; None "
                                 "derives it from the model size (and download).")


class HealthProbe(Section):
    period_s: int = Field(10, ge=1, description="Seconds between checks.")
    timeout_s: int = Field(2, ge=1, description="Seconds one check may take.")
    failure_threshold: int = Field(3, ge=1, description="Failures in a row that count.")


class ProbeSettings(Section):
    startup: StartupProbe = Field(default_factory=StartupProbe)
    readiness: HealthProbe = Field(default_factory=lambda: HealthProbe(period_s=5))
    liveness: HealthProbe = Field(default_factory=HealthProbe)


class AutoscalingSettings(Section):
    enabled: bool = Field(False, description="Render a HorizontalPodAutoscaler (autoscaling/v2).")
    min_replicas: int = Field(2, ge=1, description="Fewest pods the autoscaler keeps.")
    max_replicas: int = Field(10, ge=1, description="Most pods the autoscaler makes.")
    target_cpu_percent: int = Field(70, ge=1, le=100, description="Average CPU utilisation "
                                                                  "of requests to aim for.")
    queue_depth_target: float | None = Field(
        None, gt=0, description="Average mlship_queue_depth per pod (Prometheus adapter).")
    p99_latency_ms_target: float | None = Field(
        None, gt=0, description="Average p99 latency per pod, as the Pods metric "
                                "mlship_request_duration_seconds_p99 (Prometheus adapter).")
    scale_down_stabilization_s: int = Field(300, ge=0, description="Seconds of lower load "
                                            "before scaling down (avoids flapping).")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSettings:
        if self.max_replicas < self.min_replicas:
            raise FieldProblem("max_replicas", self.max_replicas,
                               f"must be >= min_replicas ({self.min_replicas})")
        return self


class ServiceSettings(Section):
    type: Literal["ClusterIP", "LoadBalancer", "NodePort"] = Field(
        "ClusterIP", description="Service type; LoadBalancer or NodePort exposes the model "
                               "outside, and the NetworkPolicy then admits any source.")
    port: int = Field(80, ge=1, le=65535, description="Port of the Service.")


class NetworkPolicySettings(Section):
    enabled: bool = Field(True, description="Render a default-deny NetworkPolicy that opens "
                                            "only what the model needs.")
    allow_same_namespace: bool = Field(True, description="Pods of the same namespace may call "
                                                         "the model.")
    allow_namespaces: list[Labels] = Field(
        [], description="namespaceSelector matchLabels allowed to call the model.")
    allow_pods: list[Labels] = Field(
        [], description="podSelector matchLabels (same namespace) allowed to call the model.")
    prometheus_namespace: DnsLabel | None = Field(
        "monitoring", description="Namespace whose pods may scrape /metrics; None for none.")
    kserve_ingress_namespaces: list[DnsLabel] = Field(
        ["knative-serving", "istio-system"],
        description="Under --target kserve: namespaces of KServe's ingress (Knative activator, "
                    "Istio gateway) allowed to call the model.")


# The one label that names a namespace: the only namespace selector Istio can also express.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class MeshSettings(Section):
    type: Literal["none", "istio"] = Field(
        "none", description="Service mesh the pods join: istio adds the sidecar, a "
                            "PeerAuthentication (mTLS STRICT) and an AuthorizationPolicy "
                            "admitting exactly network_policy's callers (docs/security.md).")
    control_plane_namespace: DnsLabel = Field(
        "istio-system", description="Namespace of istiod, which the sidecars' egress rule "
                                    "reaches for their configuration and certificates.")

    def check_callers(self, policy: NetworkPolicySettings) -> None:
        """An AuthorizationPolicy names namespaces, not label selectors: under a mesh every
        caller must be one both policies can express, or the two would admit different pods."""
        if self.type == "none":
            return
        for index, labels in enumerate(policy.allow_namespaces):
            if set(labels) != {NAMESPACE_NAME_LABEL}:
                raise FieldProblem(f"network_policy.allow_namespaces.{index}", labels,
                                   f"must be {{{NAMESPACE_NAME_LABEL}: NAME}} under mesh.type "
                                   f"{self.type}: its AuthorizationPolicy matches namespaces "
                                   "by name, not by labels")
        if policy.allow_pods:
            raise FieldProblem("network_policy.allow_pods", policy.allow_pods[0],
                               f"cannot be used under mesh.type {self.type}: its "
                               "AuthorizationPolicy cannot select pods by label; admit their "
                               "namespace in allow_namespaces (or the same namespace)")


class DisruptionBudgetSettings(Section):
    enabled: bool = Field(True, description="Render a PodDisruptionBudget.")
    max_unavailable: int = Field(1, ge=0, description="Pods a voluntary disruption may take.")


class TopologySpreadSettings(Section):
    enabled: bool = Field(True, description="Spread pods over zones and nodes.")
    max_skew: int = Field(1, ge=1, description="Largest allowed pod-count difference.")
    keys: list[LabelKey] = Field(["topology.kubernetes.io/zone", "kubernetes.io/hostname"],
                            description="Node labels to spread over, one constraint each.")
    when_unsatisfiable: Literal["ScheduleAnyway", "DoNotSchedule"] = Field(
        "ScheduleAnyway", description="Prefer spreading (ScheduleAnyway) or require it.")


class MonitoringSettings(Section):
    service_monitor: bool = Field(False, description="monitoring.coreos.com/v1 ServiceMonitor.")
    prometheus_rule: bool = Field(False, description="Error-rate and latency alerts.")
    dashboard: Literal["none", "configmap", "file"] = Field(
        "none", description="Grafana dashboard as a sidecar-discovered ConfigMap or a JSON file.")
    scrape_interval: PrometheusDuration = Field("30s",
                                 description="How often Prometheus scrapes /metrics.")
    error_rate_threshold: float = Field(0.05, gt=0, le=1, description="5xx share that alerts.")
    p99_latency_ms: float = Field(500.0, gt=0, description="p99 latency that alerts.")


class ServiceAccountSettings(Section):
    role_arn: RoleArn | None = Field(None, description="eks.amazonaws.com/role-arn (IRSA).")
    annotations: dict[LabelKey, str] = Field({}, description="Extra ServiceAccount "
                                             "annotations.")


class SecretMount(Section):
    name: DnsLabel = Field(..., description="Secret name (never its values).")
    mount_path: SecretMountPath = Field(..., description="Read-only mount directory: "
                                        "absolute, outside the image's own paths.")


class BatchSettings(Section):
    enabled: bool = Field(False, description="Render a CronJob running batch inference.")
    schedule: Cron = Field("0 2 * * *", description="Cron schedule (five fields, or @daily "
                           "and the like).")
    input: str = Field("", description="Input URI or path given to the batch runner.")
    output: str = Field("", description="Output URI or path.")
    concurrency_policy: Literal["Forbid", "Replace", "Allow"] = Field(
        "Forbid", description="What a run does when the previous one still runs.")
    backoff_limit: int = Field(2, ge=0, description="Retries of a failed run.")
    active_deadline_s: int = Field(3600, ge=1, description="Longest a run may take.")

    @model_validator(mode="after")
    def _paths(self) -> BatchSettings:
        for key in ("input", "output"):
            if self.enabled and not getattr(self, key):
                raise FieldProblem(key, "", "must be set when batch.enabled is true")
        return self


class EnvSettings(Section):
    vars: dict[EnvName, str] = Field({}, description="Plain environment variables.")
    config_maps: list[DnsLabel] = Field([], description="ConfigMaps loaded with envFrom.")
    secrets: list[SecretMount] = Field([], description="Secrets mounted as read-only files.")

    @model_validator(mode="after")
    def _distinct_mounts(self) -> EnvSettings:
        for index, secret in enumerate(self.secrets):
            for other in self.secrets[:index]:
                if overlaps(secret.mount_path, other.mount_path):
                    raise FieldProblem(f"secrets.{index}.mount_path", secret.mount_path,
                                       f"overlaps the mount of secret {other.name} "
                                       f"({other.mount_path}); give each its own directory")
        return self
