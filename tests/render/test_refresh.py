"""mlship.render.refresh: only the recorded facts' value spans change, whatever the layout."""

from __future__ import annotations

import pytest

from mlship.errors import ConfigError
from mlship.render.refresh import refresh_text

SHA = "b" * 64


def test_values_are_replaced_in_place_and_comments_kept() -> None:
    text = ("name: iris  # mine\nmodel:\n  source: m.onnx   # trailing\n"
            f"  sha256: '{'a' * 64}'  # init wrote it\n  size_bytes: 10\n"
            "  profile:\n    shapes: {x: [1, 4]}\nreplicas: 2\n")
    done = refresh_text(text, "mlship.yaml", {"sha256": SHA, "size_bytes": 12,
                                              "profile.shapes": {"x": [8, 4]}})
    assert done.text == text.replace(f"'{'a' * 64}'", f'"{SHA}"').replace(
        "size_bytes: 10", "size_bytes: 12").replace("{x: [1, 4]}", '{"x": [8, 4]}')
    assert done.changed["size_bytes"] == {"from": 10, "to": 12}
    assert refresh_text(done.text, "mlship.yaml", {"sha256": SHA}).changed == {}


def test_a_removed_fact_is_added_under_model() -> None:
    after_source = refresh_text("model:\n  source: m.onnx\nreplicas: 2\n", "f", {"sha256": SHA})
    assert after_source.text == f'model:\n  source: m.onnx\n  sha256: "{SHA}"\nreplicas: 2\n'
    before_block = refresh_text("model:\n    profile:\n      shapes: {}\n", "f",
                                {"size_bytes": 3})
    assert before_block.text == "model:\n    size_bytes: 3\n    profile:\n      shapes: {}\n"


@pytest.mark.parametrize(("text", "facts", "words"), [
    ("model: {source: m.onnx}\n", {"sha256": SHA}, "model: is not a block mapping"),
    ("model:\n  source: m.onnx\n  profile:\n    shapes:\n      x: [1, 4]\n",
     {"profile.shapes": {"x": [2, 4]}}, "model.profile.shapes is written in block style"),
])
def test_what_cannot_be_edited_in_place_is_refused(text: str, facts: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        refresh_text(text, "mlship.yaml", facts)
