"""``mlship.yaml`` -> ``MlshipConfig``: the one place configuration is read and validated.

Stages downstream receive the typed, frozen ``MlshipConfig`` and never look at dicts. Every
mistake becomes one ``ConfigError`` line naming the key path, the bad value and what is
allowed (see ``mlship.config_errors``). ``MLSHIP_<KEY>[__<SUBKEY>...]`` environment variables
override keys of the file before validation, so an override is checked like the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from mlship import cuda
from mlship.config_drift import DriftSettings
from mlship.config_k8s import (
    AutoscalingSettings,
    BatchSettings,
    DisruptionBudgetSettings,
    EnvSettings,
    GpuSettings,
    MonitoringSettings,
    NamespaceSettings,
    NetworkPolicySettings,
    ProbeSettings,
    ServiceAccountSettings,
    ServiceSettings,
    TopologySpreadSettings,
)
from mlship.config_model import (
    DEFAULT_BASE_IMAGE,
    DnsLabel,
    FieldProblem,
    ImageSettings,
    ModelFile,
    ModelSource,
    ResourceSettings,
    RuntimeSettings,
    Section,
)
from mlship.config_repository import PipelineSettings, ServedModel, check_repository
from mlship.config_rollout import RolloutSettings
from mlship.errors import ConfigError

CONFIG_FILE = "mlship.yaml"
ENV_PREFIX = "MLSHIP_"


class MlshipConfig(Section):
    """Everything mlship needs to build and deploy one model."""

    config_version: int = Field(1, ge=1, le=1, description="Format version of this file.")
    name: DnsLabel = Field(..., description="Name of the app, image and Kubernetes objects.")
    labels: dict[str, str] = Field({}, description="Extra labels on every object.")
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
            check_repository(self)
        return self


def _check_gpu_base(base: str, ort_version: str) -> None:
    stack = cuda.cuda_stack_of(base)
    if stack is None:
        fits = cuda.describe_pairs(cuda.compatible_pairs(ort_version)) or "a CUDA image"
        raise FieldProblem("image.base", base, f"a CPU-only image cannot run gpu.enabled: true; "
                                               f"use an nvidia/cuda runtime image with {fits}")
    problem = cuda.check_compatible(ort_version, stack)
    if problem:
        raise FieldProblem("image.base", base, problem)


def load_config(path: Path, *, environ: dict[str, str] | None = None) -> MlshipConfig:
    """Read, override from the environment, and validate ``path``; ConfigError on any mistake."""
    import yaml

    from mlship.config_errors import yaml_syntax_message

    if not path.is_file():
        raise ConfigError(f"{path}: no such file",
                          hint="run `mlship init MODEL` to write one, or pass --config")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(yaml_syntax_message(path, err)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not "
                          f"{type(raw).__name__}")
    sources = apply_env_overrides(raw, os.environ if environ is None else environ)
    config = validate_config(raw, label=str(path), text=text, sources=sources)
    return config.with_drift_baseline_from(path.parent)


def validate_config(raw: dict[str, Any], *, label: str = CONFIG_FILE, text: str | None = None,
                    sources: dict[tuple[str, ...], str] | None = None) -> MlshipConfig:
    """Validate an already parsed document; the one conversion from dict to typed config."""
    from pydantic import ValidationError

    from mlship.config_errors import describe_validation_error

    try:
        return MlshipConfig.model_validate(raw)
    except ValidationError as err:
        # No hint: the one line already says what is allowed.
        message = describe_validation_error(err, label=label, text=text, sources=sources or {})
        raise ConfigError(message) from None


def apply_env_overrides(raw: dict[str, Any], environ: Any) -> dict[tuple[str, ...], str]:
    """Merge ``MLSHIP_REPLICAS=3`` / ``MLSHIP_IMAGE__TAG=v2`` into ``raw``; return their origin.

    Only variables whose first part names a top-level key count, so unrelated settings such as
    MLSHIP_DEBUG or the runtime's MLSHIP_RUNTIME_PORT are left alone. Values are YAML scalars.
    """
    import yaml

    top_level = set(MlshipConfig.model_fields)
    origins: dict[tuple[str, ...], str] = {}
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in variable[len(ENV_PREFIX):].split("__"))
        if path[0] not in top_level or not all(path):
            continue
        try:
            value = yaml.safe_load(environ[variable])
        except yaml.YAMLError:
            value = environ[variable]
        target = raw
        for part in path[:-1]:
            child = target.get(part)
            if not isinstance(child, dict):
                child = target[part] = {}
            target = child
        target[path[-1]] = value
        origins[path] = variable
    return origins


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of mlship.yaml (docs/mlship.schema.json)."""
    schema = MlshipConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://mlship.dev/schema/mlship.schema.json"
    schema["title"] = "mlship.yaml"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


