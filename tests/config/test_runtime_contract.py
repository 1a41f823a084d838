"""mlship.yaml's runtime: section against the runtime's own declaration of its settings.

The runtime (mlship_runtime.settings) declares every setting once; mlship.yaml binds its keys to
them (mlship.config.runtime). These tests walk every bound key and prove that mlship accepts
no value the runtime refuses, whether the value reaches the runtime as the rendered ConfigMap
(env) or as the object `mlship serve -c` passes, and that the defaults agree.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from mlship_runtime.options import parse_settings
from mlship_runtime.settings import BY_NAME, DECLARED, RuntimeSettings, SettingError
from pydantic import BaseModel

from mlship.config.load import validate_config
from mlship.config.runtime import NOT_IN_CONFIG, bound_name, runtime_values
from mlship.config.runtime import RuntimeSettings as RuntimeSection
from mlship.errors import ConfigError
from mlship.render.runtime_env import as_env, runtime_env

MODEL = {"name": "iris", "model": {"source": "s3://bucket/iris.onnx"}}


def _bound(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                                             str]]:
    """(key path under runtime:, runtime setting) for every bound key of the section."""
    found = []
    for key, info in model.model_fields.items():
        name = bound_name(info)
        if name is not None:
            found.append(((*prefix, key), name))
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found.extend(_bound(info.annotation, (*prefix, key)))
    return found


BOUND = _bound(RuntimeSection)


def _candidates(name: str) -> list[Any]:
    """Values around every bound and every choice of the runtime's declaration, and junk."""
    declared = BY_NAME[name]
    spec = declared.spec
    values: list[Any] = [None, "", "x", "0", -1, 0, 1, 1.5, True, 10**12, math.inf, math.nan]
    for edge in (spec.minimum, spec.maximum, spec.above):
        if edge is not None:
            values += [edge - 1, edge - 0.5, edge, edge + 0.5, edge + 1]
    values += [*spec.choices, *spec.aliases, *(choice.upper() for choice in spec.choices)]
    values.append(declared.default)
    return values


def _config_with(path: tuple[str, ...], value: Any) -> Any:
    # The cache's and the payload log's settings reach the pod only with them on.
    switch = {"prediction_cache": ("entries", 1), "payload_log": ("target", "-")}.get(path[0])
    section: dict[str, Any] = {path[0]: {switch[0]: switch[1]}} \
        if switch and path[-1] != switch[0] else {}
    target = section
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value
    return validate_config({**MODEL, "runtime": section})


def test_every_runtime_setting_is_bound_or_left_out_for_a_reason() -> None:
    bound = {name for _, name in BOUND}
    assert len(bound) == len(BOUND), "two keys of mlship.yaml bound to one runtime setting"
    declared = {item.name for item in DECLARED}
    assert bound | set(NOT_IN_CONFIG) == declared
    assert not bound & set(NOT_IN_CONFIG)


@pytest.mark.parametrize(("path", "name"), BOUND, ids=[".".join(p) for p, _ in BOUND])
def test_mlship_accepts_nothing_the_runtime_refuses(path: tuple[str, ...], name: str) -> None:
    accepted = 0
    for value in _candidates(name):
        try:
            config = _config_with(path, value)
        except ConfigError as err:
            refused = err.message
        else:
            refused = ""
        if refused:
            assert ".".join(("runtime", *path)) in refused
            continue
        accepted += 1
        written = runtime_values(config.runtime)[name]
        # As the pod gets it: the rendered ConfigMap's variable, parsed by the runtime.
        env = runtime_env(config, as_env({"model": "/models/iris.onnx"}))
        from_env = parse_settings([], {key: val for key, val in env.items()
                                       if key.startswith("MLSHIP_RUNTIME_")})
        # As `mlship serve -c` passes it: an object.
        direct = RuntimeSettings(model="m.onnx", **{name: written})
        assert getattr(from_env, name) == getattr(direct, name), (path, value)
    assert accepted, f"runtime.{'.'.join(path)}: not even the default is accepted"


@pytest.mark.parametrize(("path", "name"), BOUND, ids=[".".join(p) for p, _ in BOUND])
def test_out_of_range_values_name_the_key_and_what_fits(path: tuple[str, ...], name: str) -> None:
    kind = BY_NAME[name].kind
    for value in _candidates(name):
        if isinstance(value, bool) != (kind is bool) or not isinstance(
                value, (int, float) if kind is float else kind):
            continue  # the other side of the type check: mlship's own types decide (pydantic)
        try:
            RuntimeSettings(model="m.onnx", **{name: value})
        except (SettingError, TypeError):
            with pytest.raises(ConfigError) as refused:
                _config_with(path, value)
            assert f"runtime.{'.'.join(path)}" in refused.value.message


def test_defaults_agree_with_what_a_pod_runs() -> None:
    config = validate_config(MODEL)
    from_config = RuntimeSettings(model="m.onnx", **runtime_values(config.runtime))
    for _, name in BOUND:
        pod = RuntimeSettings(model="m.onnx", **{name: BY_NAME[name].pod_default})
        assert getattr(from_config, name) == getattr(pod, name), name


def test_pod_defaults_differ_from_local_ones_only_where_declared() -> None:
    for declared in DECLARED:
        if declared.pod_default != declared.default:
            assert declared.spec.pod is not None, declared.name
    assert {d.name for d in DECLARED if d.pod_default != d.default} == \
        {"host", "provider", "log_format", "access_log"}


def test_max_queue_delay_beyond_the_runtime_bound_is_refused_at_the_edge() -> None:
    with pytest.raises(ConfigError) as refused:
        _config_with(("batching", "max_queue_delay_ms"), 5000)
    assert refused.value.message == ("mlship.yaml: runtime.batching.max_queue_delay_ms: 5000 is "
                                     "invalid: must be <= 1000")
