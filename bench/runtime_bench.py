"""Runtime benchmarks, side by side in one run: each figure is a ratio to a reference measured in
the same run (issue 23), the references printed beside it.

(a) tiny model ([N,4] -> MatMul -> Softmax), batch 1, V2 JSON, 16 connections: runtime req/s
    x (t_bare + t_ort), where t_bare = 1 / req/s of a bare raw-ASGI constant endpoint on the same
    HTTP stack (bench/bare_server.py) and t_ort = one in-process onnxruntime batch-1 run on the
    same core: the fraction of what HTTP plus onnxruntime allow. Target >= 0.8, p99 <= 2 ms.
(b) small MLP ([N,256] -> 3 x Dense(1024)+Relu -> [N,10]) at batch 1, 16 connections: the binary
    tensor extension's req/s / JSON's. Target >= 1.3.
(c) the MLP under 32 concurrent clients sending one row each, dynamic batching on: rows/s /
    in-process onnxruntime at batch 32 on the same core. Target >= 0.6 (the single-core cap is
    about t_row / (t_row + t_http)).
(d) cold start, process start -> /v2/health/ready (tiny model), target < 0.5 s; (e) RSS of the
    tiny-model server after its load runs, target < 100 MiB; (f) ``mlship --help``, < 250 ms.

``--against DIR`` (repeatable) also runs (a), (d) and (e) for the runtime of another source tree
(a checkout or ``git worktree`` of an older commit: its ``runtime/`` goes on PYTHONPATH),
interleaved with this tree's, and prints each tree's req/s as a ratio to the first: the cost or
gain of a change, measured in one run.

Beside req/s each case reports the server's CPU time per request (all its threads, from
/proc): on a machine shared with other work it moves less than req/s, which falls with whatever
else gets the server's core, so each ratio is also printed by CPU time. Server pinned to core 0,
wrk to core 1 (``apt-get install -y wrk``; without it a slower Python generator is used, and
said). Every case runs in several short interleaved passes and each ratio is the median of
per-pass ratios: other work on the machine drifts over seconds, and neighbours in time share it.
``python bench/runtime_bench.py [--seconds 3] [--passes 4] [--against DIR] [--tiny-only]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from runtime_load import (
    CLIENT_CPU,
    ENV,
    ROOT,
    SERVER_CPU,
    free_port,
    load,
    median_row,
    ort_seconds_per_run,
    pinned,
    rss_mib,
    start_runtime,
    stop,
    v2_body,
    wait_ready,
)

sys.path.insert(0, str(ROOT / "runtime" / "tests"))
sys.path.insert(0, str(ROOT / "runtime"))
import modelzoo
from mlship_runtime import codec

# What bench/drift_bench.py and bench/pipeline_bench.py use through this module.
__all__ = ["ENV", "SERVER_CPU", "free_port", "httpx", "load", "median_row", "modelzoo", "pinned",
           "start_runtime", "stop", "v2_body", "wait_ready"]
BARE = str(ROOT / "bench" / "bare_server.py")


def start_bare(*flags: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(pinned(SERVER_CPU, [sys.executable, BARE, "--port", str(port),
                                                *flags]), env=ENV)
    return proc, f"http://127.0.0.1:{port}/"


def bench_tiny(workdir: Path, seconds: float, passes: int, trees: list[Path]) -> dict:
    """(a) for this tree and every ``trees`` entry, (d) and (e) too, interleaved."""
    model = modelzoo.tiny_classifier(workdir / "tiny.onnx")
    body = v2_body("x", np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32))
    servers = {"bare": start_bare(), "starlette": start_bare("--starlette"),
               "http_layer": start_bare("--runtime-http")}
    constant = list(servers)  # the constant endpoints: no model behind them
    for index, root in enumerate([ROOT, *trees]):
        servers[f"runtime{index}"] = start_runtime(model, root=root)
    urls = {name: url if name in constant else url + "/v2/models/tiny/infer"
            for name, (_, url) in servers.items()}
    rss: dict[str, float] = {}
    try:
        for name, (proc, url) in servers.items():
            wait_ready(url if name in constant else url + "/v2/health/ready", proc)
        for url in urls.values():
            load(url, body, 16, 1, workdir)  # warm every path
        results: dict[str, list[dict]] = {name: [] for name in urls}
        t_ort: list[tuple[float, float]] = []
        for _ in range(passes):
            t_ort.append(ort_seconds_per_run(model, (1, 4), seconds / 3))
            for name, url in urls.items():
                results[name].append(load(url, body, 16, seconds, workdir,
                                          server=servers[name][0]))
        rss = {name: rss_mib(proc) for name, (proc, _) in servers.items()}
    finally:
        for proc, _ in servers.values():
            stop(proc)
    summary: dict = {name: median_row(rows) for name, rows in results.items()}
    summary["t_ort_us"] = statistics.median(t for t, _ in t_ort) * 1e6
    summary["t_ort_cpu_us"] = statistics.median(c for _, c in t_ort) * 1e6
    summary["rss"] = rss
    for name, rows in results.items():  # per-pass ratios: neighbours in time share the noise
        if name.startswith("runtime"):
            pairs = list(zip(rows, results["bare"], t_ort, strict=True))
            summary[f"limit_{name}"] = statistics.median(
                r["rps"] * (1 / b["rps"] + t) for r, b, (t, _) in pairs)
            summary[f"limit_cpu_{name}"] = statistics.median(
                (b["cpu_us"] + c * 1e6) / r["cpu_us"] for r, b, (_, c) in pairs)
            firsts = list(zip(rows, results["runtime0"], strict=True))
            summary[f"vs_first_{name}"] = statistics.median(r["rps"] / f["rps"] for r, f in firsts)
            summary[f"vs_first_cpu_{name}"] = statistics.median(
                f["cpu_us"] / r["cpu_us"] for r, f in firsts)
    summary["cold"] = {f"runtime{index}": bench_cold_start(model, root)
                       for index, root in enumerate([ROOT, *trees])}
    summary["cold"]["bare"] = statistics.median(_bare_start() for _ in range(3))
    return summary


def _bare_start() -> float:
    proc, url = start_bare()
    try:
        return wait_ready(url, proc)
    finally:
        stop(proc)


def bench_mlp(workdir: Path, seconds: float, passes: int) -> dict:
    """(b) binary / JSON at batch 1, 16 connections; (c) batched under 32 clients."""
    model = modelzoo.mlp(workdir / "mlp.onnx")
    row = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    body = v2_body("x", row)
    binary_body, binary_headers = codec.encode_request({"x": row}, binary=True)
    # Same placement as in-process onnxruntime: one CPU, one intra-op thread.
    proc, url = start_runtime(model, "--max-batch-size", "32")
    bare, bare_url = start_bare()
    infer = url + "/v2/models/mlp/infer"
    runs: dict[str, list[dict]] = {"json16": [], "binary16": [], "json32": [], "binary32": [],
                                   "ceiling": []}
    in_process: list[tuple[float, float]] = []  # rows/s, rows per CPU second
    try:
        wait_ready(url + "/v2/health/ready", proc)
        wait_ready(bare_url, bare)
        load(infer, body, 32, 1, workdir)
        for _ in range(passes):  # interleaved, so background load hits every case alike
            wall, cpu = ort_seconds_per_run(model, (32, 256), seconds / 3)
            in_process.append((32 / wall, 32 / cpu))
            for conns in (16, 32):
                runs[f"json{conns}"].append(load(infer, body, conns, seconds, workdir,
                                                 server=proc))
                runs[f"binary{conns}"].append(load(infer, binary_body, conns, seconds, workdir,
                                                   headers=binary_headers, server=proc))
            runs["ceiling"].append(load(bare_url, body, 32, seconds, workdir, server=bare))
        metrics = httpx.get(url + "/metrics").text
        execution = httpx.get(url + "/v2/models/mlp").json()["parameters"]["execution"]
    finally:
        stop(proc)
        stop(bare)
    sums = {line.split("{")[0]: float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith(("mlship_batch_size_sum", "mlship_batch_size_count"))}
    result: dict = {name: median_row(rows) for name, rows in runs.items()}
    result["in_process_rows_s"] = statistics.median(ip for ip, _ in in_process)
    for name in ("json32", "binary32", "ceiling"):
        result[f"ratio_{name}"] = statistics.median(
            r["rps"] / ip for r, (ip, _) in zip(runs[name], in_process, strict=True))
        result[f"ratio_cpu_{name}"] = statistics.median(
            1e6 / r["cpu_us"] / ipc for r, (_, ipc) in zip(runs[name], in_process, strict=True))
    pairs = list(zip(runs["binary16"], runs["json16"], strict=True))
    result["binary_vs_json"] = statistics.median(b["rps"] / j["rps"] for b, j in pairs)
    result["binary_vs_json_cpu"] = statistics.median(j["cpu_us"] / b["cpu_us"] for b, j in pairs)
    result["mean_batch"] = sums["mlship_batch_size_sum"] / max(1.0,
                                                               sums["mlship_batch_size_count"])
    result["execution"] = execution
    return result


def bench_cold_start(model: Path, root: Path, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        proc, url = start_runtime(model, root=root)
        try:
            times.append(wait_ready(url + "/v2/health/ready", proc))
        finally:
            stop(proc)
    return statistics.median(times)


def bench_help(runs: int = 7) -> tuple[float, float]:
    """Median ms of ``mlship --help`` and of a bare ``python -c pass``, interleaved."""
    env = {**ENV, "PYTHONPATH": f"{ROOT}:{ROOT / 'runtime'}"}
    times: dict[str, list[float]] = {"help": [], "bare": []}
    argvs = {"help": [sys.executable, "-m", "mlship", "--help"],
             "bare": [sys.executable, "-c", "pass"]}
    for index in range(runs + 1):
        for name, argv in argvs.items():
            started = time.perf_counter()
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
            if index:  # the first run warms the page cache and .pyc files
                times[name].append((time.perf_counter() - started) * 1000)
    return statistics.median(times["help"]), statistics.median(times["bare"])


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(tiny: dict, mlp: dict | None, help_ms: tuple[float, float] | None,
           trees: list[Path]) -> None:
    print(f"\n{'case':<48}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}"
          f"{'CPU µs/req':>11}")
    rows = [("bare raw-ASGI constant, 16 conns", tiny["bare"]),
            ("bare Starlette constant, 16 conns", tiny["starlette"]),
            ("runtime's HTTP layer alone, constant, 16 conns", tiny["http_layer"])]
    rows += [(f"runtime {'(this tree)' if i == 0 else trees[i - 1]}: tiny JSON b1",
              tiny[f"runtime{i}"]) for i in range(len(trees) + 1)]
    if mlp is not None:
        rows += [("MLP batch 1, 16 conns, JSON", mlp["json16"]),
                 ("MLP batch 1, 16 conns, binary", mlp["binary16"]),
                 ("MLP 32 clients x 1 row, JSON (batching)", mlp["json32"]),
                 ("MLP 32 clients x 1 row, binary (batching)", mlp["binary32"]),
                 ("bare raw-ASGI, MLP's 2.6 kB body, 32 conns", mlp["ceiling"])]
    for label, row in rows:
        print(f"{label[:47]:<48}{row['rps']:>9.0f}{row['p50_ms']:>8.2f}{row['p99_ms']:>8.2f}"
              f"{row['errors']:>7.0f}{row['cpu_us']:>11.1f}")
    t_bare = 1e6 / tiny["bare"]["rps"]
    print(f"in-process onnxruntime: tiny batch 1 {tiny['t_ort_us']:.1f} µs/run "
          f"({tiny['t_ort_cpu_us']:.1f} µs CPU)" + (
        "" if mlp is None else f"; MLP batch 32 {mlp['in_process_rows_s']:.0f} rows/s") + "\n")
    limit, p99 = tiny["limit_runtime0"], tiny["runtime0"]["p99_ms"]
    print(f"(a) tiny: runtime / 1/(t_bare + t_ort)   {limit:5.2f}  target >= 0.80 "
          f"{_verdict(limit >= 0.8)}  (t_bare {t_bare:.1f} µs + t_ort {tiny['t_ort_us']:.1f} µs"
          f" = limit {1e6 / (t_bare + tiny['t_ort_us']):.0f} req/s); p99 {p99:.2f} ms "
          f"{_verdict(p99 <= 2)} (<= 2)")
    limit_cpu = tiny["limit_cpu_runtime0"]
    print(f"    same, by server CPU time per request  {limit_cpu:5.2f}  target >= 0.80 "
          f"{_verdict(limit_cpu >= 0.8)}  ((bare {tiny['bare']['cpu_us']:.1f} + ort "
          f"{tiny['t_ort_cpu_us']:.1f}) / runtime {tiny['runtime0']['cpu_us']:.1f} µs CPU)")
    layer, runtime = tiny["http_layer"]["cpu_us"], tiny["runtime0"]["cpu_us"]
    print(f"    runtime's HTTP layer / uvicorn's      {tiny['bare']['cpu_us'] / layer:5.2f}  (by "
          f"server CPU, constant reply: {layer:.1f} vs {tiny['bare']['cpu_us']:.1f} µs); on it "
          f"the model's request costs {runtime - layer:.1f} µs more, onnxruntime's run "
          f"{tiny['t_ort_cpu_us']:.1f} of them")
    print(f"    tiny: runtime / bare Starlette       "
          f"{tiny['runtime0']['rps'] / tiny['starlette']['rps']:5.2f}")
    if mlp is not None:
        bvj = mlp["binary_vs_json"]
        print(f"(b) MLP b1: binary / JSON                {bvj:5.2f}  target >= 1.30 "
              f"{_verdict(bvj >= 1.3)}  (by server CPU per request "
              f"{mlp['binary_vs_json_cpu']:.2f})")
        batched, binary = mlp["ratio_json32"], mlp["ratio_binary32"]
        print(f"(c) MLP 32 clients: served / in-process  {batched:5.2f}  target >= 0.60 "
              f"{_verdict(batched >= 0.6)}  (binary {binary:.2f}; bare HTTP "
              f"{mlp['ratio_ceiling']:.2f}; mean batch {mlp['mean_batch']:.1f}, "
              f"{mlp['execution']} mode)")
        print(f"    same, rows per server CPU second     {mlp['ratio_cpu_json32']:5.2f}  "
              f"(binary {mlp['ratio_cpu_binary32']:.2f}; bare HTTP "
              f"{mlp['ratio_cpu_ceiling']:.2f})")
    cold = tiny["cold"]["runtime0"]
    print(f"(d) cold start to ready                  {cold:5.2f} s target <  0.5 s "
          f"{_verdict(cold < 0.5)}  (bare raw-ASGI process {tiny['cold']['bare']:.2f} s)")
    rss = tiny["rss"]["runtime0"]
    print(f"(e) RSS, tiny model, after load          {rss:5.0f} MiB target < 100 "
          f"{_verdict(rss < 100)}  (bare raw-ASGI process {tiny['rss']['bare']:.0f} MiB)")
    if help_ms is not None:
        print(f"(f) mlship --help                        {help_ms[0]:5.0f} ms target < 250 "
              f"{_verdict(help_ms[0] < 250)}  (python -c pass {help_ms[1]:.0f} ms)")
    for index, root in enumerate(trees, 1):
        key = f"runtime{index}"
        print(f"\n--against {root}: tiny req/s this tree / that tree "
              f"{1 / tiny[f'vs_first_{key}']:5.2f}, by server CPU per request "
              f"{1 / tiny[f'vs_first_cpu_{key}']:5.2f}; that tree's (a) "
              f"{tiny[f'limit_{key}']:.2f} (CPU {tiny[f'limit_cpu_{key}']:.2f}), "
              f"p99 {tiny[key]['p99_ms']:.2f} ms, cold start {tiny['cold'][key]:.2f} s, "
              f"RSS {tiny['rss'][key]:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per load-generator run")
    parser.add_argument("--passes", type=int, default=4,
                        help="interleaved passes; ratios are medians of per-pass ratios")
    parser.add_argument("--against", type=Path, action="append", default=[], metavar="DIR",
                        help="another source tree whose runtime (a), (d), (e) run beside this "
                             "one's, e.g. a git worktree of the commit before a change")
    parser.add_argument("--tiny-only", action="store_true", help="skip (b), (c) and (f)")
    args = parser.parse_args()
    for root in args.against:
        if not (root / "runtime" / "mlship_runtime").is_dir():
            parser.error(f"--against {root}: no runtime/mlship_runtime in that tree")
    generator = "wrk" if shutil.which("wrk") else "python asyncio (wrk missing: apt-get " \
        "install -y wrk; the generator may be the bottleneck)"
    import uvloop

    print(f"load generator: {generator}; server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}; "
          f"onnxruntime {ort.__version__}; uvloop {uvloop.__version__}"
          + ("" if uvloop.__version__ == "0.21.0" else
             " (the image pins 0.21.0: 0.23 measured ~30 % slower on the bare endpoint)"))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tiny = bench_tiny(workdir, args.seconds, args.passes, args.against)
        mlp = None if args.tiny_only else bench_mlp(workdir, args.seconds, args.passes)
    help_ms = None if args.tiny_only else bench_help()
    report(tiny, mlp, help_ms, args.against)


if __name__ == "__main__":
    main()
