"""The ``runtime:`` section of ``mlship.yaml``: the settings of the runtime in the pod.

Every key here is bound to one setting the runtime declares (``mlship_runtime.settings``):
its default, bounds, choices and documentation come from that declaration, and each section
checks its values with the runtime's own check, so mlship.yaml accepts nothing the pod would
refuse. mlship may only narrow a setting (a non-root pod cannot listen below 1024). The binding
is in each field's metadata (``Bind``); ``runtime_values`` reads a loaded config through it,
for the rendered ConfigMap and for ``mlship serve -c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlship_runtime.settings import BY_NAME, Declared, SettingError
from pydantic import BaseModel, Field, model_validator
from pydantic.fields import FieldInfo

from mlship.config.fields import FieldProblem, Section
from mlship.config.paths import TMP_DIR


@dataclass(frozen=True)
class Bind:
    """Field metadata: this key sets the runtime setting ``name``."""

    name: str


def runtime_field(name: str, *, default: Any = None, description: str | None = None,
                  **narrower: Any) -> Any:
    """A field bound to the runtime setting ``name``: its pod default (or ``default``), bounds
    and description from the runtime's declaration; ``narrower`` (ge=..., le=...) may only
    tighten them."""
    declared = BY_NAME[name]
    spec = declared.spec
    bounds = {key: int(value) if float(value).is_integer() else value  # "<= 1000", not 1000.0
              for key, value in (("ge", spec.minimum), ("le", spec.maximum), ("gt", spec.above))
              if value is not None}
    extra: dict[str, Any] = {}
    if spec.choices:
        extra["json_schema_extra"] = {"enum": [*spec.choices, *spec.aliases]}
    if "json_schema_extra" in narrower:
        extra["json_schema_extra"] = narrower.pop("json_schema_extra")
    for key, value in narrower.items():
        if key in ("ge", "gt") and key in bounds and value < bounds[key]:
            raise ValueError(f"{name}: mlship may narrow the runtime's bounds, not widen them")
        if key == "le" and "le" in bounds and value > bounds["le"]:
            raise ValueError(f"{name}: mlship may narrow the runtime's bounds, not widen them")
        bounds[key] = value
    doc = description or spec.doc[0].upper() + spec.doc[1:] + "."
    info: FieldInfo = Field(declared.pod_default if default is None else default,  # type: ignore[call-overload]
                            description=doc, **bounds, **extra)
    info.metadata.append(Bind(name))
    return info


def bound_name(info: FieldInfo) -> str | None:
    return next((item.name for item in info.metadata if isinstance(item, Bind)), None)


class RuntimeSection(Section):
    """A section of runtime settings: each value passes the runtime's own check."""

    @model_validator(mode="after")
    def _runtime_accepts(self) -> RuntimeSection:
        for key, info in type(self).model_fields.items():
            name = bound_name(info)
            if name is None:
                continue
            declared = BY_NAME[name]
            try:
                declared.check(declared.normalize(getattr(self, key)))
            except SettingError as err:
                raise FieldProblem(key, err.value, f"must be {_allowed(declared)}") from None
        return self


def _allowed(declared: Declared) -> str:
    """What a setting accepts, worded as pydantic words its own errors."""
    choices = [repr(choice) for choice in (*declared.spec.choices, *declared.spec.aliases)]
    if len(choices) > 1:
        return f"one of {', '.join(choices[:-1])} or {choices[-1]}"
    return declared.spec.expected()


class Batching(RuntimeSection):
    enabled: bool = runtime_field("batching")
    max_batch_size: int = runtime_field("max_batch_size")
    max_queue_delay_ms: float = runtime_field("max_queue_delay_ms")
    max_queue_size: int = runtime_field("max_queue_size")


class PredictionCacheSettings(RuntimeSection):
    entries: int = runtime_field("prediction_cache_entries")
    max_bytes: int = runtime_field("prediction_cache_bytes")
    ttl_s: float = runtime_field("prediction_cache_ttl_s")


class PayloadLogSettings(RuntimeSection):
    target: str | None = runtime_field(
        "payload_log", description="Log sampled request and response bodies for monitoring: "
                                   "'-' for stdout, or a file under /tmp (the pod's only "
                                   "writable directory); null: off.")
    sample: float = runtime_field("payload_log_sample")
    rate: float = runtime_field("payload_log_rate")
    max_bytes: int = runtime_field("payload_log_max_bytes")
    file_bytes: int = runtime_field("payload_log_file_bytes")

    @model_validator(mode="after")
    def _writable(self) -> PayloadLogSettings:
        target = self.target
        if target is not None and target != "-" and (
                not target.startswith(f"{TMP_DIR}/") or ".." in target.split("/")):
            raise FieldProblem("target", target, f"must be '-' (stdout) or a file under "
                               f"{TMP_DIR}/, the pod's only writable directory")
        return self


