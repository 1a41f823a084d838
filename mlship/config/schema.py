"""``MlshipConfig``: the whole of ``mlship.yaml`` as one frozen pydantic model, and the rules
that span its sections (a GPU with a CPU-only base image, a repository of several models).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from mlship.config import cuda
from mlship.config.drift import DriftSettings
from mlship.config.fields import DnsLabel, FieldProblem, Labels, Section
from mlship.config.k8s import (
    AutoscalingSettings,
    BatchSettings,
    DisruptionBudgetSettings,
    EnvSettings,
    GpuSettings,
    MeshSettings,
    MonitoringSettings,
    NamespaceSettings,
    NetworkPolicySettings,
    ProbeSettings,
    ServiceAccountSettings,
    ServiceSettings,
    TopologySpreadSettings,
)
from mlship.config.paths import overlaps
from mlship.config.repository import PipelineSettings, ServedModel, check_repository
from mlship.config.rollout import RolloutSettings
from mlship.config.runtime import RuntimeSettings
from mlship.config.sections import (
    DEFAULT_BASE_IMAGE,
    ImageSettings,
    ModelFile,
    ModelSource,
    ResourceSettings,
)


class MlshipConfig(Section):
    """Everything mlship needs to build and deploy one model."""

    config_version: int = Field(1, ge=1, le=1, description="Format version of this file.")
    name: DnsLabel = Field(..., description="Name of the app, image and Kubernetes objects.")
    labels: Labels = Field({}, description="Extra labels on every object.")
    model: ModelSource
    models: list[ServedModel] = Field([], description="More models served by the same "
                                      "process, each under its own name; from where model is.")
    pipelines: list[PipelineSettings] = Field([], description="Chains of the served models, "
                                              "each served as one V2 model.")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    image: ImageSettings = Field(default_factory=ImageSettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    replicas: int = Field(2, ge=0, description="Replicas when autoscaling is off.")
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)
    gpu: GpuSettings = Field(default_factory=GpuSettings)
    probes: ProbeSettings = Field(default_factory=ProbeSettings)
    env: EnvSettings = Field(default_factory=EnvSettings)
    namespace: NamespaceSettings = Field(default_factory=NamespaceSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    service_account: ServiceAccountSettings = Field(default_factory=ServiceAccountSettings)
    network_policy: NetworkPolicySettings = Field(default_factory=NetworkPolicySettings)
    mesh: MeshSettings = Field(default_factory=MeshSettings)
    disruption_budget: DisruptionBudgetSettings = Field(default_factory=DisruptionBudgetSettings)
    topology_spread: TopologySpreadSettings = Field(default_factory=TopologySpreadSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)

    @property
    def base_image(self) -> str:
        """The configured base, or the default for the CPU or the CUDA build."""
        if self.image.base:
            return self.image.base
        if self.gpu.enabled:
            return cuda.default_base_image(self.gpu.onnxruntime_gpu_version) or DEFAULT_BASE_IMAGE
        return DEFAULT_BASE_IMAGE

    @property
    def gpu_release(self) -> cuda.GpuRelease | None:
        """The onnxruntime-gpu release of the GPU lock the image installs; None on CPU."""
        return cuda.release_for(self.gpu.onnxruntime_gpu_version) if self.gpu.enabled else None

    @property
    def served_models(self) -> list[tuple[str, ModelFile]]:
        """(V2 name, model) for every model the process serves; the main one first."""
        return [(self.name, self.model), *((m.name, m) for m in self.models)]

    @property
    def serves_repository(self) -> bool:
        """Several models or pipelines: the runtime gets a repository document, not one model."""
        return bool(self.models or self.pipelines)

    def with_drift_baseline_from(self, directory: Path) -> MlshipConfig:
        """drift.baseline is relative to mlship.yaml: resolved once, where the file is read."""
        baseline = Path(self.drift.baseline)
        if baseline.is_absolute():
            return self
        drift = self.drift.model_copy(update={"baseline": str(directory / baseline)})
        return self.model_copy(update={"drift": drift})

    @model_validator(mode="after")
    def _cross_section_rules(self) -> MlshipConfig:
        if self.gpu.enabled:
            _check_gpu_base(self.base_image, self.gpu.onnxruntime_gpu_version)
            if self.runtime.provider != "cuda":
                raise FieldProblem("runtime.provider", self.runtime.provider,
                                   "must be 'cuda' when gpu.enabled is true")
        elif self.runtime.provider == "cuda":
            raise FieldProblem("runtime.provider", "cuda", "needs gpu.enabled: true")
        key = self.model.s3.credentials_secret
        if self.model.kind == "s3" and key and self.model.s3.role_arn:
            raise FieldProblem("model.s3.role_arn", self.model.s3.role_arn,
                               "use either credentials_secret or role_arn, not both")
        if self.serves_repository:
            check_repository(self.name, self.model, self.models, self.pipelines)
        self._check_mounts()
        self.mesh.check_callers(self.network_policy)
        return self

    def _check_mounts(self) -> None:
        """Secrets mount beside the model volume, never over or under it."""
        if self.model.kind != "volume":
            return
        volume = self.model.volume.mount_path
        for index, secret in enumerate(self.env.secrets):
            if overlaps(secret.mount_path, volume):
                raise FieldProblem(f"env.secrets.{index}.mount_path", secret.mount_path,
                                   f"overlaps the model volume at {volume} "
                                   "(model.volume.mount_path)")


def _check_gpu_base(base: str, ort_version: str) -> None:
    try:
        release = cuda.release_for(ort_version)
    except ValueError as err:
        raise FieldProblem("gpu.onnxruntime_gpu_version", ort_version, str(err)) from None
    stack = cuda.cuda_stack_of(base)
    if stack is None:
        example = cuda.default_base_image(ort_version)
        raise FieldProblem("image.base", base, f"a CPU-only image cannot run gpu.enabled: true; "
                                               f"use an Ubuntu {cuda.GPU_UBUNTU} nvidia/cuda "
                                               f"runtime image with {release.describe()}"
                                               + (f" (e.g. {example})" if example else ""))
    problem = cuda.check_compatible(release, stack)
    if problem:
        raise FieldProblem("image.base", base, problem)
