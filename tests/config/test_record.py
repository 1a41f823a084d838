"""Recording a measured figure in mlship.yaml: one value changes, every comment stays."""

from __future__ import annotations

import pytest
import yaml

from mlship.config.load import validate_config
from mlship.config.record import dotted, record

CONFIG = """\
# the app
name: iris   # DNS label
model:
  source: model.onnx  # baked
  sha256: null
  profile:
    shapes: {x: [1, 4]}
models:
  - name: rank
    source: rank.onnx
"""


def test_a_new_key_goes_on_its_own_line_beside_what_init_recorded() -> None:
    edited = record(CONFIG, ("model", "load_seconds"), 12.3456)
    assert edited is not None
    assert edited.splitlines()[3:6] == ["  source: model.onnx  # baked", "  sha256: null",
                                        "  load_seconds: 12.35"]
    assert edited.replace("  load_seconds: 12.35\n", "") == CONFIG
    assert validate_config(yaml.safe_load(edited)).model.load_seconds == 12.35


def test_a_model_of_models_and_an_existing_value() -> None:
    once = record(CONFIG, ("models", 0, "load_seconds"), 3)
    assert once is not None
    assert once.endswith("  - name: rank\n    source: rank.onnx\n    load_seconds: 3.00\n")
    twice = record(once, ("models", 0, "load_seconds"), 4.5)
    assert twice == once.replace("load_seconds: 3.00", "load_seconds: 4.50")


@pytest.mark.parametrize("text", [
    "name: iris\nmodel: {source: model.onnx}\n",  # flow mapping: not edited in place
    "name: iris\n",  # no model mapping at all
    "name: [unclosed\n",  # not YAML
])
def test_what_cannot_be_edited_safely_is_left_alone(text: str) -> None:
    assert record(text, ("model", "load_seconds"), 1.0) is None


def test_dotted_names_the_key_as_errors_do() -> None:
    assert dotted(("models", 2, "load_seconds")) == "models[2].load_seconds"
    assert dotted(("model", "load_seconds")) == "model.load_seconds"


def test_a_file_init_wrote_gets_the_line_beside_size_bytes(tmp_path, iris_model) -> None:
    from mlship.model.inspect import inspect_model
    from mlship.render.init import init_text

    text = init_text(tmp_path / "mlship.yaml", iris_model, inspect_model(iris_model))
    edited = record(text, ("model", "load_seconds"), 0.5)
    assert edited is not None
    lines = edited.splitlines()
    at = next(index for index, line in enumerate(lines) if line.startswith("  size_bytes: "))
    assert lines[at + 1] == "  load_seconds: 0.50"
    assert validate_config(yaml.safe_load(edited)).model.load_seconds == 0.5


def test_build_keeps_a_recorded_figure_within_ten_percent(tmp_path) -> None:
    """What `mlship build --smoke` does with its measurement: write it, keep it for noise,
    replace it when the model's load really changed."""
    from mlship.cli.build import _record_loads

    path = tmp_path / "mlship.yaml"
    path.write_text("name: iris\nmodel:\n  source: iris.onnx  # baked\n", encoding="utf-8")

    def build(seconds: float) -> list[str]:
        config = validate_config(yaml.safe_load(path.read_text(encoding="utf-8")))
        return _record_loads(path, config, {"iris": seconds})

    assert build(10.0) == ["model.load_seconds"]
    assert build(10.9) == []  # within 10 %: the file is not touched
    assert "load_seconds: 10.00" in path.read_text(encoding="utf-8")
    assert build(20.0) == ["model.load_seconds"]
    assert path.read_text(encoding="utf-8") == (
        "name: iris\nmodel:\n  source: iris.onnx  # baked\n  load_seconds: 20.00\n")
