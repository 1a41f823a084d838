"""`-o -` / `--out -` means stdout on every command that writes files (never a folder named
`-`), refused next to --json (both want stdout) and, for binary output, onto a terminal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlship_contract import check_failure, clean_env, mlship


@pytest.fixture
def project(tmp_path: Path, iris_model: Path) -> Path:
    shutil.copyfile(iris_model, tmp_path / "model.onnx")
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump(
        {"name": "iris", "model": {"source": "model.onnx"}}))
    np.save(tmp_path / "samples.npy",
            np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32))
    return tmp_path


def _binary(*args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mlship", *args], cwd=cwd, env=clean_env(env),
                          capture_output=True, timeout=600, check=False)


def test_render_out_dash_prints_the_manifests_as_one_stream(project: Path) -> None:
    run = mlship("render", "-o", "-", cwd=project)
    assert run.code == 0, run
    objects = list(yaml.safe_load_all(run.stdout))
    kinds = [obj["kind"] for obj in objects]
    assert kinds[:2] == ["Namespace", "ServiceAccount"]  # apply order, as kubectl takes it
    assert "Deployment" in kinds
    assert not (project / "-").exists()
    assert "not written: .dockerignore, Dockerfile" in run.stderr
    both = mlship("render", "-o", "-", "--json", cwd=project)
    assert check_failure(("render",), both.stdout, 2)["error"]["message"] == \
        "--out - and --json both want stdout"


def test_init_and_baseline_and_ci_print_their_file(project: Path) -> None:
    from mlship.config.load import validate_config

    init = mlship("init", "model.onnx", "-c", "-", cwd=project)
    assert init.code == 0, init
    assert validate_config(yaml.safe_load(init.stdout)).model.source == "model.onnx"
    assert not (project / "-").exists()
    baseline = mlship("baseline", "-i", "samples.npy", "-m", "model.onnx", "-o", "-",
                      cwd=project)
    assert baseline.code == 0, baseline
    from mlship_runtime.drift import parse_baseline

    parse_baseline(json.loads(baseline.stdout), "stdout")  # the runtime's own check
    assert not (project / "-").exists()
    workflow = mlship("ci", "github", "--mlship-source", "mlship==0.1", "-o", "-", cwd=project)
    assert workflow.code == 0, workflow
    assert "jobs" in yaml.safe_load(workflow.stdout)


def test_optimize_writes_one_variant_to_stdout(project: Path) -> None:
    import onnx

    run = _binary("optimize", "model.onnx", "--variants", "optimized", "--runs", "1",
                  "--batch", "2", "-o", "-", cwd=project)
    assert run.returncode == 0, run.stderr.decode()
    model = onnx.load_from_string(run.stdout)
    assert [i.name for i in model.graph.input] == ["x"]
    assert b"optimized" in run.stderr  # the table went to stderr
    assert not (project / "-").exists()
    two = mlship("optimize", "model.onnx", "--variants", "fp16,optimized", "-o", "-",
                 cwd=project)
    assert two.code == 2
    assert "stdout takes one model, --variants names 2" in two.stderr


def test_batch_refuses_out_dash_saying_why(project: Path) -> None:
    (project / "in").mkdir()
    run = mlship("batch", "model.onnx", "-i", "in", "-o", "-", "--json", cwd=project)
    message = check_failure(("batch",), run.stdout, 2)["error"]["message"]
    assert message.startswith("--output -: batch writes one output file per input")


@pytest.mark.s3
def test_model_pull_writes_a_one_file_model_to_stdout(moto_s3, iris_model: Path,
                                                      tmp_path: Path) -> None:
    bucket = moto_s3.new_bucket()
    env = {key: value for key, value in moto_s3.env().items() if key.startswith("AWS_")}
    pushed = mlship("model", "push", str(iris_model), f"s3://{bucket}/iris/v1/", cwd=tmp_path,
                    env=env)
    assert pushed.code == 0, pushed.stderr
    pulled = _binary("model", "pull", f"s3://{bucket}/iris/v1/", "-o", "-", cwd=tmp_path,
                     env=env)
    assert pulled.returncode == 0, pulled.stderr.decode()
    assert pulled.stdout == iris_model.read_bytes()
    assert not (tmp_path / "-").exists()
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


def test_piped_output_keeps_a_sha256_on_one_line(iris_model) -> None:
    """Rich's 80 columns folded the sha256 over two lines when stdout is a pipe."""
    import hashlib

    run = mlship("inspect", str(iris_model))
    assert run.code == 0, run.stderr
    digest = hashlib.sha256(iris_model.read_bytes()).hexdigest()
    [line] = [line for line in run.stdout.splitlines() if line.startswith("sha256")]
    assert line.split() == ["sha256", digest]
    assert "\x1b[" not in run.stdout + run.stderr


def test_onnxruntime_lines_stay_out_of_piped_output(tmp_path: Path) -> None:
    """An unused initializer makes onnxruntime log a coloured warning at its default level;
    none reaches mlship's output, coloured or not."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    unused = numpy_helper.from_array(np.ones(3, np.float32), "unused")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y], [unused])
    model = tmp_path / "unused.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    for argv in (["inspect", str(model)],
                 ["optimize", str(model), "--variants", "optimized", "--runs", "2",
                  "--out", str(tmp_path / "out")]):
        run = mlship(*argv, env={"NO_COLOR": "1"})
        assert run.code == 0, run.stderr
        assert "\x1b[" not in run.stdout + run.stderr, argv
        assert "onnxruntime:" not in run.stderr, argv
