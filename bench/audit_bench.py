"""The audit trail's cost, side by side in one run: tiny model req/s at batch 1 (V2 JSON), with
the audit line off, on (what rendered pods run), on with the mesh identity parsed from
x-forwarded-client-cert, and on with the payload log sampling 1 % of requests to a file.

Every server gets the same requests (x-request-id and x-forwarded-client-cert headers
included), each writes its stderr to a file (as a container's log pipe drains it), and passes
alternate between the variants (each pass in a rotated order) so that they share the
machine's drift; "off_control", a second "off", shows the noise floor. Each ratio is the
median of per-pass ratios to "off", for req/s and for the server's CPU time per request
(contention from other work moves req/s much more than CPU per request), and in process: the
server's own CPU per request through the runtime's connection, app and audit trail with no
kernel and no load generator (``in_process``, the least noisy of the three). Target: audit on
>= 0.95 of off.
Usage: ``python bench/audit_bench.py [--seconds 2] [--passes 4]``; bounded to ~3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_bench as rb

HEADERS = {"Content-Type": "application/json", "X-Request-Id": "bench-client-0001",
           "X-Forwarded-Client-Cert": "By=spiffe://cluster.local/ns/mlship/sa/tiny;"
                                      "Hash=0f1e2d3c4b5a69788796a5b4c3d2e1f0;"
                                      "URI=spiffe://cluster.local/ns/frontend/sa/web"}


def variants(workdir: Path) -> dict[str, list[str]]:
    return {
        "off": ["--access-log", "false"],
        # The same as off: its ratio to off is the noise floor of this run.
        "off_control": ["--access-log", "false"],
        "audit": ["--access-log", "true"],
        "audit_identity": ["--access-log", "true", "--trust-forwarded-client-cert", "true"],
        "audit_payload_1pct": ["--access-log", "true", "--payload-log",
                               str(workdir / "payloads.jsonl"), "--payload-log-sample", "0.01",
                               "--payload-log-rate", "1000"],
    }


def start(model: Path, args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = rb.free_port()
    proc = subprocess.Popen(
        rb.pinned(rb.SERVER_CPU, [sys.executable, "-m", "mlship_runtime", "--model", str(model),
                                  "--port", str(port), "--intra-op-threads", "1",
                                  "--log-format", "json", *args]),
        env=rb.ENV, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    return proc, f"http://127.0.0.1:{port}"


def cpu_s(proc: subprocess.Popen[bytes]) -> float:
    """User + system CPU seconds the server process has used (Linux /proc)."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(proc: subprocess.Popen[bytes], url: str, body: bytes, seconds: float,
             workdir: Path) -> dict:
    """One load run, plus the server's CPU per request: contention from other work on the
    machine moves req/s a lot, CPU time per request much less."""
    before = cpu_s(proc)
    row = rb.load(url + "/v2/models/tiny/infer", body, 16, seconds, workdir, headers=HEADERS)
    requests = row["rps"] * seconds
    row["cpu_us_per_request"] = (cpu_s(proc) - before) / max(1.0, requests) * 1e6
    return row


class _Transport:
    """Where the in-process connection writes: kept, not sent."""

    def __init__(self) -> None:
        self.last = b""

    def write(self, data: bytes) -> None:
        self.last = data

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str) -> tuple[str, int]:
        return ("127.0.0.1", 40000)


