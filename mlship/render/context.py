"""Typed config + model facts -> every value a template prints, computed once in Python.

Templates only lay values out. Anything with a rule in it (probe budgets, cache sizes, the
image reference, which metrics the autoscaler reads) is decided here, where it can be tested.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlship.config.cuda import GpuRelease
from mlship.config.k8s import HealthProbe
from mlship.config.quantities import mebibytes
from mlship.render.callers import Callers, callers_of
from mlship.render.dashboard import dashboard
from mlship.render.drift import BASELINE_PATH, drift_spec
from mlship.render.identity import ImageIdentity, image_identity, served_facts
from mlship.render.parts import (
    hpa_spec,
    mesh_policies,
    monitoring_spec,
    network_rules,
    pod_volumes,
    rollout_objects,
    topology_spread,
)
from mlship.render.runtime_env import model_env, model_paths, runtime_env
from mlship.render.specs import (
    Autoscaling,
    BatchJob,
    Claim,
    Drift,
    Manifest,
    MeshPolicies,
    Monitoring,
    TrafficObjects,
)
from mlship.render.storage import workload_identity
from mlship.render.traffic import STABLE, TRACK_LABEL, pull_policy

if TYPE_CHECKING:
    from collections.abc import Mapping

    from mlship.config.schema import MlshipConfig
    from mlship.model.baseline import BaselineFile
    from mlship.model.facts import ModelSignature

TMP_SCRATCH_BYTES = 64 * 2**20
# Start-up budget: the process start plus each model's load and warm-up, measured (model.
# load_seconds, from `mlship build --smoke`) or estimated from its size, doubled for slow nodes.
LOAD_BASE_S = 5.0  # interpreter, onnxruntime import, listener: 0.3 s idle, 3.3 s busy (2 CPUs)
LOAD_S_PER_100MB = 1.0
LOAD_SAFETY = 2.0  # the stated margin over the measured (or estimated) time
HASH_BYTES_S = 400e6  # sha256 on one slow core (mlship_runtime.fetch verifies every file)
MIN_STARTUP_BUDGET_S = 30
TERMINATION_MARGIN_S = 10
# A terminating pod keeps serving this long before SIGTERM (preStop sleep): the endpoint
# controller and every kube-proxy drop it from the Service meanwhile, so no new connection
# meets a closed listener (seen on a real node: refused and timed-out connections without it).
ENDPOINT_REMOVAL_S = 5


@dataclass(frozen=True)
class RenderContext:
    """Names are the template's vocabulary; see templates/ for where each lands."""

    name: str
    namespace: str
    create_namespace: bool
    labels: dict[str, str]
    selector: dict[str, str]
    version: str
    identity: ImageIdentity
    image: str
    image_pull_policy: str
    digest_pinned: bool
    pull_secrets: list[Manifest]
    base_image: str
    gpu: bool
    install_from: str
    pip_source: str  # where pip finds the wheels: only wheels/, or an index too
    model_kind: str
    model_file: str
    model_sha256: str
    model_path: str
    # MLSHIP_RUNTIME_MODEL(_NAME), or MLSHIP_RUNTIME_MODELS for several: the image's ENV.
    image_model_env: dict[str, str]
    port: int
    service_type: str
    service_port: int
    replicas: int | None
    replica_bounds: tuple[int, int]
    runtime_env: dict[str, str]
    config_hash: str
    config_map: str  # content-addressed: a rollback brings its own settings back
    resources: Manifest  # requests and limits
    startup_period_s: int
    startup_failure_threshold: int
    startup_budget_s: int
    readiness: HealthProbe
    liveness: HealthProbe
    termination_grace_s: int
    endpoint_removal_s: int
    tmp_size_limit: str
    volumes: list[Manifest]
    volume_mounts: list[Manifest]
    env_from: list[Manifest]
    node_selector: dict[str, str]
    tolerations: list[Manifest]
    topology_spread: list[Manifest]
    service_account_annotations: dict[str, str]
    callers: Callers  # who may call the pods; the NetworkPolicy's ingress is made from it
    network_ingress: list[Manifest]
    network_egress: list[Manifest]
    hpa: Autoscaling | None
    pdb_max_unavailable: int | None
    pvc: Claim | None
    monitoring: Monitoring
    dashboard: Manifest  # the Grafana dashboard (written when monitoring.dashboard asks)
    batch: BatchJob | None
    workload_annotations: dict[str, str]
    source_url: str
    healthcheck_start_s: int
    gpu_release: GpuRelease | None  # the onnxruntime-gpu of the GPU lock, None on CPU
    # Pod labels: the common labels plus mlship.dev/track=stable (see mlship.render.traffic).
    pod_labels: dict[str, str] = field(default_factory=dict)
    # Objects weighted traffic needs (rollout.traffic istio/gateway); None for replicas.
    rollout: TrafficObjects | None = None
    # The drift baseline ConfigMap and alert rules (mlship.render.drift); None when off.
    drift: Drift | None = None
    # Service-mesh security (mesh.type); None without a mesh.
    mesh: MeshPolicies | None = None


