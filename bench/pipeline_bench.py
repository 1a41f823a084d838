"""A two-model pipeline served as one V2 model, beside chaining the two models from the client.

One runtime process serves models ``a`` (x [N,4] -> y) and ``b`` (y2 [N,4] -> z) and the
pipeline ``ab`` (a's y feeds b's y2), the models of runtime/tests/test_runtime_repository.py.
Side by side in interleaved passes on the same pinned core, 16 connections, batch 1, V2 JSON:

(a) pipeline requests per second;
(b) client-side chaining: a request to ``a``, then one to ``b`` with its output. Its rate is
    1 / (1/rps(a) + 1/rps(b)), measured with the same load generator; a real client adds a
    network round trip per hop on top, which this leaves out (it favours chaining);
(c) in-process onnxruntime running a then b, no HTTP: the ceiling.

Ratios (a)/(b) and (a)/(c), and p50 of (a) against p50(a) + p50(b). Usage:
``python bench/pipeline_bench.py [--seconds 2] [--passes 3]``; bounded to ~40 s; load only
ever goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import runtime_bench as rb  # noqa: E402  (puts runtime/ and runtime/tests on sys.path)
from test_runtime_repository import build_models  # noqa: E402


def start_repository(document: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = rb.free_port()
    proc = subprocess.Popen(
        rb.pinned(rb.SERVER_CPU, [sys.executable, "-m", "mlship_runtime", "--models",
                                  str(document), "--port", str(port), "--intra-op-threads", "1",
                                  "--log-level", "warning"]), env=rb.ENV)
    return proc, f"http://127.0.0.1:{port}"


def in_process_chains_per_s(paths: dict[str, Path], x: np.ndarray, seconds: float) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    a = ort.InferenceSession(str(paths["a"]), options, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(paths["b"]), options, providers=["CPUExecutionProvider"])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        (y,) = a.run(["y"], {"x": x})
        b.run(["z"], {"y2": y})
        done += 1
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per load-generator run")
    parser.add_argument("--passes", type=int, default=3, help="interleaved passes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        paths = build_models(workdir)
        document = workdir / "models.json"
        document.write_text(json.dumps({
            "models": [{"name": "a", "path": "a.onnx"}, {"name": "b", "path": "b.onnx"}],
            "pipelines": [{"name": "ab", "steps": [
                {"model": "a"}, {"model": "b", "inputs": {"y2": "a.y"}}]}]}))
        x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
        y = ort.InferenceSession(str(paths["a"])).run(["y"], {"x": x})[0]
        bodies = {"ab": rb.v2_body("x", x), "a": rb.v2_body("x", x), "b": rb.v2_body("y2", y)}
        proc, url = start_repository(document)
        try:
            rb.wait_ready(url + "/v2/health/ready", proc)
            runs: dict[str, list[dict]] = {name: [] for name in bodies}
            for _ in range(args.passes):
                for name, body in bodies.items():
                    runs[name].append(rb.load(f"{url}/v2/models/{name}/infer", body, 16,
                                              args.seconds, workdir))
        finally:
            rb.stop(proc)
        in_process = in_process_chains_per_s(paths, x, args.seconds)
    chained = [1 / (1 / a["rps"] + 1 / b["rps"]) for a, b in zip(runs["a"], runs["b"],
                                                                 strict=True)]
    ratios = [p["rps"] / c for p, c in zip(runs["ab"], chained, strict=True)]
    median = {name: {key: statistics.median(run[key] for run in found)
                     for key in ("rps", "p50_ms", "p99_ms", "errors")}
              for name, found in runs.items()}
    print(f"{'case':<48}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for label, name in (("(a) pipeline ab, one request", "ab"), ("model a alone", "a"),
                        ("model b alone", "b")):
        row = median[name]
        print(f"{label:<48}{row['rps']:>10.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
              f"{row['errors']:>8.0f}")
    print(f"{'(b) client chaining a then b (chains/s)':<48}{statistics.median(chained):>10.0f}"
          f"{median['a']['p50_ms'] + median['b']['p50_ms']:>9.2f}")
    print(f"{'(c) in-process a then b (chains/s)':<48}{in_process:>10.0f}")
    print(f"\n(a) / (b) pipeline / client chaining   {statistics.median(ratios):5.2f}   "
          "(> 1: one request instead of two; real clients also save a round trip)")
    print(f"(a) / (c) pipeline / in-process        {median['ab']['rps'] / in_process:5.2f}")


if __name__ == "__main__":
    main()
