"""Memory of a dynamic-shape model at its input profile: inspect's estimate, the server's
measured peak RSS under load at that profile, and the limit `mlship init` renders.

The model is PP-OCRv4's text detector from the ``rapidocr-onnxruntime`` wheel (a test extra):
height and width are dynamic, so memory depends on the requests. For each profile, side by
side in one run: ``mlship inspect --shape ... --batch B --json`` (the probe: the runtime's code
running the model at the profile), ``mlship serve --shape ...`` under a bounded load of
requests at the profile (VmHWM of the server process), and ``mlship init --shape ...``'s
``resources.limits.memory``. Also the probe's own overhead against the server's: the
``SERVER_OVERHEAD_BYTES`` allowance of mlship.model.probe.

Usage: ``python bench/profile_bench.py [--requests 30]``; about a minute. Loopback only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "runtime"))
from mlship.serving.client import RuntimeClient  # noqa: E402
from mlship.serving.local_server import free_loopback_port  # noqa: E402

PROFILES = ("1x3x320x320", "1x3x640x640", "1x3x960x1280")
BATCH = 4


def detector() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install '.[test]' (rapidocr-onnxruntime ships the models)")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / \
        "ch_PP-OCRv4_det_infer.onnx"


def mlship(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlship", *args], capture_output=True,
                          text=True, timeout=600, check=True)


def served_peak(model: Path, shape: str, requests: int) -> int:
    port = free_loopback_port()
    process = subprocess.Popen([sys.executable, "-m", "mlship", "serve", str(model), "--port",
                                str(port), "--shape", f"x={shape}", "--max-batch-size",
                                str(BATCH)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        client = RuntimeClient(f"http://127.0.0.1:{port}", timeout_s=120)
        if not client.wait_ready(timeout_s=120):
            raise SystemExit("the server did not become ready")
        dims = [int(d) for d in shape.split("x")]
        dims[0] = BATCH
        inputs = {"x": np.random.default_rng(0).random(dims, dtype=np.float32)}
        for _ in range(requests):
            client.infer("ch_PP-OCRv4_det_infer", inputs, binary=True)
        status = Path(f"/proc/{process.pid}/status").read_text()
        return next(int(line.split()[1]) * 1024 for line in status.splitlines()
                    if line.startswith("VmHWM:"))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    model = detector()
    print(f"model: {model.name} (x: [batch, 3, height, width]); requests of {BATCH} rows")
    header = f"{'profile':<16} {'estimate':>10} {'measured':>10} {'est/meas':>9} {'limit':>8}"
    print(header)
    print("-" * len(header))
    for shape in PROFILES:
        inspected = json.loads(mlship("inspect", str(model), "--shape", f"x={shape}",
                                      "--batch", str(BATCH), "--json").stdout)
        estimate = inspected["memory"]["estimate_bytes"]
        measured = served_peak(model, shape, args.requests)
        with tempfile.TemporaryDirectory() as folder:
            config = Path(folder) / "mlship.yaml"
            mlship("init", str(model), "--config", str(config), "--shape", f"x={shape}")
            limit = yaml.safe_load(config.read_text())["resources"]["limits"]["memory"]
        print(f"{shape:<16} {estimate / 2**20:>8.0f}Mi {measured / 2**20:>8.0f}Mi "
              f"{estimate / measured:>9.2f} {limit:>8}")
    print("init sizes the pod at runtime.batching.max_batch_size (8) rows; the estimate here is "
          f"at {BATCH}, as the server above merges at most {BATCH}.")


if __name__ == "__main__":
    main()
