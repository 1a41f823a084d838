"""`mlship batch`: the runtime's batch runner behind mlship's output contract."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
from mlship_contract import check_failure, check_success
from typer.testing import CliRunner

from mlship.cli import app

runner = CliRunner()


def test_batch_json_summary_and_resume(iris_model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    x = np.linspace(-1, 1, 40, dtype=np.float32).reshape(10, 4)
    np.save(inputs / "a.npy", x)
    (inputs / "b.jsonl").write_text('{"x": [1, 2, 3, 4]}\n{"x": [0, 0, 1, 1]}\n')
    (inputs / "c.jsonl").write_text("[0.5, 0.5, 0.5, 0.5]\n")  # bare rows: single-input models
    out = tmp_path / "out"
    result = runner.invoke(app, ["batch", str(iris_model), "--input", str(inputs),
                                 "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = check_success(("batch",), result.stdout)
    assert (doc["files"], doc["written"], doc["skipped"], doc["failed"], doc["rows"]) == (
        3, 3, 0, 0, 13)
    assert "[1/3] a.npy: written (10 rows" in result.stderr
    want = onnxruntime.InferenceSession(str(iris_model)).run(None, {"x": x})[0]
    with np.load(out / "a.out.npz") as saved:
        np.testing.assert_allclose(saved["y"], want, rtol=1e-6)
    lines = [json.loads(line) for line in (out / "b.out.jsonl").read_text().splitlines()]
    want_b = onnxruntime.InferenceSession(str(iris_model)).run(
        None, {"x": np.array([[1, 2, 3, 4], [0, 0, 1, 1]], dtype=np.float32)})[0]
    np.testing.assert_allclose(np.array(lines, dtype=np.float32), want_b, rtol=1e-6)
    assert len((out / "c.out.jsonl").read_text().splitlines()) == 1
    again = runner.invoke(app, ["batch", str(iris_model), "-i", str(inputs), "-o", str(out),
                                "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["skipped"] == 3


def test_batch_failed_inputs_exit_2_and_keep_written_outputs(iris_model, tmp_path):
    np.save(tmp_path / "good.npy", np.zeros((2, 4), dtype=np.float32))
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5), dtype=np.float32))
    result = runner.invoke(app, ["batch", str(iris_model), "--input", str(tmp_path), "--json"])
    assert result.exit_code == 2, result.output
    error = check_failure(("batch",), result.stdout, 2)["error"]
    assert error["type"] == "BadInputError"
    assert error["message"].startswith(f"1 of 2 input file(s) failed; first: "
                                       f"{tmp_path / 'wrong.npy'}: input 'x': expected shape")
    assert (tmp_path / "good.out.npz").is_file()
    assert not (tmp_path / "wrong.out.npz").exists()


def test_batch_missing_input_directory_is_a_storage_error(iris_model, tmp_path):
    result = runner.invoke(app, ["batch", str(iris_model), "--input", str(tmp_path / "nope"),
                                 "--json"])
    assert result.exit_code == 11
    check_failure(("batch",), result.stdout, 11)
    assert f"error: {tmp_path / 'nope'}: no such directory" in result.stderr
