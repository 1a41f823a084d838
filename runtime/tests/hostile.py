"""What the hostile-artifact tests share (test_runtime_hostile_artifacts.py and
test_runtime_hostile_manifests.py): a model with external data, a tampered copy of it, and
waiting for a start that must fail: exit code, never ready, live until the end."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import modelzoo
import numpy as np
import onnx
import onnxruntime as ort

WEIGHTS = "weights/mlp.bin"


def external_model(root: Path) -> Path:
    """The bench MLP in ``root`` with its 5 MB of weights in ``weights/mlp.bin``."""
    inline = modelzoo.mlp(root / "inline.onnx")
    (root / "weights").mkdir()
    onnx.save_model(onnx.load(str(inline)), str(root / "mlp.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=WEIGHTS, size_threshold=1024)
    inline.unlink()
    return root / "mlp.onnx"


def tampered_copy(model: Path, dest: Path) -> Path:
    """The same graph with other weights of the same size (it loads, and answers otherwise)."""
    shutil.copytree(model.parent, dest)
    weights = bytearray((dest / WEIGHTS).read_bytes())
    weights[4096:4160] = bytes(64)
    (dest / WEIGHTS).write_bytes(bytes(weights))
    return dest / model.name


def outputs(url: str, name: str) -> np.ndarray:
    x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256],
                        "data": x.ravel().tolist()}]}
    response = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32)


def reference(model: Path) -> np.ndarray:
    x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    return ort.InferenceSession(str(model)).run(None, {"x": x})[0].ravel()


def exit_never_ready(server, timeout: float = 60) -> int:
    """Poll live and ready (1 s timeouts, as a kubelet) until the process exits; assert it was
    never ready, that live answered while it ran, and that it exited within ``timeout``."""
    deadline, ready, live, live_failures = time.monotonic() + timeout, False, False, []
    while server.proc.poll() is None and time.monotonic() < deadline:
        for path in ("/v2/health/ready", "/v2/health/live"):
            try:
                status = httpx.get(server.url + path, timeout=1).status_code
            except httpx.TransportError as exc:
                status = f"{type(exc).__name__}"
            if path.endswith("ready"):
                ready |= status == 200
            elif status == 200:
                live = True
            elif live and server.proc.poll() is None:  # failed once it had been up
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.proc.wait(3)  # refused while the process is going away: fine
                if server.proc.poll() is None:
                    live_failures.append(status)
        time.sleep(0.05)
    running = server.proc.poll() is None
    code = server.stop()
    assert not running, f"still running after {timeout}s (live but never ready):\n{server.log()}"
    assert not ready, server.log()
    assert not live_failures, live_failures
    return code


def error_lines(server) -> list[str]:
    return [line for line in server.log().splitlines() if " ERROR " in line]

