"""`mlship build --smoke` measures a slow model's load in its image; render sizes the probe by it.

The model is genuinely slow to load and tiny on disk: a chain of 2048x2048 MatMuls over a
ConstantOfShape, which onnxruntime's constant folding computes while it creates the session
(some 140 GFLOP), so the file is a few hundred bytes and the answer is one Add. The smoke
test reads the runtime's own ``mlship_model_load_seconds``; the figure lands in the build JSON,
the image label ``dev.mlship.load-seconds`` and mlship.yaml's ``model.load_seconds`` (comments
kept), and the rendered startupProbe window is the one that figure gives. Nothing asserts a
duration: the figures are compared with each other, never with a constant.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from mlship_contract import check_success, mlship
from onnx import TensorProto, helper, numpy_helper

from mlship.config.load import validate_config
from mlship.render.context import LOAD_BASE_S, LOAD_SAFETY, MIN_STARTUP_BUDGET_S

BASE_IMAGE = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test/base:bookworm")
LABEL = "dev.mlship.load-seconds"


def slow_to_load(path: Path, size: int = 2048, chain: int = 8) -> Path:
    """x [N, 4] -> x + mean(C^(chain+1)), C a size x size constant folded at session start."""
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c0"], value=numpy_helper.from_array(
        np.array([1.0 / size], np.float32)))]
    for index in range(chain):
        nodes.append(helper.make_node("MatMul", [f"c{index}", "c0"], [f"c{index + 1}"]))
    nodes += [helper.make_node("ReduceMean", [f"c{chain}"], ["mean"], keepdims=0),
              helper.make_node("Add", ["x", "mean"], ["y"])]
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(np.array([size, size], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def docker_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=600)


@pytest.fixture
def base_image() -> str:
    if shutil.which("docker") is None or docker_cli("image", "inspect", BASE_IMAGE,
                                                    check=False).returncode != 0:
        message = f"base image {BASE_IMAGE} missing (.ci/install-docker.sh makes it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return BASE_IMAGE


@pytest.mark.docker
@pytest.mark.slow
def test_smoke_measures_the_load_and_render_sizes_the_startup_probe_from_it(
        base_image: str, tmp_path: Path) -> None:
    project = tmp_path / "project"
    slow_to_load(project / "slow.onnx")
    assert (project / "slow.onnx").stat().st_size < 1000
    (project / "mlship.yaml").write_text(
        "# a model that takes long to load\n"
        "name: slow\n"
        "model:\n"
        "  source: slow.onnx  # tiny file, slow session\n"
        "image:\n"
        f"  base: {base_image}\n"
        f"  repository: mlship-test/slow-{os.getpid()}\n")
    unmeasured = yaml.safe_load((project / "mlship.yaml").read_text())
    run = mlship("build", "--smoke", "--json", cwd=project)
    assert run.code == 0, run.stderr[-4000:]
    doc = check_success(("build",), run.stdout)
    try:
        smoke = doc["smoke"]
        assert 0 < smoke["load_s"] <= smoke["ready_s"]  # the load is part of the start
        assert smoke["models_load_s"] == {"slow": smoke["load_s"]}
        assert smoke["recorded"] == ["model.load_seconds"]
        assert f"model load and warm-up {smoke['load_s']} s" in run.stderr
        # The label is on the image the tags (and the JSON) name: the one that gets pushed.
        labels = json.loads(docker_cli("image", "inspect", "--format",
                                       "{{json .Config.Labels}}", doc["tags"][0]).stdout)
        assert float(labels[LABEL]) == smoke["load_s"]
        assert docker_cli("image", "inspect", "--format", "{{.Id}}",
                          doc["tags"][0]).stdout.strip() == doc["image_id"]
        assert labels["dev.mlship.runtime.lock"] == doc["lock_hash"]
        # mlship.yaml gained one line, comments and all else as they were.
        text = (project / "mlship.yaml").read_text()
        assert "  source: slow.onnx  # tiny file, slow session\n" \
               f"  load_seconds: {smoke['load_s']:.2f}\n" in text
        recorded = yaml.safe_load(text)
        assert recorded["model"].pop("load_seconds") == round(smoke["load_s"], 2)
        assert recorded == unmeasured
        # The rendered startup window follows the measured figure, not the file's size.
        rendered = mlship("render", "--out", "out", cwd=project)
        assert rendered.code == 0, rendered.stderr
        deployment = yaml.safe_load((project / "out" / "k8s" / "deployment.yaml").read_text())
        probe = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        window = probe["periodSeconds"] * probe["failureThreshold"]
        measured = max(MIN_STARTUP_BUDGET_S,
                       math.ceil((LOAD_BASE_S + round(smoke["load_s"], 2)) * LOAD_SAFETY))
        assert window == math.ceil(measured / probe["periodSeconds"]) * probe["periodSeconds"]
        assert validate_config(yaml.safe_load(text)).model.load_seconds == \
            round(smoke["load_s"], 2)
        print(f"slow model: load {smoke['load_s']} s, ready {smoke['ready_s']} s, "
              f"startup window {window} s")
    finally:
        for tag in doc["tags"]:
            docker_cli("image", "rm", "-f", tag, check=False)
