"""`mlship render` of several local models and a pipeline: what lands in the image, and a
pipeline that does not fit its models refused at render with the runtime's own check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlship_contract import check_failure, mlship
from mlship_testsupport import make_model


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_model(tmp_path / "embed.onnx", weights=32)  # x [N, 4] -> y [N, 8]
    make_model(tmp_path / "rank.onnx", features=8)  # x [N, 8] -> y [N, 8]
    return tmp_path


def _write(project: Path, rank_input: str = "search.y") -> None:
    config = {"name": "search", "model": {"source": "embed.onnx"},
              "models": [{"name": "rank", "source": "rank.onnx"}],
              "pipelines": [{"name": "search-rank", "steps": [
                  {"model": "search"}, {"model": "rank", "inputs": {"x": rank_input}}],
                  "outputs": {"scores": "rank.y", "embedding": "search.y"}}]}
    (project / "mlship.yaml").write_text(yaml.safe_dump(config))


def _image_env(dockerfile: str) -> dict[str, str]:
    """The runtime stage's ENV assignments (one per continued line)."""
    stage = dockerfile.split("AS runtime", 1)[1]
    block = stage.split("\nENV ", 1)[1].split("\nCOPY", 1)[0]
    pairs = [line.strip().removesuffix("\\").strip() for line in block.splitlines()]
    return {key: json.loads(value) if value.startswith('"') else value
            for key, _, value in (pair.partition("=") for pair in pairs)}


def test_every_model_is_baked_under_its_name_and_served_from_the_image_env(project: Path) -> None:
    _write(project)
    run = mlship("render", "--out", "out", cwd=project)
    assert run.code == 0, run
    env = _image_env((project / "out" / "Dockerfile").read_text())
    assert "MLSHIP_RUNTIME_MODEL" not in env
    document = json.loads(env["MLSHIP_RUNTIME_MODELS"])
    assert [(m["name"], m["path"]) for m in document["models"]] == [
        ("search", "/models/embed.onnx"), ("rank", "/models/rank/rank.onnx")]
    assert document["pipelines"][0]["outputs"] == {"scores": "rank.y", "embedding": "search.y"}


def test_a_pipeline_that_does_not_fit_its_models_fails_at_render(project: Path) -> None:
    make_model(project / "rank.onnx", features=5)  # now needs x [N, 5]; embed gives [N, 8]
    _write(project)
    run = mlship("render", "--out", "out", "--json", cwd=project)
    assert run.code == 2, run
    check_failure(("render",), run.stdout, 2)
    first = run.stderr.strip().splitlines()[0]
    assert "pipelines[0].steps[1].inputs.x" in first, first
    assert "'search.y' is FP32 [-1, 8] but input 'x' of model 'rank' needs FP32 [-1, 5]" \
        in first, first
    assert not (project / "out").exists()  # nothing half-written
