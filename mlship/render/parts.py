"""Pieces of the render context that carry policy: volumes, network rules, autoscaling,
monitoring and the objects weighted rollouts need.

Kubernetes fragments come back in the API's field names (``specs.Manifest``), so templates
print them with the ``to_yaml`` filter instead of branching; mlship's own decisions come back
as the typed specs of ``mlship.render.specs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlship.config.paths import TMP_DIR
from mlship.config.quantities import mebibytes
from mlship.render.callers import Callers, authorization_rules, network_ingress
from mlship.render.specs import Autoscaling, MeshPolicies, Monitoring, TrafficObjects
from mlship.render.storage import storage_volumes, uses_gcs, uses_s3, workload_identity

if TYPE_CHECKING:
    from mlship.config.schema import MlshipConfig

DNS_PORT = 53
ISTIOD_XDS_PORT = 15012  # xDS and certificate signing over mTLS
DNS_LABEL_MAX = 63  # Service names are DNS labels
PROMETHEUS_ADAPTER_LATENCY_METRIC = "mlship_request_duration_seconds_p99"


def pod_volumes(config: MlshipConfig, tmp_bytes: int,
                model_bytes: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts: /tmp scratch always (the root filesystem is read-only), the model
    volume, or the S3 download cache and credentials when used, and Secrets as read-only
    files."""
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": mebibytes(tmp_bytes)}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": TMP_DIR}]
    if config.model.kind == "volume":
        claim, _ = config.model.claim_and_path
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim,
                                                                    "readOnly": True}})
        mounts.append({"name": "model", "mountPath": config.model.volume.mount_path,
                       "readOnly": True})
    storage_volumes_, storage_mounts = storage_volumes(config, model_bytes)
    volumes += storage_volumes_
    mounts += storage_mounts
    for index, secret in enumerate(config.env.secrets):
        volume = f"secret-{index}-{secret.name}"[:63].rstrip("-")
        volumes.append({"name": volume, "secret": {"secretName": secret.name,
                                                   "defaultMode": 0o440}})
        mounts.append({"name": volume, "mountPath": secret.mount_path, "readOnly": True})
    return volumes, mounts


def network_rules(config: MlshipConfig,
                  callers: Callers) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ingress only to the serving port, only from ``callers`` (``mlship.render.callers``);
    egress only DNS, plus the model store when the model is downloaded, and istiod under a
    mesh."""
    ingress = network_ingress(callers)
    egress: list[dict[str, Any]] = [{
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                      "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}],
    }]
    if uses_s3(config):  # the model download, or a batch job's inputs and outputs
        s3 = config.model.s3
        egress.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in s3.egress_cidrs],
                       "ports": [{"protocol": "TCP", "port": s3.egress_port}]})
        if s3.pod_identity:  # the EKS Pod Identity agent, a hostNetwork DaemonSet on each node
            egress.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in POD_IDENTITY_AGENT],
                           "ports": [{"protocol": "TCP", "port": 80}]})
    if uses_gcs(config):  # the model download from Cloud Storage
        gcs = config.model.gcs
        egress.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in gcs.egress_cidrs],
                       "ports": [{"protocol": "TCP", "port": gcs.egress_port}]})
        if workload_identity(config):  # the GKE metadata server, on each node
            egress += [{"to": [{"ipBlock": {"cidr": cidr}}],
                        "ports": [{"protocol": "TCP", "port": port}]}
                       for cidr, port in GKE_METADATA]
    if config.mesh.type == "istio":  # the sidecar's configuration and certificates
        egress.append({"to": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": config.mesh.control_plane_namespace}},
            "podSelector": {"matchLabels": {"app": "istiod"}}}],
            "ports": [{"protocol": "TCP", "port": ISTIOD_XDS_PORT}]})
    return ingress, egress


POD_IDENTITY_AGENT = ("169.254.170.23/32", "fd00:ec2::23/128")
# GKE's metadata server: 169.254.169.254:80 and, for clusters before 1.21, 169.254.169.252:988
# (GKE's Workload Identity docs list both for clusters with network policies).
GKE_METADATA = (("169.254.169.254/32", 80), ("169.254.169.252/32", 988))


def mesh_policies(config: MlshipConfig, callers: Callers) -> MeshPolicies | None:
    """Under ``mesh.type: istio``: the sidecar, injected by its pod label; probes rewritten
    through the sidecar's agent (Istio's default, pinned here: under STRICT mTLS the kubelet's
    plain-HTTP probes would otherwise be refused); the callers' authorization rules."""
    if config.mesh.type == "none":
        return None
    return MeshPolicies(kind=config.mesh.type,
                        authorization_rules=authorization_rules(callers),
                        pod_labels={"sidecar.istio.io/inject": "true"},
                        pod_annotations={"sidecar.istio.io/rewriteAppHTTPProbers": "true"})


