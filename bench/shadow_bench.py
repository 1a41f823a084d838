"""Cost of shadow mirroring on the stable runtime's live requests, side by side in one run.

Tiny model ([N,4] -> MatMul -> Softmax) at batch 1, V2 JSON, 16 connections (the harness of
bench/runtime_bench.py; stable runtime pinned to core 0, load generator and shadow on core 1):
req/s and p50/p99 of the stable runtime with mirroring

- ``off``: no shadow_url;
- ``capped``: a healthy shadow at the default cap (20 mirrored requests per second);
- ``every``: a healthy shadow, every request sampled, cap 1000/s (the most it can cost);
- ``dead``: a shadow URL nobody listens on, cap 1000/s (every send a refused connect);
- ``hung``: a shadow that accepts and never answers, cap 1000/s (queue full, drops);

each divided by ``off`` in interleaved passes (the order rotating from pass to pass), with
the mirroring counters; and ``offer``, the one call the request path makes, in process: its
microseconds per request when the request is not mirrored (over the cap) and when it is queued.
Target: ``capped`` >= 0.95; ``every``, ``dead`` and ``hung`` state the bound (no failures).
On a machine shared with other work the end-to-end ratios carry its noise (``hung`` mirrors
almost nothing: its distance from 1 is the noise); ``offer`` does not.

Usage: ``python bench/shadow_bench.py [--seconds 2] [--passes 3]``; bounded to ~1 minute; load
only ever goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import runtime_bench as rb  # noqa: E402  (puts runtime/ and runtime/tests on sys.path)

COUNTERS = ("mlship_shadow_mirrored_total", "mlship_shadow_dropped_total",
            "mlship_shadow_errors_total", "mlship_shadow_compared_total",
            "mlship_shadow_disagreed_total")


def _hung_listener() -> tuple[socket.socket, list[socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return listener, held


def _counters(url: str) -> dict[str, float]:
    text = rb.httpx.get(url + "/metrics", timeout=5).text
    totals = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        match = re.match(r"^(\w+)\{[^}]*\} (\S+)$", line)
        if match and match[1] in totals:
            totals[match[1]] += float(match[2])
    return {name.removeprefix("mlship_shadow_"): value for name, value in totals.items()}


def bench(workdir: Path, seconds: float, passes: int) -> dict:
    model = rb.modelzoo.tiny_classifier(workdir / "tiny.onnx")
    body = rb.v2_body("x", np.array([[0.1, -0.4, 1.2, 0.3]], dtype=np.float32))
    listener, held = _hung_listener()
    shadow, shadow_url = rb.start_runtime(model, cpus=rb.CLIENT_CPU)
    every = ["--shadow-max-per-second", "1000"]
    configs = {"off": [], "capped": ["--shadow-url", shadow_url],
               "every": ["--shadow-url", shadow_url, *every],
               "dead": ["--shadow-url", f"http://127.0.0.1:{rb.free_port()}", *every],
               "hung": ["--shadow-url", f"http://127.0.0.1:{listener.getsockname()[1]}",
                        *every]}
    procs = {name: rb.start_runtime(model, *args) for name, args in configs.items()}
    try:
        rb.wait_ready(shadow_url + "/v2/health/ready", shadow)
        for proc, url in procs.values():
            rb.wait_ready(url + "/v2/health/ready", proc)
        for _, url in procs.values():
            rb.load(url + "/v2/models/tiny/infer", body, 16, 1, workdir)  # warm every path
        rows: dict[str, list[dict]] = {name: [] for name in procs}
        names = list(procs)
        for index in range(passes):
            for name in names[index % len(names):] + names[:index % len(names)]:
                url = procs[name][1]
                rows[name].append(rb.load(url + "/v2/models/tiny/infer", body, 16, seconds,
                                          workdir))
        counters = {name: _counters(url) for name, (_, url) in procs.items() if name != "off"}
    finally:
        for proc, _ in procs.values():
            rb.stop(proc)
        rb.stop(shadow)
        listener.close()
        for conn in held:
            conn.close()
    report: dict = {"off": rb.median_row(rows["off"])}
    for name in configs:
        if name == "off":
            continue
        report[name] = {**rb.median_row(rows[name]), "ratio_to_off": round(statistics.median(
            on["rps"] / off["rps"] for on, off in zip(rows[name], rows["off"], strict=True)),
            3), "counters": counters[name]}
    return report


def bench_offer(calls: int = 200_000) -> dict:
    """Microseconds of ``Mirror.offer`` per request: not mirrored (over the cap), and queued
    (the queue drained between calls, no sender started: the send is off the path)."""
    import asyncio

    from mlship_runtime.settings import RuntimeSettings
    from mlship_runtime.shadow import Mirror

    outputs = [np.zeros((1, 3), np.float32)]

    async def run() -> dict:
        settings = RuntimeSettings(model="tiny.onnx", shadow_url="http://127.0.0.1:9")
        mirror = Mirror(settings, [("model", "tiny")])
        started = time.perf_counter()
        for _ in range(calls):
            mirror.offer("tiny", b"{}", None, ["probabilities"], outputs)
        capped = (time.perf_counter() - started) / calls * 1e6
        await mirror.close()
        queued_mirror = Mirror(settings.replace(shadow_max_per_second=1000.0),
                               [("model", "tiny")])
        queued_mirror._wake = asyncio.Event()  # no senders: only the request path is timed
        started = time.perf_counter()
        for _ in range(calls // 100):
            queued_mirror.tokens = 1000.0
            queued_mirror.offer("tiny", b"{}", None, ["probabilities"], outputs)
            queued_mirror.queue.clear()
        queued = (time.perf_counter() - started) / (calls // 100) * 1e6
        return {"not_mirrored_us": round(capped, 3), "queued_us": round(queued, 3)}

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps({"offer": bench_offer(),
                          "tiny_batch1": bench(Path(tmp), args.seconds, args.passes)},
                         indent=2))


if __name__ == "__main__":
    main()
