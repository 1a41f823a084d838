"""How the runtime in the pod (and ``mlship serve -c`` on this machine) is told what to serve and
how: the settings of mlship.yaml's ``runtime:`` section as ``MLSHIP_RUNTIME_*`` variables, and
where each served model is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mlship.render.identity import MODEL_DIR, ModelFacts
from mlship.render.storage import storage_env

if TYPE_CHECKING:
    from mlship.config.schema import MlshipConfig


def runtime_env(config: MlshipConfig, model_env: dict[str, str]) -> dict[str, str]:
    """The runtime's settings as ``MLSHIP_RUNTIME_<FIELD>`` env (a ConfigMap), plus user vars;
    ``model_env`` says what to serve (``mlship.render.runtime_env.model_env``)."""
    runtime = config.runtime
    batching = runtime.batching
    fields: dict[str, object] = {
        "host": "0.0.0.0",
        "port": runtime.port,
        "workers": runtime.workers,
        "provider": runtime.provider,
        "intra_op_threads": runtime.intra_op_threads,
        "inter_op_threads": runtime.inter_op_threads,
        "batching": batching.enabled,
        "max_batch_size": batching.max_batch_size,
        "max_queue_delay_ms": batching.max_queue_delay_ms,
        "max_queue_size": batching.max_queue_size,
        "max_body_bytes": runtime.max_body_bytes,
        "request_timeout_s": runtime.request_timeout_s,
        "drain_grace_s": runtime.drain_grace_s,
        "log_format": runtime.log_format,
        "log_level": runtime.log_level,
    }
    cache = runtime.prediction_cache
    if cache.entries:  # off by default: no keys, so existing ConfigMaps do not change
        fields.update(prediction_cache_entries=cache.entries,
                      prediction_cache_bytes=cache.max_bytes,
                      prediction_cache_ttl_s=cache.ttl_s)
    env = {f"MLSHIP_RUNTIME_{key.upper()}": _env_value(value) for key, value in fields.items()}
    env.update(model_env)
    env["TMPDIR"] = "/tmp"
    env["HOME"] = "/tmp"
    env.update(storage_env(config))  # S3 region, endpoint, credentials, cache (render_storage)
    if config.drift.enabled and not config.serves_repository:  # else in MLSHIP_RUNTIME_MODELS
        from mlship.render.drift import BASELINE_PATH

        env["MLSHIP_RUNTIME_BASELINE"] = BASELINE_PATH
    env.update(config.env.vars)
    return dict(sorted(env.items()))


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def model_paths(config: MlshipConfig, facts: Mapping[str, ModelFacts]) -> dict[str, str]:
    """Where the runtime finds each served model: the URI, the file on the volume, or the file
    baked under /models (a model of ``models`` in /models/NAME/, beside its external data)."""
    paths = {}
    for name, model in config.served_models:
        if model.kind == "s3":
            paths[name] = model.source
        elif model.kind == "volume":
            _, path = model.claim_and_path
            paths[name] = f"{config.model.volume.mount_path.rstrip('/')}/{path}"
        else:
            folder = MODEL_DIR if name == config.name else f"{MODEL_DIR}/{name}"
            paths[name] = f"{folder}/{facts[name].file_name}"
    return paths


def model_env(config: MlshipConfig, paths: Mapping[str, str], *,
              baseline: str | None = None) -> dict[str, str]:
    """How the runtime is told what to serve. One model: its path and name. Several: the
    repository document inline, carrying what would otherwise be per-model variables (the
    main model's drift ``baseline``, and the pinned sha256 of downloads)."""
    if not config.serves_repository:
        return {"MLSHIP_RUNTIME_MODEL_NAME": config.name,
                "MLSHIP_RUNTIME_MODEL": paths[config.name]}
    from mlship.config.repository import repository_document

    document = repository_document(config.served_models, config.pipelines, paths,
                                   main=config.name, baseline=baseline)
    return {"MLSHIP_RUNTIME_MODELS": json.dumps(document, separators=(",", ":"))}


# Settings that only make sense inside the pod: its listen address, its cache and mounts.
_POD_ONLY = ("MLSHIP_RUNTIME_HOST", "MLSHIP_RUNTIME_CACHE_DIR", "MLSHIP_RUNTIME_BASELINE")


def local_env(config: MlshipConfig, directory: Path) -> dict[str, str]:
    """The runtime settings of ``config`` for a process on this machine (``mlship serve -c``):
    the same models, pipelines and runtime settings as the pod, from the local files (relative
    to ``directory``) or S3, with none of the pod's paths; the S3 endpoint and region too."""
    from mlship.errors import ConfigError
    from mlship.render.runtime_env import runtime_env

    paths = {}
    for name, model in config.served_models:
        if model.kind == "volume":
            raise ConfigError(f"{model.source}: a volume claim exists only in the cluster",
                              hint="serve the file itself: mlship serve PATH")
        paths[name] = model.source if model.kind == "s3" else \
            str((directory / model.source).resolve())
    baseline = config.drift.baseline if config.drift.enabled else None
    env = {key: value for key, value in runtime_env(config, {}).items()
           if key.startswith(("MLSHIP_RUNTIME_", "AWS_ENDPOINT_URL", "AWS_REGION"))
           and key not in _POD_ONLY}
    env.update(model_env(config, paths, baseline=baseline))
    if baseline and not config.serves_repository:
        env["MLSHIP_RUNTIME_BASELINE"] = baseline
    return env
