"""``models:`` and ``pipelines:`` in mlship.yaml: validation, and what render hands the runtime."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from mlship_testsupport import CONFIG_CASES

from mlship.config.load import validate_config
from mlship.errors import ConfigError
from mlship.render.bundle import render

SHA_A = "a" * 64
SHA_B = "b" * 64


def _config(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "search",
        "model": {"source": "s3://models/embed.onnx", "sha256": SHA_A, "size_bytes": 10**8},
        "models": [{"name": "rank", "source": "s3://models/rank.onnx", "sha256": SHA_B,
                    "size_bytes": 5 * 10**7}],
        "pipelines": [{"name": "search-rank", "steps": [
            {"model": "search"}, {"model": "rank", "inputs": {"x": "search.y"}}]}],
    }
    raw.update(changes)
    return raw


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(raw)
    return str(caught.value)


@pytest.mark.parametrize(("change", "expected"), [
    ({"models": [{"name": "search", "source": "s3://models/r.onnx"}]},
     "mlship.yaml: models[0].name: 'search' is invalid: already names the app"),
    ({"pipelines": [{"name": "rank", "steps": [{"model": "search"}]}]},
     "mlship.yaml: pipelines[0].name: 'rank' is invalid: already names models[0]"),
    ({"models": [{"name": "rank", "source": "rank.onnx"}]},
     "mlship.yaml: models[0].source: 'rank.onnx' is invalid: must come from where "
     "model.source does (s3://)"),
    ({"pipelines": [{"name": "p", "steps": [{"model": "search"}, {"model": "ranker"}]}]},
     "mlship.yaml: pipelines[0].steps[1].model: 'ranker' is invalid: unknown model"),
    ({"pipelines": [{"name": "p", "steps": [
        {"model": "search"}, {"model": "rank", "inputs": {"x": "embed.y"}}]}]},
     "mlship.yaml: pipelines[0].steps[1].inputs.x: 'embed.y' is invalid: expected STEP.TENSOR"),
    ({"pipelines": [{"name": "p", "steps": [{"model": "search", "inputs": {"x": "request.x"}}]}]},
     "mlship.yaml: pipelines[0].steps[0].inputs: dict is invalid: the first step takes the "
     "request's inputs"),
    ({"pipelines": [{"name": "p", "steps": []}]},
     "mlship.yaml: pipelines.0.steps: list is invalid"),
])
def test_mistakes_name_the_key_and_what_fits(change: dict[str, Any], expected: str) -> None:
    assert _error(_config(**change)).startswith(expected)


def test_a_model_on_another_claim_is_refused() -> None:
    raw = _config(model={"source": "pvc://models/embed.onnx"},
                  models=[{"name": "rank", "source": "pvc://other/rank.onnx"}])
    assert "must be on model.source's claim: pvc://models/PATH" in _error(raw)


def _rendered(raw: dict[str, Any]) -> dict[str, str]:
    return render(validate_config(raw), None).files


def _configmap_env(files: dict[str, str]) -> dict[str, str]:
    return yaml.safe_load(files["k8s/configmap.yaml"])["data"]


def test_the_runtime_gets_the_whole_repository_and_no_single_model_settings() -> None:
    env = _configmap_env(_rendered(_config(drift={"enabled": False})))
    assert "MLSHIP_RUNTIME_MODEL" not in env
    assert "MLSHIP_RUNTIME_MODEL_NAME" not in env
    assert "MLSHIP_RUNTIME_MODEL_SHA256" not in env  # per model, inside the document
    document = json.loads(env["MLSHIP_RUNTIME_MODELS"])
    assert document == {
        "models": [
            {"name": "search", "path": "s3://models/embed.onnx", "version": "1", "sha256": SHA_A},
            {"name": "rank", "path": "s3://models/rank.onnx", "version": "1", "sha256": SHA_B}],
        "pipelines": [{"name": "search-rank", "steps": [
            {"model": "search"}, {"model": "rank", "inputs": {"x": "search.y"}}]}]}


def test_the_runtime_parses_what_render_writes() -> None:
    from mlship_runtime.repository import read
    from mlship_runtime.settings import RuntimeSettings

    env = _configmap_env(_rendered(_config()))
    repository = read(env["MLSHIP_RUNTIME_MODELS"],
                      RuntimeSettings(models=env["MLSHIP_RUNTIME_MODELS"]))
    assert [m.name for m in repository.models] == ["search", "rank"]
    assert repository.models[1].settings.model_sha256 == SHA_B
    assert [p.name for p in repository.pipelines] == ["search-rank"]


def test_one_model_keeps_the_single_model_settings() -> None:
    raw = _config(models=[], pipelines=[])
    env = _configmap_env(_rendered(raw))
    assert "MLSHIP_RUNTIME_MODELS" not in env
    assert env["MLSHIP_RUNTIME_MODEL"] == "s3://models/embed.onnx"
    assert env["MLSHIP_RUNTIME_MODEL_SHA256"] == SHA_A


def test_the_download_cache_and_startup_budget_hold_every_model() -> None:
    def sized(raw: dict[str, Any]) -> tuple[str, int]:
        deployment = yaml.safe_load(_rendered(raw)["k8s/deployment.yaml"])
        pod = deployment["spec"]["template"]["spec"]
        cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
        startup = pod["containers"][0]["startupProbe"]
        return cache["emptyDir"]["sizeLimit"], startup["failureThreshold"]

    alone_cache, alone_budget = sized(_config(models=[], pipelines=[]))
    both_cache, both_budget = sized(_config(pipelines=[]))
    assert int(both_cache.removesuffix("Mi")) > int(alone_cache.removesuffix("Mi")) + 47
    assert both_budget >= alone_budget


def test_every_models_sha256_is_in_the_image_tag() -> None:
    def tag(raw: dict[str, Any]) -> str:
        deployment = yaml.safe_load(_rendered(raw)["k8s/deployment.yaml"])
        return deployment["spec"]["template"]["spec"]["containers"][0]["image"]

    base = _config()
    other = copy.deepcopy(base)
    other["models"][0]["sha256"] = "c" * 64
    assert tag(base) != tag(other)
    assert tag(_config(models=[], pipelines=[])).endswith(f":model-{SHA_A[:12]}")


def test_drift_baseline_goes_to_the_main_model_in_the_document() -> None:
    raw = yaml.safe_load((CONFIG_CASES / "drift.yaml").read_text())
    raw["model"] = {"source": "s3://models/embed.onnx", "sha256": SHA_A}
    raw["models"] = [{"name": "rank", "source": "s3://models/rank.onnx"}]
    raw["drift"]["baseline"] = str(CONFIG_CASES / "drift-baseline.json")
    env = _configmap_env(render(validate_config(raw), None).files)
    assert "MLSHIP_RUNTIME_BASELINE" not in env  # a process option is refused with a document
    main, rank = json.loads(env["MLSHIP_RUNTIME_MODELS"])["models"]
    assert main["baseline"] == "/etc/mlship/drift/baseline.json"
    assert "baseline" not in rank


def test_the_batch_job_runs_the_main_model_by_name() -> None:
    raw = _config(batch={"enabled": True, "input": "s3://in/", "output": "s3://out/"})
    cronjob = yaml.safe_load(_rendered(raw)["k8s/cronjob.yaml"])
    args = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-4:] == ["--model", "s3://models/embed.onnx", "--model-sha256", SHA_A]