def topology_spread(config: MlshipConfig, selector: dict[str, str]) -> list[dict[str, Any]]:
    spread = config.topology_spread
    if not spread.enabled:
        return []
    return [{"maxSkew": spread.max_skew, "topologyKey": key,
             "whenUnsatisfiable": spread.when_unsatisfiable,
             "labelSelector": {"matchLabels": dict(selector)}} for key in spread.keys]


def hpa_spec(config: MlshipConfig) -> Autoscaling | None:
    """autoscaling/v2 bounds and metrics: CPU always, custom Pods metrics when configured
    (served by the Prometheus adapter from the runtime's /metrics)."""
    scaling = config.autoscaling
    if not scaling.enabled:
        return None
    metrics: list[dict[str, Any]] = [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization",
                                  "averageUtilization": scaling.target_cpu_percent}}}]
    if scaling.queue_depth_target is not None:
        metrics.append(_pods_metric("mlship_queue_depth", _quantity(scaling.queue_depth_target)))
    if scaling.p99_latency_ms_target is not None:
        seconds = _quantity(scaling.p99_latency_ms_target / 1000)
        metrics.append(_pods_metric(PROMETHEUS_ADAPTER_LATENCY_METRIC, seconds))
    return Autoscaling(scaling.min_replicas, scaling.max_replicas, metrics,
                       scaling.scale_down_stabilization_s)


def _pods_metric(name: str, average: str) -> dict[str, Any]:
    return {"type": "Pods", "pods": {"metric": {"name": name},
                                     "target": {"type": "AverageValue", "averageValue": average}}}


def _quantity(value: float) -> str:
    """A float as a Kubernetes quantity: 0.25 -> '250m', 4.0 -> '4'."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def monitoring_spec(config: MlshipConfig) -> Monitoring:
    monitoring = config.monitoring
    selector = f'namespace="{config.namespace.name}",job="{config.name}"'
    error_rate = (f'sum(rate(mlship_requests_total{{{selector},code=~"5.."}}[5m])) / '
                  f'sum(rate(mlship_requests_total{{{selector}}}[5m])) > '
                  f"{monitoring.error_rate_threshold:g}")
    latency = ("histogram_quantile(0.99, sum by (le) (rate(mlship_request_duration_seconds_bucket"
               f"{{{selector}}}[5m]))) > {monitoring.p99_latency_ms / 1000:g}")
    return Monitoring(
        error_summary=f"More than {monitoring.error_rate_threshold:.1%} of requests to "
                      f"{config.name} fail with 5xx",
        latency_summary=f"p99 latency of {config.name} is above "
                        f"{monitoring.p99_latency_ms:g} ms",
        error_rate_expr=error_rate,
        latency_expr=latency,
        service_monitor=monitoring.service_monitor,
        prometheus_rule=monitoring.prometheus_rule,
        dashboard=monitoring.dashboard,
        scrape_interval=monitoring.scrape_interval,
        error_rate_threshold=monitoring.error_rate_threshold,
        p99_latency_s=monitoring.p99_latency_ms / 1000,
        selector=selector,
        cpu_fallback_expr=f'max by (namespace, pod) (mlship_execution_provider{{{selector},'
                          f'provider="CPUExecutionProvider"}}) == 1'
        if config.gpu.enabled else None,
        cpu_fallback_summary=f"Pod {{{{ $labels.pod }}}} of {config.name} runs the model on "
                             "CPU: its GPU provider did not load (provider_fallback: allow); "
                             "the pod's log names the missing library or driver mismatch",
    )


def rollout_objects(config: MlshipConfig, labels: dict[str, str],
                    selector: dict[str, str]) -> TrafficObjects | None:
    """The per-track Services and the weighted route (all traffic to stable) that Istio or
    Gateway API rollouts patch; None under replica-ratio traffic, which needs neither."""
    from mlship.config.rollout import canary_name
    from mlship.errors import ConfigError
    from mlship.render.traffic import http_route, track_services, virtual_service

    rollout = config.rollout
    if rollout.traffic == "replicas":
        return None
    if len(canary_name(config.name)) > DNS_LABEL_MAX:
        raise ConfigError(f"name: {config.name!r} is too long for rollout.traffic "
                          f"{rollout.traffic}: the Service {canary_name(config.name)!r} needs "
                          "at most 63 characters")
    port = config.service.port
    namespace = config.namespace.name
    route = (virtual_service if rollout.traffic == "istio" else http_route)(
        config.name, namespace, labels, port, rollout)
    stable, canary = track_services(config.name, namespace, labels, selector, port)
    return TrafficObjects(rollout.traffic, stable, canary, route)
