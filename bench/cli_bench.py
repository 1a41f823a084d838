"""CLI start-up: `mlship --help` wall time beside a bare interpreter start, in one run.

Target: `mlship --help` under 250 ms. Heavy modules (onnx, onnxruntime, docker, kubernetes,
jinja2, pydantic) are imported inside command bodies; this prints which of them `--help`
loaded, so a regression names its cause.
Usage: ``python bench/cli_bench.py [--runs 15]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("onnx", "onnxruntime", "numpy", "docker", "kubernetes", "jinja2", "pydantic", "yaml",
         "boto3")
TARGET_MS = 250


def wall_ms(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    python = [sys.executable, "-c", "pass"]
    helptext = [sys.executable, "-m", "mlship", "--help"]
    wall_ms(helptext, 2)  # warm the page cache and .pyc files
    bare, cli = [], []
    for _ in range(args.runs):  # interleaved, so both see the same machine load
        bare += wall_ms(python, 1)
        cli += wall_ms(helptext, 1)
    probe = ("import sys, runpy; sys.argv=['mlship','--help']\n"
             "try: runpy.run_module('mlship', run_name='__main__')\n"
             "except SystemExit: pass\n"
             f"print('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    probed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout
    loaded = probed.rpartition("loaded:")[2].strip()
    median_cli, median_bare = statistics.median(cli), statistics.median(bare)
    print(f"{'case':<28}{'median ms':>10}{'p90 ms':>10}")
    for name, times in (("python -c pass", bare), ("mlship --help", cli)):
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"{name:<28}{statistics.median(times):>10.0f}{p90:>10.0f}")
    verdict = "meets" if median_cli < TARGET_MS else "MISSES"
    print(f"mlship --help: {median_cli:.0f} ms ({verdict} the {TARGET_MS} ms target); "
          f"{median_cli - median_bare:.0f} ms over a bare interpreter")
    print(f"heavy modules loaded by --help: {loaded or 'none'}")


if __name__ == "__main__":
    main()
