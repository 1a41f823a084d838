"""Runtime settings: one frozen dataclass, filled from ``MLSHIP_RUNTIME_<FIELD>`` env vars and argv.

The Kubernetes ConfigMap rendered by mlship sets the env vars; command-line options (the image's
ENTRYPOINT arguments, ``mlship serve``) override them. Validation happens here, once, so the rest
of the runtime can trust every field.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "MLSHIP_RUNTIME_"
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
LOG_FORMATS = ("plain", "json")
EXECUTIONS = ("auto", "loop", "thread")
LOG_LEVELS = ("debug", "info", "warning", "error")
S3_ADDRESSING = ("auto", "path", "virtual")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything the server needs; ``None`` thread counts mean "derive from the CPU quota"."""

    model: str = ""  # empty only with models
    models: str | None = None  # a repository file: several models and pipelines instead
    model_name: str = ""
    model_version: str | None = None
    track: str = ""
    revision: str = ""
    model_sha256: str | None = None
    cache_dir: str | None = None
    s3_addressing_style: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    provider: str = "auto"
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    batching: bool = True
    execution: str = "auto"
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 256
    max_body_bytes: int = 64 * 1024 * 1024
    request_timeout_s: float = 30.0
    drain_grace_s: float = 25.0
    log_format: str = "plain"
    log_level: str = "info"
    access_log: bool = False
    baseline: str | None = None  # drift baseline JSON (mlship baseline)
    prediction_cache_entries: int = 0  # 0: no prediction cache
    prediction_cache_bytes: int = 64 * 1024 * 1024
    prediction_cache_ttl_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.model and not self.models:
            raise ValueError("model: a path to an .onnx file is required")
        if self.model and self.models:
            raise ValueError("models: give either model (one .onnx file) or models (a "
                             "repository file of several), not both")
        if not self.model_name and self.model:
            object.__setattr__(self, "model_name", Path(self.model.split("?")[0]).stem)
        if self.model_sha256 is not None:
            object.__setattr__(self, "model_sha256", self.model_sha256.strip().lower())
            _check(len(self.model_sha256) == 64 and all(
                c in "0123456789abcdef" for c in self.model_sha256), "model_sha256",
                self.model_sha256, "64 hex digits")
        for name in ("track", "revision"):
            # Constant labels on every metric series: keep them short and unquoted-safe.
            _check(_LABEL_VALUE.match(getattr(self, name)) is not None, name,
                   getattr(self, name), "at most 63 of [A-Za-z0-9._-]")
        _check(self.s3_addressing_style in S3_ADDRESSING, "s3_addressing_style",
               self.s3_addressing_style, f"one of {S3_ADDRESSING}")
        # 0 is what the rendered ConfigMap uses for "let the runtime decide".
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                object.__setattr__(self, name, None)
        if self.log_format == "text":
            object.__setattr__(self, "log_format", "plain")
        _check(self.provider in PROVIDERS, "provider", self.provider, f"one of {PROVIDERS}")
        _check(self.log_format in LOG_FORMATS, "log_format", self.log_format,
               f"one of {LOG_FORMATS}")
        _check(self.execution in EXECUTIONS, "execution", self.execution, f"one of {EXECUTIONS}")
        _check(self.log_level in LOG_LEVELS, "log_level", self.log_level, f"one of {LOG_LEVELS}")
        _check(0 <= self.port <= 65535, "port", self.port, "0..65535")
        _check(self.workers >= 1, "workers", self.workers, ">= 1")
        _check(self.max_batch_size >= 1, "max_batch_size", self.max_batch_size, ">= 1")
        _check(0 <= self.max_queue_delay_ms <= 1000, "max_queue_delay_ms",
               self.max_queue_delay_ms, "0..1000")
        _check(self.max_queue_size >= 1, "max_queue_size", self.max_queue_size, ">= 1")
        _check(self.max_body_bytes >= 1024, "max_body_bytes", self.max_body_bytes, ">= 1024")
        _check(self.request_timeout_s > 0, "request_timeout_s", self.request_timeout_s, "> 0")
        _check(self.drain_grace_s >= 0, "drain_grace_s", self.drain_grace_s, ">= 0")
        _check(self.prediction_cache_entries >= 0, "prediction_cache_entries",
               self.prediction_cache_entries, ">= 0 (0 turns the cache off)")
        _check(self.prediction_cache_bytes >= 1, "prediction_cache_bytes",
               self.prediction_cache_bytes, ">= 1")
        _check(self.prediction_cache_ttl_s > 0, "prediction_cache_ttl_s",
               self.prediction_cache_ttl_s, "> 0")

    def replace(self, **changes: Any) -> RuntimeSettings:
        return dataclasses.replace(self, **changes)


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _parse_optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("", "none", "auto") else int(text)


