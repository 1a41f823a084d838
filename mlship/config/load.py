"""``mlship.yaml`` -> ``MlshipConfig``: the one place configuration is read and validated.

Stages downstream receive the typed, frozen ``MlshipConfig`` and never look at dicts. Every
mistake becomes one ``ConfigError`` line naming the key path, the bad value and what is
allowed (see ``mlship.config.errors``). ``MLSHIP_<KEY>[__<SUBKEY>...]`` environment variables
override keys of the file before validation, so an override is checked like the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mlship.config.schema import MlshipConfig
from mlship.errors import ConfigError

CONFIG_FILE = "mlship.yaml"
ENV_PREFIX = "MLSHIP_"


def load_config(path: Path, *, environ: dict[str, str] | None = None) -> MlshipConfig:
    """Read, override from the environment, and validate ``path``; ConfigError on any mistake."""
    from mlship.config.source import SourceError, read

    if not path.is_file():
        raise ConfigError(f"{path}: no such file",
                          hint="run `mlship init MODEL` to write one, or pass --config")
    try:
        text, raw = read(path)
    except SourceError as err:
        raise ConfigError(str(err)) from None
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

    from mlship.config.errors import describe_validation_error

    try:
        return MlshipConfig.model_validate(raw)
    except ValidationError as err:
        # No hint: the one line already says what is allowed.
        message = describe_validation_error(err, MlshipConfig, label=label, text=text,
                                            sources=sources or {})
        raise ConfigError(message) from None


def override_section(config: MlshipConfig, key: str, changes: dict[str, Any], *,
                     label: str) -> MlshipConfig:
    """``config`` with keys of one section changed (a CLI option such as --namespace), that
    section validated as the file's is; the rest of the config is already valid as it is."""
    from pydantic import ValidationError

    from mlship.config.errors import describe_validation_error

    section = getattr(config, key)
    try:
        changed = type(section).model_validate({**section.model_dump(), **changes})
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, type(section), label=label, text=None,
                                                    sources={}, prefix=(key,))) from None
    return config.model_copy(update={key: changed})


def apply_env_overrides(raw: dict[str, Any], environ: Any) -> dict[tuple[str, ...], str]:
    """Merge ``MLSHIP_REPLICAS=3`` / ``MLSHIP_IMAGE__TAG=v2`` into ``raw``; return their origin.

    Only variables whose first part names a top-level key count, so unrelated settings such as
    MLSHIP_DEBUG or the runtime's MLSHIP_RUNTIME_PORT are left alone. Values are YAML scalars.
    """
    from mlship.config.source import SourceError, parse

    top_level = set(MlshipConfig.model_fields)
    origins: dict[tuple[str, ...], str] = {}
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in variable[len(ENV_PREFIX):].split("__"))
        if path[0] not in top_level or not all(path):
            continue
        try:
            value = parse(environ[variable], variable)
        except SourceError:
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