def build_context(config: MlshipConfig, signature: ModelSignature | None,
                  baseline: BaselineFile | None = None, *,
                  extras: Mapping[str, ModelSignature] | None = None,
                  target: str = "kubernetes",
                  base_digest: str | None = None) -> RenderContext:
    """``extras``: signatures of the local files of ``models`` (see ``served_facts``)."""

    served = served_facts(config, signature, extras)
    facts = served[config.name]
    total_bytes = sum(f.total_bytes for f in served.values())
    identity = image_identity(config, served)
    selector = {"app.kubernetes.io/name": config.name, "app.kubernetes.io/instance": config.name}
    labels = {**config.labels, **selector, "app.kubernetes.io/version": config.model.version,
              "app.kubernetes.io/managed-by": "mlship"}
    paths = model_paths(config, served)
    model_path = paths[config.name]
    in_pod = model_env(config, paths, baseline=BASELINE_PATH if config.drift.enabled else None)
    env = runtime_env(config, in_pod)
    config_hash = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]
    config_map = f"{config.name}-config-{config_hash[:10]}"
    budget = startup_budget_s(config, {name: f.total_bytes for name, f in served.items()})
    volumes, mounts = pod_volumes(config, TMP_SCRATCH_BYTES, total_bytes)
    monitoring = monitoring_spec(config)
    drift = drift_spec(config, signature, baseline, monitoring.selector)
    if drift is not None:
        volumes.append(drift.volume)
        mounts.append(drift.mount)
    callers = callers_of(config, target)
    ingress, egress = network_rules(config, callers)
    mesh = mesh_policies(config, callers)
    digest = config.image.digest
    return RenderContext(
        name=config.name,
        namespace=config.namespace.name,
        create_namespace=config.namespace.create,
        labels=labels,
        selector=selector,
        version=config.model.version,
        identity=identity,
        image=identity.reference,
        image_pull_policy=pull_policy(identity.reference),
        digest_pinned=digest is not None,
        pull_secrets=[{"name": secret} for secret in config.image.pull_secrets],
        base_image=pinned_base(config.base_image, base_digest),
        gpu=config.gpu.enabled,
        install_from=config.image.install_from,
        pip_source="--no-index" if config.image.install_from == "wheelhouse" else
        '--index-url "${PIP_INDEX_URL}"',
        model_kind=config.model.kind,
        model_file=facts.file_name,
        model_sha256=identity.models_sha256,
        model_path=model_path,
        image_model_env=model_env(config, paths),
        port=config.runtime.port,
        service_type=config.service.type,
        service_port=config.service.port,
        replicas=None if config.autoscaling.enabled else config.replicas,
        replica_bounds=(config.autoscaling.min_replicas, config.autoscaling.max_replicas)
        if config.autoscaling.enabled else (config.replicas, config.replicas),
        runtime_env=env,
        config_hash=config_hash,
        config_map=config_map,
        resources=_resources(config),
        startup_period_s=config.probes.startup.period_s,
        startup_failure_threshold=math.ceil(budget / config.probes.startup.period_s),
        startup_budget_s=budget,
        readiness=config.probes.readiness,
        liveness=config.probes.liveness,
        termination_grace_s=math.ceil(config.runtime.drain_grace_s) + ENDPOINT_REMOVAL_S
        + TERMINATION_MARGIN_S,
        endpoint_removal_s=ENDPOINT_REMOVAL_S,
        tmp_size_limit=mebibytes(TMP_SCRATCH_BYTES),
        volumes=volumes,
        volume_mounts=mounts,
        env_from=[{"configMapRef": {"name": config_map}}]
        + [{"configMapRef": {"name": name}} for name in config.env.config_maps],
        node_selector=dict(config.gpu.node_selector) if config.gpu.enabled else {},
        tolerations=[t.model_dump(exclude_none=True) for t in config.gpu.tolerations]
        if config.gpu.enabled else [],
        topology_spread=topology_spread(config, selector),
        service_account_annotations=_service_account_annotations(config),
        callers=callers,
        network_ingress=ingress,
        network_egress=egress,
        hpa=hpa_spec(config),
        pdb_max_unavailable=config.disruption_budget.max_unavailable
        if config.disruption_budget.enabled else None,
        pvc=_pvc(config),
        monitoring=monitoring,
        dashboard=dashboard(config.name, config.namespace.name),
        batch=_batch(config, model_path),
        workload_annotations=_workload_annotations(config),
        source_url=config.image.source_url,
        healthcheck_start_s=budget,
        gpu_release=config.gpu_release,
        pod_labels={**labels, TRACK_LABEL: STABLE, **(mesh.pod_labels if mesh else {})},
        rollout=rollout_objects(config, labels, selector),
        drift=drift,
        mesh=mesh,
    )


