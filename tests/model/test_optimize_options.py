"""`mlship optimize`: option parsing, the deviation figures, and bad input on small models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from mlship_testsupport import make_model
from typer.testing import CliRunner

from mlship.cli import app
from mlship.errors import BadInputError, ExitCode
from mlship.model.optimize import Measurement, Threshold, _compare, parse_variants
from mlship.model.probe import ProfileRequest

runner = CliRunner()


def test_threshold_combines_absolute_and_relative_tolerance():
    absolute = Threshold.parse("0.05")
    assert (absolute.value, absolute.relative, absolute.absolute) == (0.05, False, 0.05)
    assert absolute.bound(1000.0) == (0.05, "0.05 absolute")  # an absolute bound ignores scale
    relative = Threshold.parse(" 5% ")
    assert (relative.value, relative.relative) == (0.05, True)
    assert relative.bound(10.0) == (0.5, "0.05 relative (5% of 10)")
    # An all-zero output has no scale: the absolute floor judges it, and says so.
    assert relative.bound(0.0) == (1e-5, "1e-05 absolute")
    assert str(relative) == "5%"
    for bad in ("", "abc", "-1", "nan", "inf%", "5%%"):
        with pytest.raises(BadInputError, match="--max-deviation"):
            Threshold.parse(bad)


def test_parse_variants_and_shapes():
    assert parse_variants("fp16, int8,fp16") == ["fp16", "int8"]
    with pytest.raises(BadInputError, match="unknown variant 'int4'"):
        parse_variants("int8,int4")
    with pytest.raises(BadInputError, match="at least one"):
        parse_variants(" , ")
    shapes = ProfileRequest.from_options(["x=-1,3,48,192", "y=2", "z=1x3"], None).shapes
    assert shapes == {"x": (-1, 3, 48, 192), "y": (2,), "z": (1, 3)}
    for bad in ("x", "=1,2", "x=1,a", "x=0,3", "x=-2"):
        with pytest.raises(BadInputError, match="--shape"):
            ProfileRequest.from_options([bad], None)


def test_compare_deviation_nan_and_argmax():
    want = {"scores": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32),
            "map": np.array([[1.0, np.nan, 4.0]], np.float32)}
    have = {"scores": np.array([[0.6, 0.4], [0.7, 0.3]], np.float32),
            "map": np.array([[1.0, np.nan, 3.0]], np.float32)}
    result = Measurement("v", 1)
    _compare(result, want, have, {"scores"}, Threshold.parse("10%"))
    # scores: |0.1-0.6| = 0.5 of scale 0.9; map: 1.0 of scale 4 (NaN on both sides agrees).
    assert math.isclose(result.max_abs_deviation, 1.0)
    assert math.isclose(result.max_rel_deviation, 0.5 / 0.9, rel_tol=1e-6)
    assert result.worst_output == "scores"
    assert result.argmax_agreement == 0.5
    # Both outputs are over 10 % of their scale; 'map' is furthest past its bound (1 vs 0.4).
    assert not result.within_tolerance
    assert result.tolerance == "0.1 relative (10% of 4)"
    broken = Measurement("v", 1)
    _compare(broken, {"map": want["map"]}, {"map": np.array([[np.nan, np.nan, 4.0]])}, set(),
             Threshold.parse("10%"))
    assert broken.max_abs_deviation == math.inf
    assert broken.argmax_agreement is None
    words = Measurement("v", 1)
    _compare(words, {"t": np.array(["a"], dtype=object)}, {"t": np.array(["b"], dtype=object)},
             set(), Threshold.parse("10%"))
    assert words.max_rel_deviation == math.inf


def test_an_all_zero_reference_is_judged_by_the_absolute_floor():
    """The reference output is all zeros: a float32 rounding-sized deviation passes (it is
    within 1e-5), a real one does not, and neither is reported as 'inf%'."""
    zeros = {"y": np.zeros((2, 3), np.float32)}
    tiny = Measurement("fp16", 1)
    _compare(tiny, zeros, {"y": np.full((2, 3), 8.94e-8, np.float32)}, set(),
             Threshold.parse("10%"))
    assert tiny.within_tolerance
    assert tiny.tolerance == "1e-05 absolute"
    large = Measurement("int8", 1)
    _compare(large, zeros, {"y": np.full((2, 3), 0.5, np.float32)}, set(),
             Threshold.parse("10%"))
    assert not large.within_tolerance
    assert large.to_dict()["max_rel_deviation"] is None  # JSON has no infinity


def _errors(result) -> list[str]:
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(("args", "message"), [
    (["--variants", "int4"], "error: --variants: unknown variant 'int4'"),
    (["--max-deviation", "lots"], "error: --max-deviation: expected a number"),
    (["--shape", "z=1,4"], "error: --shape: unknown input 'z'; the model's inputs are ['x']"),
    (["--shape", "x=2,5"], "error: --shape: input 'x' is FP32 [-1, 4], so [2, 5] does not fit "
                           "it"),
    (["--input", "absent.npz"], "error: absent.npz: no such input file"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, args, message):
    model = make_model(tmp_path / "m.onnx")
    result = runner.invoke(app, ["optimize", str(model), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    errors = _errors(result)
    assert len(errors) == 1
    assert errors[0].startswith(message), errors
    assert not (tmp_path / "out").exists()


def test_inputs_that_do_not_fit_the_model(tmp_path):
    model = make_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 3, 4), np.float32))
    result = runner.invoke(app, ["optimize", str(model), "--input", str(tmp_path / "in.npz"),
                                 "--json"])
    assert result.exit_code == ExitCode.BAD_INPUT
    document = json.loads(result.stdout)
    assert document["schema"] == "mlship.error/v1"
    assert document["error"]["message"].startswith(
        f"{tmp_path / 'in.npz'}: onnxruntime cannot run the original model on these inputs")
    assert len(_errors(result)) == 1


def test_broken_model_file(tmp_path):
    model = tmp_path / "empty.onnx"
    model.write_bytes(b"")
    result = runner.invoke(app, ["optimize", str(model)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert _errors(result) == [f"error: {model}: the file is empty, not an ONNX model"]


def test_small_model_all_variants_json(tmp_path):
    """A MatMul model: every variant is produced, measured and written within 100 %."""
    model = make_model(tmp_path / "m.onnx", features=64, weights=64 * 256)
    out = tmp_path / "out"
    result = runner.invoke(app, ["optimize", str(model), "--out", str(out), "--runs", "2",
                                 "--variants", "int8,uint8,int8-static,fp16,optimized",
                                 "--max-deviation", "100%", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema"] == "mlship.optimize/v1"
    assert document["inputs"] == {"source": "generated at x=[1x64] (derived: the shapes the "
                                            "model declares)", "shapes": {"x": [8, 64]}}
    variants = {v["name"]: v for v in document["variants"]}
    assert list(variants) == ["int8", "uint8", "int8-static", "fp16", "optimized"]
    for name, variant in variants.items():
        path = out / f"m.{name}.onnx"
        assert variant["status"] == "written"
        assert variant["path"] == str(path)
        assert variant["size_bytes"] == path.stat().st_size
        assert variant["size_ratio"] == pytest.approx(model.stat().st_size / path.stat().st_size)
        assert variant["latency_ms"] > 0
        assert variant["throughput_rows_s"] > 0
    # 64x256 float weights dominate the file: 8 bits shrink it ~4x, 16 bits ~2x.
    assert variants["int8"]["size_ratio"] > 3
    assert 1.8 < variants["fp16"]["size_ratio"] < 2.1
    assert 0 < variants["int8"]["max_abs_deviation"] < 0.5
    assert variants["optimized"]["max_abs_deviation"] < 1e-5
    assert sorted(p.name for p in out.iterdir()) == sorted(f"m.{n}.onnx" for n in variants)


def test_failed_variant_exits_3_and_refused_exits_2():
    from mlship.errors import ModelError
    from mlship.model.optimize import DeviationError, Report, raise_for_refused

    def report(*variants: Measurement) -> Report:
        return Report(Measurement("original", 10), list(variants), 1, 1, 1,
                      Threshold(0.1, False), {})

    written = Measurement("fp16", 5, status="written")
    refused = Measurement("int8", 3, status="refused", reason="largest deviation 0.5 (...)")
    failed = Measurement("uint8", 0, status="failed", reason="RuntimeError: no kernel")
    raise_for_refused(report(written))  # nothing to say
    with pytest.raises(DeviationError) as refusal:
        raise_for_refused(report(written, refused))
    assert refusal.value.exit_code == ExitCode.BAD_INPUT
    assert refusal.value.message == ("not written: int8: largest deviation 0.5 (...) "
                                     "(written: fp16)")
    with pytest.raises(ModelError) as failure:
        raise_for_refused(report(refused, failed))
    assert failure.value.exit_code == ExitCode.MODEL
    assert failure.value.message == ("not written: uint8: RuntimeError: no kernel; int8: "
                                     "largest deviation 0.5 (...) (written: none)")


def test_the_timing_phase_reports_progress_when_piped(tmp_path) -> None:
    """The timing rounds are the longest phase: off a terminal, a line at each quarter."""
    from mlship_contract import mlship

    model = tmp_path / "m.onnx"
    make_model(model)
    run = mlship("optimize", str(model), "--variants", "optimized", "--runs", "8",
                 "--out", str(tmp_path / "out"))
    assert run.code == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "interleaved runs" in line]
    assert lines == ["timing 2 models, 8 interleaved runs"] + [
        f"timing 2 models, 8 interleaved runs: {done}/8 done" for done in (2, 4, 6)]