def _parse_optional_str(text: str) -> str | None:
    return text or None


_PARSERS: dict[str, Any] = {
    "model": str, "models": _parse_optional_str, "model_name": str,
    "model_version": _parse_optional_str,
    "model_sha256": _parse_optional_str, "cache_dir": _parse_optional_str,
    "track": str, "revision": str,
    "s3_addressing_style": str.lower, "host": str,
    "port": int, "workers": int, "provider": str.lower, "intra_op_threads": _parse_optional_int,
    "inter_op_threads": _parse_optional_int, "batching": _parse_bool,
    "execution": str.lower, "max_batch_size": int,
    "max_queue_delay_ms": float, "max_queue_size": int, "max_body_bytes": int,
    "request_timeout_s": float, "drain_grace_s": float, "log_format": str.lower,
    "log_level": str.lower, "access_log": _parse_bool,
    "baseline": _parse_optional_str,
    "prediction_cache_entries": int, "prediction_cache_bytes": int,
    "prediction_cache_ttl_s": float,
}

_HELP: dict[str, str] = {
    "models": "a repository file (JSON) listing several models, each with its own settings, "
              "and pipelines chaining them, or that JSON document itself; instead of --model "
              "(docs/runtime-api.md)",
    "model": "the .onnx file to serve: a path, s3://BUCKET/KEY (or a pushed s3://BUCKET/PREFIX/) "
             "or http(s)://URL, downloaded into the cache and verified before loading",
    "model_sha256": "sha256 the model file must have; required for a remote model without an "
                    "mlship-manifest.json beside it",
    "cache_dir": "where remote models are downloaded (default: $XDG_CACHE_HOME/mlship/models "
                 "or ~/.cache/mlship/models)",
    "s3_addressing_style": "S3 addressing: auto (path-style for a custom AWS_ENDPOINT_URL, "
                           "virtual-hosted for AWS), path or virtual",
    "model_name": "name in the URL (default: the file stem)",
    "model_version": "version reported in metadata and metrics",
    "track": "label track=VALUE on every metric (mlship rollout sets canary on a canary)",
    "revision": "label revision=VALUE on every metric (which canary attempt this process is)",
    "provider": "execution provider: auto picks TensorRT > CUDA > CPU, falling back to CPU",
    "intra_op_threads": "onnxruntime intra-op threads (default: CPUs this process may use)",
    "inter_op_threads": "onnxruntime inter-op threads (default: 1)",
    "batching": "merge concurrent requests into one inference (true/false)",
    "execution": "where inference runs: loop (event loop), thread, or auto (loop when a full "
                 "batch takes under 4 ms)",
    "max_queue_delay_ms": "longest a queued request waits for companions while a batch runs",
    "max_queue_size": "requests waiting beyond this get 503 with Retry-After",
    "drain_grace_s": "after SIGTERM, how long in-flight requests may take to finish",
    "baseline": "drift baseline written by `mlship baseline`: export per-feature input "
                "statistics against it (docs/drift.md); off when unset",
    "prediction_cache_entries": "cache the outputs of up to this many distinct requests (0: off); "
                                "only for deterministic models, see docs/runtime-api.md",
    "prediction_cache_bytes": "bound on the bytes of cached output tensors",
    "prediction_cache_ttl_s": "seconds a cached output may be served after it was computed",
}


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Typed values of every ``MLSHIP_RUNTIME_<FIELD>`` present in ``environ``."""
    values: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{name.upper()}: {exc}") from None
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlship_runtime",
        description="Serve one ONNX model over the Open Inference Protocol v2 (REST). Every "
                    f"option can also be set as an {ENV_PREFIX}<OPTION> environment variable.")
    for name, parse in _PARSERS.items():
        flag = "--" + name.replace("_", "-")
        helptext = _HELP.get(name, "") + f" [env {ENV_PREFIX}{name.upper()}]"
        parser.add_argument(flag, dest=name, type=parse, default=None, help=helptext.strip())
    return parser


def parse_settings(argv: Sequence[str] | None = None,
                   environ: Mapping[str, str] | None = None) -> RuntimeSettings:
    """Env first, argv over it; raises ``SystemExit(2)`` (argparse) or ``ValueError``."""
    values = from_env(os.environ if environ is None else environ)
    args = build_parser().parse_args(argv)
    values.update({key: value for key, value in vars(args).items() if value is not None})
    if "model" not in values and not values.get("models"):
        raise ValueError(f"model: pass --model PATH or set {ENV_PREFIX}MODEL (or --models "
                         "FILE for several models)")
    return RuntimeSettings(**values)
