"""mlship.yaml `runtime.prediction_cache` -> the rendered ConfigMap -> the runtime's settings."""

from __future__ import annotations

import pytest
import yaml
from mlship_runtime.options import parse_settings

from mlship.config.load import validate_config
from mlship.errors import ConfigError
from mlship.render.bundle import render


def _config(**runtime: object):
    return validate_config({"name": "iris", "model": {"source": "iris.onnx"},
                            "runtime": runtime})


def _configmap(bundle) -> dict[str, str]:
    return yaml.safe_load(bundle.files["k8s/configmap.yaml"])["data"]


def test_off_by_default_renders_no_cache_keys(iris_signature) -> None:
    data = _configmap(render(_config(), iris_signature))
    assert not [key for key in data if "CACHE" in key]
    assert parse_settings([], {**data, "MLSHIP_RUNTIME_MODEL": "m.onnx"}) \
        .prediction_cache_entries == 0


def test_enabled_cache_reaches_the_runtime(iris_signature) -> None:
    config = _config(prediction_cache={"entries": 5000, "max_bytes": 2**20, "ttl_s": 30})
    data = _configmap(render(config, iris_signature))
    assert {key: value for key, value in data.items() if "CACHE" in key} == {
        "MLSHIP_RUNTIME_PREDICTION_CACHE_ENTRIES": "5000",
        "MLSHIP_RUNTIME_PREDICTION_CACHE_BYTES": "1048576",
        "MLSHIP_RUNTIME_PREDICTION_CACHE_TTL_S": "30"}
    settings = parse_settings([], {**data, "MLSHIP_RUNTIME_MODEL": "m.onnx"})
    assert (settings.prediction_cache_entries, settings.prediction_cache_bytes,
            settings.prediction_cache_ttl_s) == (5000, 2**20, 30.0)


@pytest.mark.parametrize(("section", "key"), [({"entries": -1}, "entries"),
                                              ({"entries": 1, "ttl_s": 0}, "ttl_s"),
                                              ({"size": 3}, "size")])
def test_invalid_cache_settings_name_the_key(section, key) -> None:
    with pytest.raises(ConfigError, match=rf"runtime\.prediction_cache\.{key}"):
        _config(prediction_cache=section)