def in_process(model: Path, body: bytes, rounds: int = 8, requests: int = 20000) -> dict:
    """The server's own CPU per request with the audit off and on, in process: the runtime's
    connection, app and audit trail on a transport that keeps what it is given, so neither
    the kernel nor the load generator adds noise. Rounds alternate between the variants; the
    fastest round of each counts."""
    import asyncio
    import time

    from mlship_runtime.app import App
    from mlship_runtime.audit import audited
    from mlship_runtime.connection import connection_class
    from mlship_runtime.loading import load_model, new_metrics
    from mlship_runtime.protocol import Limits
    from mlship_runtime.settings import RuntimeSettings

    request = (b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        f"{key}: {value}\r\n".encode() for key, value in HEADERS.items()) +
        b"Content-Length: %d\r\n\r\n" % len(body) + body)
    state = type("State", (), {"connections": set(), "tasks": set(), "total_requests": 0,
                               "default_headers": [(b"date", b"Mon, 07 Dec 2026 12:00:00 GMT")]})

    async def connection(access_log: bool, trust: bool) -> Any:
        settings = RuntimeSettings(model=str(model), access_log=access_log, intra_op_threads=1,
                                   trust_forwarded_client_cert=trust)
        metrics = new_metrics(settings)
        app = App(settings, metrics)
        app.attach(load_model(settings, metrics, app).session)
        config = type("Config", (), {"loaded_app": audited(app, settings, {"tiny": None}),
                                     "timeout_keep_alive": 30})
        conn = connection_class(Limits(16384, 10, 30, 1000))(config, state)
        conn.connection_made(_Transport())
        for _ in range(1000):
            conn.data_received(request)
        assert conn.transport.last.startswith(b"HTTP/1.1 200"), conn.transport.last
        return conn, app

    async def run() -> dict:
        conns = {"off": await connection(False, False), "audit": await connection(True, False),
                 "audit_identity": await connection(True, True)}
        best = dict.fromkeys(conns, float("inf"))
        for _ in range(rounds):
            for name, (conn, app) in conns.items():
                started = time.thread_time()
                for _ in range(requests):
                    conn.data_received(request)
                if app.audit is not None:
                    app.audit.flush()
                best[name] = min(best[name], (time.thread_time() - started) / requests * 1e6)
                await asyncio.sleep(0)
        report = {f"{name}_us_per_request": round(us, 2) for name, us in best.items()}
        report.update({f"ratio_{name}": round(best["off"] / best[name], 3)
                       for name in conns if name != "off"})
        return report

    stderr = os.dup(2)  # the lines go where the server's would, but not to the terminal
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    try:
        return asyncio.run(run())
    finally:
        os.dup2(stderr, 2)


def bench(workdir: Path, seconds: float, passes: int) -> dict:
    model = rb.modelzoo.tiny_classifier(workdir / "tiny.onnx")
    body = rb.v2_body("x", np.array([[0.1, -0.4, 1.2, 0.3]], dtype=np.float32))
    # Two processes per variant, measured in turn: one process can run several % faster than
    # an identical one (memory placement), as fast as the cost measured here.
    servers = {(name, copy): start(model, args, workdir / f"{name}-{copy}.log")
               for name, args in variants(workdir).items() for copy in range(2)}
    try:
        for proc, url in servers.values():
            rb.wait_ready(url + "/v2/health/ready", proc)
        for _, url in servers.values():  # warm every path
            rb.load(url + "/v2/models/tiny/infer", body, 16, 1, workdir, headers=HEADERS)
        rows: dict[str, list[dict]] = {name: [] for name, _ in servers}
        keys = list(servers)
        for index in range(passes):  # each pass starts one server later: no fixed order
            for key in keys[index % len(keys):] + keys[:index % len(keys)]:
                proc, url = servers[key]
                rows[key[0]].append(measured(proc, url, body, seconds, workdir))
    finally:
        for proc, _ in servers.values():
            rb.stop(proc)
    report: dict = {name: rb.median_row(found) for name, found in rows.items()}
    for name, found in rows.items():
        if name != "off":
            pairs = list(zip(found, rows["off"], strict=True))
            report[f"ratio_{name}"] = {
                "rps": round(statistics.median(on["rps"] / off["rps"] for on, off in pairs), 3),
                # off's CPU per request over this one's: the req/s ratio a CPU-bound pod gets
                "cpu": round(statistics.median(off["cpu_us_per_request"] /
                                               on["cpu_us_per_request"] for on, off in pairs),
                             3)}
    def log(name: str) -> str:
        return "".join((workdir / f"{name}-{copy}.log").read_text() for copy in range(2))

    audit_lines = log("audit").count('"mlship_runtime.audit"')
    identities = log("audit_identity").count(
        '"identity":"spiffe://cluster.local/ns/frontend/sa/web"')
    payloads = workdir / "payloads.jsonl"
    report["checks"] = {
        "audit_lines": audit_lines,
        "identity_lines": identities,
        "payload_records": len(payloads.read_text().splitlines()) if payloads.exists() else 0,
        "lines_when_off": log("off").count('"mlship_runtime.audit"'),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--passes", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = bench(Path(tmp), args.seconds, args.passes)
        cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(rb.SERVER_CPU)})  # on the server's core, as it runs
        try:
            report["in_process"] = in_process(
                Path(tmp) / "tiny.onnx",
                rb.v2_body("x", np.array([[0.1, -0.4, 1.2, 0.3]], dtype=np.float32)))
        finally:
            os.sched_setaffinity(0, cpus)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
