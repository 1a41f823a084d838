"""`mlship optimize` on real pretrained CNNs: the PP-OCR models shipped inside the
``rapidocr-onnxruntime`` wheel (a test extra; the package itself is never imported, which would
need OpenCV).

The text detector (DBNet, 62 Conv) is fed synthetic lines of dark "glyphs" on white, normalised
as RapidOCR does, so its output map has real text responses to deviate from.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from mlship.cli import app
from mlship.errors import ExitCode

runner = CliRunner()
pytestmark = pytest.mark.slow


def _rapidocr_model(name: str) -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    assert spec is not None, "rapidocr-onnxruntime is a test extra: pip install '.[test]'"
    assert spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The detection model and an .npz of 4 text-like 160x320 images."""
    rng = np.random.default_rng(1)
    images = np.ones((4, 3, 160, 320), np.float32)  # white, after (x/255 - 0.5) / 0.5
    for index in range(4):
        for line in range(3):
            bottom, left = 44 + 45 * line + 3 * index, 16
            while left < 280:
                width, height = int(rng.integers(4, 14)), int(rng.integers(14, 24))
                ink = -1 + 0.2 * rng.random()
                images[index, :, bottom - height:bottom, left:left + width] = ink
                left += width + int(rng.integers(3, 8)) + (12 if rng.random() < 0.15 else 0)
    inputs = tmp_path_factory.mktemp("det") / "lines.npz"
    np.savez(inputs, x=images)
    return _rapidocr_model("ch_PP-OCRv4_det_infer.onnx"), inputs


def _run(model: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def test_int8_shrinks_the_detector_3x_and_reports_speed_and_deviation(detector, tmp_path):
    model, inputs = detector
    out = tmp_path / "out"
    result = runner.invoke(app, ["optimize", str(model), "--input", str(inputs), "--out",
                                 str(out), "--variants", "int8,optimized", "--runs", "3",
                                 "--max-deviation", "1", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    variants = {v["name"]: v for v in document["variants"]}
    int8 = variants["int8"]
    written = out / "ch_PP-OCRv4_det_infer.int8.onnx"
    assert int8["status"] == "written"
    assert int8["path"] == str(written)
    assert int8["size_ratio"] >= 3
    assert int8["size_ratio"] == pytest.approx(model.stat().st_size / written.stat().st_size)
    # The Conv weights themselves are 8-bit: ConvInteger nodes on int8 initializers.
    graph = onnx.load(str(written)).graph
    assert sum(node.op_type == "ConvInteger" for node in graph.node) >= 50
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer) >= 50
    assert int8["speedup"] == pytest.approx(document["model"]["latency_ms"] / int8["latency_ms"])
    assert int8["speedup"] > 0
    # The reported deviation is the one a user measures on the same inputs.
    feed = {"x": np.load(inputs)["x"]}
    expected = np.abs(_run(written, feed).astype(np.float64) - _run(model, feed)).max()
    assert int8["max_abs_deviation"] == pytest.approx(expected, rel=1e-5)
    assert 0 < int8["max_abs_deviation"] <= 1
    assert 0 < int8["mean_abs_deviation"] < 0.05
    assert int8["worst_output"] == "sigmoid_0.tmp_0"
    assert int8["argmax_agreement"] is None  # a probability map, not class scores
    assert variants["optimized"]["max_abs_deviation"] < 1e-4
    assert document["inputs"] == {"source": str(inputs), "shapes": {"x": [4, 3, 160, 320]}}
    assert document["batch_rows"] == 4


def test_threshold_refuses_a_variant_that_deviates_too_far(detector, tmp_path):
    model, inputs = detector
    out = tmp_path / "out"
    args = ["optimize", str(model), "--input", str(inputs), "--out", str(out), "--runs", "1",
            "--max-deviation", "0.001"]
    result = runner.invoke(app, [*args, "--variants", "uint8,optimized"])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert sorted(path.name for path in out.iterdir()) == ["ch_PP-OCRv4_det_infer.optimized.onnx"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: not written: uint8: largest deviation ")
    assert errors[0].endswith("exceeds --max-deviation 0.001 (written: optimized)")
    assert "Traceback" not in result.stderr
    assert "refused" in result.stdout  # the table still shows what was measured

    forced = runner.invoke(app, [*args, "--variants", "uint8", "--force"])
    assert forced.exit_code == 0, forced.output
    assert (out / "ch_PP-OCRv4_det_infer.uint8.onnx").is_file()


def test_classifier_reports_argmax_agreement(tmp_path):
    """The direction classifier (MobileNet, [N,2] scores) on generated 48x192 inputs."""
    model = _rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    result = runner.invoke(app, ["optimize", str(model), "--shape", "x=-1,3,48,192", "--out",
                                 str(tmp_path), "--variants", "fp16,optimized", "--runs", "2",
                                 "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["inputs"]["shapes"] == {"x": [8, 3, 48, 192]}
    assert document["max_deviation"] == {"value": 0.1, "relative": True, "absolute": 1e-05}
    for variant in document["variants"]:
        assert variant["status"] == "written"
        assert variant["argmax_agreement"] == 1.0
        assert variant["max_rel_deviation"] < 0.01
