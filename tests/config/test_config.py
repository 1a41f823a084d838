"""mlship.yaml validation: typed defaults, one-line errors with key paths, env overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlship.config.load import apply_env_overrides, json_schema_text, load_config, validate_config
from mlship.errors import ConfigError, ExitCode

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"name": "iris", "model": {"source": "iris.onnx"}}


def _with(**sections: object) -> dict:
    return {**MINIMAL, **sections}


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(raw)
    assert caught.value.exit_code == ExitCode.BAD_INPUT
    assert "\n" not in caught.value.message
    return caught.value.message


def test_minimal_config_gets_hardened_defaults() -> None:
    config = validate_config(MINIMAL)
    assert config.replicas == 2
    assert config.model.kind == "image"
    assert config.base_image == "python:3.11-slim-bookworm"
    assert config.network_policy.enabled
    assert config.namespace.name == "mlship"
    assert config.image.size_budget_mb == 110
    assert config.runtime.drain_grace_s == 25


def test_config_is_immutable() -> None:
    config = validate_config(MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        config.replicas = 3  # type: ignore[misc]


@pytest.mark.parametrize(("raw", "expected"), [
    (_with(replicas=-1), "mlship.yaml: replicas: -1 is invalid: must be >= 0"),
    (_with(replicas="three"), "mlship.yaml: replicas: 'three' is invalid: must be an integer"),
    (_with(replica=3), "mlship.yaml: replica: unknown key; did you mean 'replicas'?"),
    (_with(image={"tga": "v1"}), "mlship.yaml: image.tga: unknown key; did you mean 'tag'?"),
    ({"name": "Iris_Model", "model": {"source": "x.onnx"}},
     "mlship.yaml: name: 'Iris_Model' is invalid: must be a DNS-1123 label: lowercase letters, "
     "digits and '-', starting with a letter, at most 63 characters"),
    ({"name": "iris", "model": {"source": "s3:///model.onnx"}},
     "mlship.yaml: model.source: 's3:///model.onnx' is invalid: an s3:// URI needs a bucket: "
     "s3://BUCKET/KEY"),
    (_with(resources={"requests": {"cpu": "1", "memory": "1Gi"},
                      "limits": {"cpu": "2", "memory": "512Mi"}}),
     "mlship.yaml: resources.limits.memory: '512Mi' is invalid: must be >= requests.memory "
     "(1Gi)"),
    (_with(image={"base": "Not An Image"}),
     "mlship.yaml: image.base: 'Not An Image' is invalid: must be an image reference such as "
     "registry.example.com/team/name:tag"),
    (_with(gpu={"enabled": True}, runtime={"provider": "cuda"},
           image={"base": "python:3.11-slim-bookworm"}),
     "mlship.yaml: image.base: 'python:3.11-slim-bookworm' is invalid: a CPU-only image cannot "
     "run gpu.enabled: true; use an Ubuntu 24.04 nvidia/cuda runtime image with CUDA 12.x + "
     "cuDNN 9 (e.g. nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04)"),
    (_with(runtime={"log_level": "loud"}),
     "mlship.yaml: runtime.log_level: 'loud' is invalid: must be one of 'debug', 'info', "
     "'warning' or 'error'"),
    (_with(autoscaling={"min_replicas": 5, "max_replicas": 2}),
     "mlship.yaml: autoscaling.max_replicas: 2 is invalid: must be >= min_replicas (5)"),
    ({"name": "iris"}, "mlship.yaml: model: is required"),
])
def test_mistakes_are_one_line_with_key_path(raw: dict, expected: str) -> None:
    assert _error(raw) == expected


def test_cuda_mismatch_says_which_versions_fit() -> None:
    message = _error(_with(gpu={"enabled": True, "onnxruntime_gpu_version": "1.31.1"},
                           runtime={"provider": "cuda"},
                           image={"base": "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"}))
    assert message == (
        "mlship.yaml: image.base: 'nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04' is invalid: "
        "onnxruntime-gpu 1.31.1 is built for CUDA 13.x + cuDNN 9 (its wheel's metadata), but "
        "the image has CUDA 12.6 + cuDNN 9 (e.g. nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04)")


def test_a_gpu_version_the_lock_does_not_pin_is_refused_with_the_ones_it_does() -> None:
    """1.20.1, the old default, was never published (PyPI has 1.20.0 and 1.20.2)."""
    message = _error(_with(gpu={"enabled": True, "onnxruntime_gpu_version": "1.20.1"},
                           runtime={"provider": "cuda"}))
    assert message.startswith(
        "mlship.yaml: gpu.onnxruntime_gpu_version: '1.20.1' is invalid: not a release mlship's "
        "GPU lock pins (runtime/requirements-gpu.lock: 1.21.1, ")
    assert "1.26.0" in message
    assert "1.31.1" in message


def test_gpu_defaults_to_a_matching_cuda_base() -> None:
    config = validate_config(_with(gpu={"enabled": True}, runtime={"provider": "cuda"}))
    assert config.base_image == "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"
    newer = validate_config(_with(gpu={"enabled": True, "onnxruntime_gpu_version": "1.31"},
                                  runtime={"provider": "cuda"}))
    assert newer.base_image == "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04"
    assert newer.gpu_release is not None
    assert newer.gpu_release.version == "1.31.1"  # 1.31: the newest 1.31.x the lock pins


def test_cuda_provider_needs_gpu() -> None:
    assert _error(_with(runtime={"provider": "cuda"})) == (
        "mlship.yaml: runtime.provider: 'cuda' is invalid: needs gpu.enabled: true")


def test_unknown_top_level_key_far_from_any_lists_allowed() -> None:
    assert "allowed: config_version, name" in _error(_with(zzzzzz=1))


def test_load_config_reports_line_of_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "mlship.yaml"
    path.write_text("name: iris\nmodel:\n  source: iris.onnx\nreplicas: -2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.message == f"{path}: replicas: -2 is invalid: must be >= 0 (line 4)"


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "mlship.yaml"
    path.write_text("name: iris\nmodel:\n  source: [unclosed\nreplicas: 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.message.startswith(f"{path}: line 4, column 9: invalid YAML:")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_env_overrides_win_and_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "mlship.yaml"
    path.write_text("name: iris\nmodel:\n  source: iris.onnx\nreplicas: 2\n")
    env = {"MLSHIP_REPLICAS": "5", "MLSHIP_IMAGE__TAG_POLICY": "version",
           "MLSHIP_DEBUG": "1", "MLSHIP_RUNTIME_PORT": "9"}  # the last two are not config keys
    config = load_config(path, environ=env)
    assert config.replicas == 5
    assert config.image.tag_policy == "version"
    assert config.runtime.port == 8080
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"MLSHIP_REPLICAS": "-1"})
    assert caught.value.message == (
        f"{path}: replicas: -1 is invalid: must be >= 0 (from MLSHIP_REPLICAS)")


def test_env_override_builds_nested_sections() -> None:
    raw: dict = {"name": "iris"}
    origins = apply_env_overrides(raw, {"MLSHIP_AUTOSCALING__ENABLED": "true"})
    assert raw["autoscaling"] == {"enabled": True}
    assert origins == {("autoscaling", "enabled"): "MLSHIP_AUTOSCALING__ENABLED"}


def test_published_schema_is_up_to_date() -> None:
    published = (REPO / "docs" / "mlship.schema.json").read_text()
    assert published == json_schema_text(), "regenerate: python -m mlship.config.docs --write"


def test_schema_forbids_unknown_keys_everywhere() -> None:
    schema = json.loads(json_schema_text())
    assert schema["additionalProperties"] is False
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object":
            assert definition.get("additionalProperties") is False, name


def test_runtime_api_doc_lists_every_runtime_setting() -> None:
    from mlship.config.docs import runtime_settings_table

    doc = (REPO / "docs" / "runtime-api.md").read_text()
    assert runtime_settings_table() in doc, "regenerate: python -m mlship.config.docs --write"


def test_configuration_doc_lists_every_key() -> None:
    from mlship.config.docs import key_reference

    doc = (REPO / "docs" / "configuration.md").read_text()
    assert key_reference() in doc, "regenerate: python -m mlship.config.docs --write"
    assert "| `probes.readiness.period_s` | int >= 1 | `5` |" in key_reference()
