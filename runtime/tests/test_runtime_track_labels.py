"""The constant ``track``/``revision`` labels a canary's metrics carry (mlship rollout)."""

from __future__ import annotations

import pytest
from mlship_runtime.metrics import Metrics
from mlship_runtime.options import parse_settings


def test_labels_are_on_every_series_when_set():
    metrics = Metrics("iris", track="canary", revision="0123456789")
    metrics.request("infer", 200, 0.003)
    metrics.load_seconds = 0.1
    series = [line for line in metrics.render().decode().splitlines()
              if line and not line.startswith("#")]
    assert series
    assert all('{model="iris",track="canary",revision="0123456789"' in line for line in series)
    assert 'mlship_requests_total{model="iris",track="canary",revision="0123456789",' \
           'endpoint="infer",code="200"} 1' in series


def test_no_labels_when_unset_keeps_the_exposition_unchanged():
    text = Metrics("iris").render().decode()
    assert "track=" not in text
    assert "revision=" not in text
    assert 'mlship_ready{model="iris"} 0' in text


def test_settings_from_env_and_argv():
    settings = parse_settings(["--model", "m.onnx", "--revision", "abc"],
                              {"MLSHIP_RUNTIME_TRACK": "canary"})
    assert (settings.track, settings.revision) == ("canary", "abc")
    with pytest.raises(ValueError, match="track: expected at most 63 of"):
        parse_settings(["--model", "m.onnx", "--track", 'bad"quote'], {})
