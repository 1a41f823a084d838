"""Cost of drift accounting (``--baseline``), side by side in one run.

(a) ``DriftMonitor.observe`` per request, in process: microseconds per call for typical input
    shapes (the first 64 features are tracked), amortised over 2000 requests and one scrape,
    on the clean path and with a NaN in every request; and reduced request by request.
(b) Tiny model ([N,4]) at batch 1, V2 JSON, 16 connections: runtime req/s with ``--baseline``
    divided by the same runtime without it, interleaved passes on the same pinned core (the
    harness of bench/runtime_bench.py). Target >= 0.95: a few microseconds on a ~150 µs request.

Usage: ``python bench/drift_bench.py [--seconds 2] [--passes 3]``; bounded to ~30 s; load only
ever goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import runtime_bench as rb  # noqa: E402  (puts runtime/ and runtime/tests on sys.path)
from mlship_runtime.drift import DriftMonitor, parse_baseline  # noqa: E402

SHAPES = ((1, 4), (32, 4), (1, 64), (32, 64), (8, 256))


def baseline_document(features: int) -> dict:
    tracked = min(features, 64)
    return {"schema": "mlship.baseline/v1", "inputs": [{
        "name": "x", "rank": 2, "axis": 1, "features_total": features,
        "features": [{"index": i, "mean": 0.0, "std": 1.0, "low": -2.5, "high": 2.5}
                     for i in range(tracked)]}]}


def per_call_us(monitor: DriftMonitor, feed: dict, calls: int = 2000, repeats: int = 5) -> float:
    """Amortised: ``calls`` requests, then one scrape's flush, as a server sees them."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            monitor.observe(feed)
        monitor.flush()
        timings.append((time.perf_counter() - started) / calls)
    return min(timings) * 1e6  # the least disturbed repeat


def per_call_unbatched_us(monitor: DriftMonitor, feed: dict, calls: int = 2000) -> float:
    """Reduced one request at a time (what queueing saves)."""
    started = time.perf_counter()
    for _ in range(calls):
        monitor.observe(feed)
        monitor.flush()
    return (time.perf_counter() - started) / calls * 1e6


def bench_observe() -> dict:
    rng = np.random.default_rng(0)
    results = {}
    for rows, features in SHAPES:
        monitor = DriftMonitor([("model", "m")],
                               parse_baseline(baseline_document(features), "bench"))
        batch = rng.normal(size=(rows, features)).astype(np.float32)
        with_nan = batch.copy()
        with_nan[0, 0] = np.nan
        results[f"{rows}x{features}"] = {
            "clean_us": round(per_call_us(monitor, {"x": batch}), 2),
            "nan_us": round(per_call_us(monitor, {"x": with_nan}), 2),
            "unbatched_us": round(per_call_unbatched_us(monitor, {"x": batch}), 2)}
    return results


def bench_server(workdir: Path, seconds: float, passes: int) -> dict:
    model = rb.modelzoo.tiny_classifier(workdir / "tiny.onnx")
    baseline = workdir / "baseline.json"
    baseline.write_text(json.dumps(baseline_document(4)))
    body = rb.v2_body("x", np.array([[0.1, -0.4, 1.2, 0.3]], dtype=np.float32))
    plain, plain_url = rb.start_runtime(model)
    drift, drift_url = rb.start_runtime(model, "--baseline", str(baseline))
    urls = {"off": plain_url, "on": drift_url}
    try:
        for proc, url in ((plain, plain_url), (drift, drift_url)):
            rb.wait_ready(url + "/v2/health/ready", proc)
        for url in urls.values():
            rb.load(url + "/v2/models/tiny/infer", body, 16, 1, workdir)  # warm both paths
        rows: dict[str, list[dict]] = {name: [] for name in urls}
        for _ in range(passes):
            for name, url in urls.items():
                rows[name].append(rb.load(url + "/v2/models/tiny/infer", body, 16, seconds,
                                          workdir))
        counted = rb.httpx.get(drift_url + "/metrics").text.count(
            'mlship_input_feature_count_total{model="tiny",input="x",feature="0"}')
    finally:
        rb.stop(plain)
        rb.stop(drift)
    return {"off": rb.median_row(rows["off"]), "on": rb.median_row(rows["on"]),
            "ratio_on_off": round(statistics.median(
                on["rps"] / off["rps"] for on, off in zip(rows["on"], rows["off"],
                                                          strict=True)), 3),
            "drift_series_exported": bool(counted)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    report = {"observe_per_request": bench_observe()}
    with tempfile.TemporaryDirectory() as tmp:
        report["tiny_batch1"] = bench_server(Path(tmp), args.seconds, args.passes)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
