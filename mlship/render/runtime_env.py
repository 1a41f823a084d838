"""How the runtime in the pod (and ``mlship serve -c`` on this machine) is told what to serve and
how: the settings of mlship.yaml's ``runtime:`` section as ``MLSHIP_RUNTIME_*`` variables, and
where each served model is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlship_runtime.settings import BY_NAME

from mlship.config.paths import MODEL_DIR
from mlship.config.runtime import runtime_values
from mlship.render.identity import ModelFacts
from mlship.render.storage import storage_env

if TYPE_CHECKING:
    from mlship.config.schema import MlshipConfig


def runtime_env(config: MlshipConfig, model_env: dict[str, str]) -> dict[str, str]:
    """The runtime's settings as ``MLSHIP_RUNTIME_<FIELD>`` env (a ConfigMap), plus user vars;
    ``model_env`` says what to serve (``mlship.render.runtime_env.model_env``)."""
    fields: dict[str, object] = {"host": BY_NAME["host"].pod_default,
                                 **runtime_values(config.runtime)}
    if not config.runtime.prediction_cache.entries:
        # Off by default: no keys, so existing ConfigMaps do not change.
        for name in ("prediction_cache_entries", "prediction_cache_bytes",
                     "prediction_cache_ttl_s"):
            del fields[name]
    if fields["provider_fallback"] == BY_NAME["provider_fallback"].pod_default:
        del fields["provider_fallback"]  # the runtime's default: existing ConfigMaps stay
    if not config.runtime.payload_log.target:  # off by default: no keys for it
        for name in [name for name in fields if name.startswith("payload_log")]:
            del fields[name]
    if config.mesh.type != "none":  # the sidecar sets x-forwarded-client-cert
        fields["trust_forwarded_client_cert"] = True
    env = as_env(fields)
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
        if model.fetched:
            paths[name] = model.source
        elif model.kind == "volume":
            _, path = model.claim_and_path
            paths[name] = f"{config.model.volume.mount_path.rstrip('/')}/{path}"
        else:
            folder = MODEL_DIR if name == config.name else f"{MODEL_DIR}/{name}"
            paths[name] = f"{folder}/{facts[name].file_name}"
    return paths


def served_values(config: MlshipConfig, paths: Mapping[str, str], *,
                  baseline: str | None = None) -> dict[str, Any]:
    """What the runtime serves, as runtime settings. One model: its path and name. Several:
    the repository document inline, carrying what would otherwise be per-model settings (the
    main model's drift ``baseline``, and the pinned sha256 of downloads)."""
    if not config.serves_repository:
        values: dict[str, Any] = {"model_name": config.name, "model": paths[config.name]}
        if config.model.profile.shapes:
            values["input_shapes"] = config.model.profile.shapes_text()
        return values
    from mlship.config.repository import repository_document

    document = repository_document(config.served_models, config.pipelines, paths,
                                   main=config.name, baseline=baseline)
    return {"models": json.dumps(document, separators=(",", ":"))}


def model_env(config: MlshipConfig, paths: Mapping[str, str], *,
              baseline: str | None = None) -> dict[str, str]:
    """``served_values`` as the image's ENV and the ConfigMap carry them."""
    return as_env(served_values(config, paths, baseline=baseline))


def as_env(values: Mapping[str, Any]) -> dict[str, str]:
    """Runtime settings as ``MLSHIP_RUNTIME_<FIELD>`` variables the runtime parses back."""
    return {BY_NAME[name].env: _env_value(value) for name, value in values.items()}


def local_settings(config: MlshipConfig, directory: Path) -> dict[str, Any]:
    """The runtime settings of ``config`` for a process on this machine (``mlship serve -c``):
    the same models, pipelines and runtime settings as the pod, from the local files (relative
    to ``directory``) or S3, with none of the pod's paths (listen address, cache, mounts)."""
    from mlship.errors import ConfigError

    paths = {}
    for name, model in config.served_models:
        if model.kind == "volume":
            raise ConfigError(f"{model.source}: a volume claim exists only in the cluster",
                              hint="serve the file itself: mlship serve PATH")
        paths[name] = model.source if model.fetched else \
            str((directory / model.source).resolve())
    baseline = config.drift.baseline if config.drift.enabled else None
    values = runtime_values(config.runtime)
    values.update(served_values(config, paths, baseline=baseline))
    sample = config.model.profile.sample
    if sample is not None and not config.serves_repository:
        values["sample"] = str((directory / sample).resolve())
    if not config.serves_repository:
        if baseline:
            values["baseline"] = baseline
        if config.model.fetched and config.model.sha256:
            values["model_sha256"] = config.model.sha256
    return values


def local_environment(config: MlshipConfig) -> dict[str, str]:
    """The AWS SDK (or GCS) variables a local process needs to reach the config's endpoint (as
    the pod's; its credentials come from this machine's own AWS or gcloud setup)."""
    return {key: value for key, value in storage_env(config).items()
            if key in ("AWS_ENDPOINT_URL", "AWS_REGION", "STORAGE_EMULATOR_HOST",
                       "MLSHIP_GCS_ENDPOINT_URL")}
