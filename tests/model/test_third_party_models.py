"""Models nobody here wrote, served as a new user would serve them.

Acceptance of the input-profile work: every third-party model in ``thirdparty.MODELS`` that
in-process onnxruntime runs on its example is served by ``mlship serve MODEL`` with no options
(only a free port), becomes ready, and answers the example exactly as onnxruntime does; for the
models with dynamic spatial or sequence dims, inspect's memory estimate at the example's
profile is within 2x of the server's measured peak RSS under load at that profile. Files
onnxruntime refuses exit 3 at inspect with one line.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from mlship_contract import clean_env
from onnx import TensorProto, helper
from thirdparty import MODELS, ThirdPartyModel

from mlship.serving.client import RuntimeClient
from mlship.serving.local_server import free_loopback_port

pytestmark = pytest.mark.slow
SEED = 7


def _serve(model: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_loopback_port()
    process = subprocess.Popen([sys.executable, "-m", "mlship", "serve", str(model), "--port",
                                str(port), *args], env=clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def _stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out.decode(errors="replace")


def _in_process(model: ThirdPartyModel) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    import onnxruntime as ort

    inputs = model.example(np.random.default_rng(SEED))
    session = ort.InferenceSession(str(model.path()), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return inputs, dict(zip(names, session.run(names, inputs), strict=True))


@pytest.mark.parametrize("model", MODELS, ids=[m.id for m in MODELS])
def test_served_with_no_options_and_answers_like_onnxruntime(model: ThirdPartyModel) -> None:
    inputs, expected = _in_process(model)
    process, url = _serve(model.path())
    try:
        client = RuntimeClient(url, timeout_s=60)
        ready = client.wait_ready(timeout_s=90)
        assert ready, _stop(process)
        answer = client.infer(client.model_name(), inputs, binary=True).outputs
    finally:
        log = _stop(process)
    assert process.returncode == 0, log
    assert "Traceback" not in log
    assert set(answer) == set(expected)
    for name, want in expected.items():
        np.testing.assert_allclose(answer[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _runtime_pid(process: subprocess.Popen[bytes]) -> int:
    """`mlship serve` runs the runtime in its own process: the process itself."""
    return process.pid


DYNAMIC = [m for m in MODELS if m.dynamic and m.id in ("nudenet-320n", "ocr-det", "ocr-rec")]


@pytest.mark.parametrize("model", DYNAMIC, ids=[m.id for m in DYNAMIC])
def test_memory_estimate_at_the_profile_is_within_2x_of_the_loaded_server(
        model: ThirdPartyModel) -> None:
    inputs, _ = _in_process(model)
    shapes = ",".join(f"{name}={'x'.join(map(str, value.shape))}" for name, value in
                      inputs.items() if value.shape)
    inspected = subprocess.run([sys.executable, "-m", "mlship", "inspect", str(model.path()),
                                "--shape", shapes, "--json"], env=clean_env(),
                               capture_output=True, text=True, timeout=300, check=True)
    document = json.loads(inspected.stdout)
    assert document["profile"]["given"] is True
    assert document["memory"]["measured"] is True
    estimate = document["memory"]["estimate_bytes"]
    process, url = _serve(model.path(), "--shape", shapes, "--max-batch-size", "1")
    try:
        client = RuntimeClient(url, timeout_s=120)
        assert client.wait_ready(timeout_s=120), _stop(process)
        name = client.model_name()
        for _ in range(20):  # bounded: enough for the arena to reach its working size
            client.infer(name, inputs, binary=True)
        measured = _peak_rss(_runtime_pid(process))
    finally:
        _stop(process)
    ratio = estimate / measured
    assert 0.5 <= ratio <= 2, (f"{model.id}: estimate {estimate / 2**20:.0f} MiB, measured "
                               f"{measured / 2**20:.0f} MiB")


def _refused_models(folder: Path) -> dict[str, Path]:
    """Files onnx reads but onnxruntime refuses, each for its own reason."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    future_ir = helper.make_model(relu, opset_imports=[helper.make_opsetid("", 17)])
    future_ir.ir_version = 99
    custom = helper.make_model(
        helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
                          "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
        ir_version=8)
    models = {"future-ir": future_ir, "unknown-domain": custom}
    paths = {}
    for name, proto in models.items():
        paths[name] = folder / f"{name}.onnx"
        onnx.save(proto, str(paths[name]))
    return paths


def test_files_onnxruntime_refuses_exit_3_at_inspect_with_one_line(tmp_path: Path) -> None:
    for name, path in _refused_models(tmp_path).items():
        result = subprocess.run([sys.executable, "-m", "mlship", "inspect", str(path)],
                                env=clean_env(), capture_output=True, text=True, timeout=120,
                                check=False)
        assert result.returncode == 3, (name, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (name, result.stderr)
        assert "onnxruntime" in errors[0], errors
        assert "cannot load this model" in errors[0], errors
        assert "Traceback" not in result.stderr
        # --no-load only reads the file, which onnx itself takes.
        skipped = subprocess.run([sys.executable, "-m", "mlship", "inspect", str(path),
                                  "--no-load"], env=clean_env(), capture_output=True,
                                 text=True, timeout=120, check=False)
        assert skipped.returncode == 0, (name, skipped.stderr)
