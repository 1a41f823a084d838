"""The harness of the runtime benches: servers pinned to one core, load from wrk on the other.

``start_runtime(model, root=...)`` runs the runtime from any source tree (its ``runtime/`` on
PYTHONPATH), so two versions of the runtime can be measured side by side in one run
(``bench/runtime_bench.py --against DIR``). Load is bounded in time and only sent to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERVER_CPU, CLIENT_CPU = "0", "1"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else argv


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.003)
    raise SystemExit(f"{url} not ready in {timeout}s")


def env_for(root: Path) -> dict[str, str]:
    """The environment that runs the runtime of the source tree ``root``."""
    return {**os.environ, "PYTHONPATH": str(root / "runtime")}


def start_runtime(model: Path, *args: str, cpus: str = SERVER_CPU,
                  root: Path = ROOT) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        pinned(cpus, [sys.executable, "-m", "mlship_runtime", "--model", str(model),
                      "--port", str(port), "--intra-op-threads", "1", "--log-level",
                      "warning", *args]), env=env_for(root))
    return proc, f"http://127.0.0.1:{port}"


def rss_mib(proc: subprocess.Popen[bytes]) -> float:
    """Resident set of the server process (taskset execs it, so the pid is the server's)."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ort_seconds_per_run(model: Path, shape: tuple[int, ...], seconds: float) -> tuple[float, float]:
    """In-process onnxruntime, one intra-op thread, on the server's core: wall and CPU seconds
    per run (one intra-op thread: the run is the calling thread's)."""
    script = ("import onnxruntime as ort, numpy as np, time\n"
              "o = ort.SessionOptions(); o.intra_op_num_threads = 1\n"
              "o.inter_op_num_threads = 1\n"
              f"s = ort.InferenceSession({str(model)!r}, o)\n"
              f"x = np.random.default_rng(0).standard_normal({shape!r}).astype(np.float32)\n"
              "for _ in range(50): s.run(None, {'x': x})\n"
              "n, t, c = 0, time.perf_counter(), time.thread_time()\n"
              f"while time.perf_counter() - t < {seconds}: s.run(None, {{'x': x}}); n += 1\n"
              "print((time.perf_counter() - t) / n, (time.thread_time() - c) / n)\n")
    wall, cpu = subprocess.run(pinned(SERVER_CPU, [sys.executable, "-c", script]),
                               capture_output=True, text=True, check=True).stdout.split()
    return float(wall), float(cpu)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def wrk(url: str, body: bytes, connections: int, seconds: float, workdir: Path, *,
        headers: dict[str, str]) -> dict:
    script = workdir / "post.lua"
    lua_headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    # Lua long strings take raw bytes, so binary bodies need no escaping, only a level whose
    # closing bracket does not occur in the body.
    level = next(n for n in range(1, 64) if b"]" + b"=" * n + b"]" not in body)
    script.write_bytes(
        b'wrk.method = "POST"\n' + lua_headers.encode() + b"wrk.body = [" + b"=" * level +
        b"[" + body + b"]" + b"=" * level + b"]\n" + (
        b"done = function(summary, latency, requests)\n"
        b"  local e = summary.errors\n"
        b'  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, '
        b"summary.duration, latency:percentile(50), latency:percentile(99), "
        b"e.connect + e.read + e.write + e.status + e.timeout))\nend\n"))
    duration = f"-d{max(1, round(seconds))}s"
    out = subprocess.run(pinned(CLIENT_CPU, ["wrk", "-t1", f"-c{connections}", duration,
                                             "-s", str(script), url]),
                         capture_output=True, text=True, check=True).stdout
    fields = next(line for line in out.splitlines() if line.startswith("RESULT")).split()[1:]
    requests, duration_us, p50, p99, errors = (int(x) for x in fields)
    return {"rps": requests / (duration_us / 1e6), "requests": requests,
            "p50_ms": p50 / 1000, "p99_ms": p99 / 1000,
            "errors": errors}


async def _py_load(url: str, body: bytes, connections: int, seconds: float,
                   headers: dict[str, str]) -> dict:
    host, port_path = url.removeprefix("http://").split(":", 1)
    port, path = port_path.split("/", 1)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST /{path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            errors += not head.startswith(b"HTTP/1.1 200")
            latencies.append(time.perf_counter() - started)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "requests": len(latencies),
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000, "errors": errors}


def load(url: str, body: bytes, connections: int, seconds: float, workdir: Path, *,
         headers: dict[str, str] | None = None,
         server: subprocess.Popen[bytes] | None = None) -> dict:
    """One bounded load run. With ``server``, also ``cpu_us``: the server process's CPU time
    (every thread) per request — on a shared machine far steadier than req/s, which falls
    with whatever else gets the server's core."""
    headers = headers or {"Content-Type": "application/json"}
    before = cpu_seconds(server) if server is not None else 0.0
    if shutil.which("wrk"):
        result = wrk(url, body, connections, seconds, workdir, headers=headers)
    else:
        result = asyncio.run(_py_load(url, body, connections, seconds, headers))
    if server is not None:
        result["cpu_us"] = (cpu_seconds(server) - before) / max(1, result["requests"]) * 1e6
    return result


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    """User + system CPU time of a process, all its threads (taskset execs the server)."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def v2_body(name: str, array: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": list(array.shape),
                                   "data": array.ravel().tolist()}]}).encode()


def median_row(rows: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