class RuntimeSettings(RuntimeSection):
    # A non-root container cannot bind below 1024; GPU pods run cuda (gpu.enabled).
    provider: str = runtime_field("provider", json_schema_extra={"enum": ["cpu", "cuda"]},
                                  description="onnxruntime execution provider; cuda needs "
                                              "gpu.enabled: true.")
    provider_fallback: str = runtime_field(
        "provider_fallback", description="When the GPU provider (cuda) does not load, which "
        "onnxruntime answers by running on CPU: deny keeps the pod from ever becoming ready "
        "(exit 14, naming the missing library or driver mismatch); allow serves on CPU, with a "
        "warning, mlship_execution_provider and the MlshipCpuFallback alert saying so.")
    port: int = runtime_field("port", ge=1024, description="Serving port (non-root: >= 1024).")
    workers: int = runtime_field("workers")
    intra_op_threads: int = runtime_field("intra_op_threads", default=0)
    inter_op_threads: int = runtime_field("inter_op_threads", default=0)
    batching: Batching = Field(default_factory=Batching)
    prediction_cache: PredictionCacheSettings = Field(default_factory=PredictionCacheSettings)
    max_body_bytes: int = runtime_field("max_body_bytes")
    max_header_bytes: int = runtime_field("max_header_bytes")
    max_request_values: int = runtime_field("max_request_values")
    max_connections: int = runtime_field("max_connections")
    header_timeout_s: float = runtime_field("header_timeout_s")
    request_timeout_s: float = runtime_field("request_timeout_s")
    fetch_timeout_s: float = runtime_field("fetch_timeout_s")
    drain_grace_s: float = runtime_field("drain_grace_s")
    log_format: str = runtime_field("log_format")
    log_level: str = runtime_field("log_level")
    access_log: bool = runtime_field("access_log")
    payload_log: PayloadLogSettings = Field(default_factory=PayloadLogSettings)

    @model_validator(mode="after")
    def _pod_providers(self) -> RuntimeSettings:
        if self.provider not in ("cpu", "cuda"):
            raise FieldProblem("provider", self.provider, "must be one of cpu, cuda (cuda "
                               "with gpu.enabled: true)")
        return self


# The runtime's settings mlship.yaml does not set, and why: what a rendered pod gets for them
# comes from elsewhere (render.runtime_env, render.storage) or is the runtime's own default.
NOT_IN_CONFIG: dict[str, str] = {
    "model": "where the model is: from model.source",
    "models": "the repository document: from models: and pipelines:",
    "model_name": "the app's name",
    "model_version": "model.version",
    "track": "set by mlship rollout on each track",
    "revision": "set by mlship rollout on each canary",
    "model_sha256": "model.sha256 of a downloaded model",
    "cache_dir": "the pod's download cache volume",
    "s3_addressing_style": "the runtime's S3 default for model.s3.endpoint_url",
    "host": "a pod listens on every address (the declared pod default)",
    "execution": "chosen by the runtime from the model's measured batch time",
    "trust_forwarded_client_cert": "set by mesh.type: only a sidecar's header is trusted",
    "baseline": "drift.baseline, mounted from its ConfigMap",
    "input_shapes": "model.profile.shapes (per model)",
    "sample": "model.profile.sample, for local runs (serve -c, optimize, smoke)",
    "shadow_url": "set on the stable by `mlship rollout shadow` for the shadow's Service",
    "shadow_sample_rate": "rollout.shadow.sample_rate, set by `mlship rollout shadow`",
    "shadow_max_per_second": "rollout.shadow.max_per_second, set by `mlship rollout shadow`",
    "shadow_tolerances": "rollout.shadow's tolerances, set by `mlship rollout shadow`",
}


def runtime_values(section: BaseModel) -> dict[str, Any]:
    """Every runtime setting ``section`` (the ``runtime:`` section) binds, by runtime name, as
    written (the runtime normalizes them: ``0`` threads -> ``None``, ``text`` -> ``plain``)."""
    values: dict[str, Any] = {}
    for key, info in type(section).model_fields.items():
        value = getattr(section, key)
        name = bound_name(info)
        if name is not None:
            values[name] = value
        elif isinstance(value, BaseModel):
            values.update(runtime_values(value))
    return values