def pinned_base(base: str, digest: str | None) -> str:
    """``name:tag@sha256:...``: the digest is what the builder fetches, the tag stays for
    people; a base already pinned in image.base is kept as written."""
    return f"{base}@{digest}" if digest and "@" not in base else base


def local_image_warning(config: MlshipConfig, reference: str) -> str | None:
    """What render and deploy say when the image has no registry to be pulled from."""
    if config.image.registry:
        return None
    return (f"image.registry is unset: pods run {reference} with imagePullPolicy IfNotPresent, "
            "which starts only on nodes the image was loaded onto (kind load docker-image, "
            "k3d image import); set image.registry and `mlship push` for any other cluster")


def _workload_annotations(config: MlshipConfig) -> dict[str, str]:
    if config.image.digest:
        return {}
    # The digest exists only after `mlship push`; deploy pins it then. Until then the tag is
    # immutable by policy (model sha or version) and pulled with Always.
    annotations = {"checkov.io/skip1": "CKV_K8S_43=image digest is unknown before the image "
                                       "is pushed"}
    if not config.image.registry:
        annotations["checkov.io/skip2"] = ("CKV_K8S_15=a local image (no image.registry) is "
                                           "loaded onto the nodes, never pulled")
    return annotations


def startup_budget_s(config: MlshipConfig, sizes: Mapping[str, int] | int) -> int:
    """Seconds the startup probe allows: the process start, each model's load and warm-up
    (``load_seconds`` as `mlship build --smoke` measured it, else estimated from its size),
    and for s3:// and gs:// the download and sha256 pass, doubled for slower nodes; at least
    30 s. ``sizes``: bytes by served model (an int: the main model's)."""
    if config.probes.startup.budget_s:
        return config.probes.startup.budget_s
    by_name = {config.name: sizes} if isinstance(sizes, int) else sizes
    load = LOAD_BASE_S
    for name, model in config.served_models:
        size = by_name.get(name, 0)
        load += model.load_seconds if model.load_seconds is not None else \
            LOAD_S_PER_100MB * size / 100e6
        if model.fetched:  # download, then a sha256 pass over every file
            store = config.model.s3 if model.kind == "s3" else config.model.gcs
            load += size / (store.bandwidth_mb_s * 1e6) + size / HASH_BYTES_S
    return max(MIN_STARTUP_BUDGET_S, math.ceil(load * LOAD_SAFETY))


def _batch(config: MlshipConfig, model_path: str) -> BatchJob | None:
    """The CronJob's settings; with several models it runs the main one, named on its
    command line (the runtime's env then describes the whole repository)."""
    if not config.batch.enabled:
        return None
    args = ["--model", model_path] if config.serves_repository else []
    if args and config.model.fetched and config.model.sha256:
        args += ["--model-sha256", config.model.sha256]
    batch = config.batch
    return BatchJob(batch.schedule, batch.input, batch.output, batch.concurrency_policy,
                    batch.backoff_limit, batch.active_deadline_s, args)


def _resources(config: MlshipConfig) -> Manifest:
    limits: dict[str, Any] = config.resources.limits.model_dump()
    if config.gpu.enabled:
        limits[config.gpu.resource] = config.gpu.count
    return {"requests": config.resources.requests.model_dump(), "limits": limits}


def _service_account_annotations(config: MlshipConfig) -> dict[str, str]:
    annotations = dict(config.service_account.annotations)
    role = config.model.s3.role_arn if config.model.kind == "s3" else None
    role = role or config.service_account.role_arn
    if role:
        annotations["eks.amazonaws.com/role-arn"] = role
    gsa = workload_identity(config)
    if gsa:  # GKE Workload Identity: the metadata server hands this account's tokens out
        annotations["iam.gke.io/gcp-service-account"] = gsa
    return annotations


def _pvc(config: MlshipConfig) -> Claim | None:
    if config.model.kind != "volume" or not config.model.volume.create_claim:
        return None
    claim, _ = config.model.claim_and_path
    volume = config.model.volume
    spec: dict[str, Any] = {"accessModes": [volume.access_mode],
                            "resources": {"requests": {"storage": volume.size}}}
    if volume.storage_class:
        spec["storageClassName"] = volume.storage_class
    return Claim(claim, spec)
