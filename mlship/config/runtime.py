"""The ``runtime:`` section of ``mlship.yaml``: the settings of the runtime in the pod."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlship.config.fields import Section


class Batching(Section):
    enabled: bool = Field(True, description="Merge concurrent requests into one batch.")
    max_batch_size: int = Field(8, ge=1, description="Largest merged batch.")
    max_queue_delay_ms: float = Field(2.0, ge=0, description="Longest wait to fill a batch.")
    max_queue_size: int = Field(256, ge=1, description="Requests queued before 503.")


class PredictionCacheSettings(Section):
    entries: int = Field(0, ge=0, description="Distinct requests whose outputs the runtime keeps; "
                                              "0 turns the cache off. Deterministic models only "
                                              "(docs/runtime-api.md#prediction-cache).")
    max_bytes: int = Field(64 * 2**20, ge=1, description="Bound on the bytes of cached outputs.")
    ttl_s: float = Field(300.0, gt=0, description="How long a cached output may be served.")


class RuntimeSettings(Section):
    provider: Literal["cpu", "cuda"] = Field("cpu", description="onnxruntime execution provider.")
    port: int = Field(8080, ge=1024, le=65535, description="Serving port (non-root: >= 1024).")
    workers: int = Field(1, ge=1, description="Server processes per pod.")
    intra_op_threads: int = Field(0, ge=0, description="0 lets onnxruntime decide.")
    inter_op_threads: int = Field(0, ge=0, description="0 lets onnxruntime decide.")
    batching: Batching = Field(default_factory=Batching)
    prediction_cache: PredictionCacheSettings = Field(default_factory=PredictionCacheSettings)
    max_body_bytes: int = Field(64 * 2**20, ge=1024, description="Largest request body.")
    request_timeout_s: float = Field(30.0, gt=0, description="Per-request deadline.")
    drain_grace_s: float = Field(25.0, ge=0, description="How long SIGTERM waits for "
                                                         "in-flight requests.")
    log_format: Literal["json", "text"] = Field("json", description="One JSON object per "
                                                "log line, or text for people.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged.")


