"""Fetch and verify a 100 MB model from S3 on loopback (moto's server), as the runtime does.

Prints, side by side in one run: (a) the runtime's cold fetch (mlship_runtime.fetch: stdlib
SigV4 GETs, sha256 while writing, manifest check), (b) boto3's download_file of the same
objects (no verification) as the reference client, (c) a warm start, where the cache already
holds the files and only re-hashes them, and (d) sha256 alone over the same bytes. No test
asserts these figures (docs/model-storage.md quotes them). Traffic goes only to 127.0.0.1.
Usage: ``python bench/s3_bench.py [--mb 100] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "runtime"))
sys.path.insert(0, str(REPO / "tests"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"moto server did not start: {log.read_text()[-2000:]}")


def median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100, help="model size in MB (10^6 bytes)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    work = Path(tempfile.mkdtemp(prefix="mlship-s3-bench-"))
    proc, endpoint = start_moto(work / "moto.log")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        run(work, endpoint, args.mb, args.runs)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, endpoint: str, mb: int, runs: int) -> None:
    import boto3
    from mlship_runtime.fetch import fetch_model
    from mlship_runtime.s3 import S3Config
    from mlship_testsupport import make_model

    from mlship.model.storage import S3Options, push

    features = 256
    model = make_model(work / "model" / "big.onnx", features=features,
                       weights=mb * 10**6 // 4)  # float32 weights: mb MB inline
    size = model.stat().st_size
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    push(model, "s3://bench/big/", S3Options(endpoint_url=endpoint))
    config = S3Config(endpoint_url=endpoint)
    cache = work / "cache"

    def cold() -> None:
        shutil.rmtree(cache, ignore_errors=True)
        fetch_model("s3://bench/big/big.onnx", cache, s3_config=config)

    def boto() -> None:
        target = work / "boto.onnx"
        target.unlink(missing_ok=True)
        client.download_file("bench", "big/big.onnx", str(target))

    def warm() -> None:
        fetch_model("s3://bench/big/big.onnx", cache, s3_config=config)

    def sha_only() -> None:
        digest = hashlib.sha256()
        with model.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)

    cold()  # warm the server's and the page cache's first touch
    results = {"cold": median_s(cold, runs), "boto3": median_s(boto, runs),
               "warm": median_s(warm, runs), "sha256": median_s(sha_only, runs)}
    print(f"model: {size / 1e6:.1f} MB, S3 endpoint {endpoint} (moto {moto_version()}), "
          f"median of {runs}")
    print(f"(a) runtime fetch + verify, cold cache : {results['cold']:.2f} s "
          f"({size / 1e6 / results['cold']:.0f} MB/s)")
    print(f"(b) boto3 download_file, no verify     : {results['boto3']:.2f} s "
          f"({size / 1e6 / results['boto3']:.0f} MB/s); (a)/(b) = "
          f"{results['cold'] / results['boto3']:.2f}")
    print(f"(c) warm start, cache hit (re-hash)    : {results['warm']:.2f} s")
    print(f"(d) sha256 alone                       : {results['sha256']:.2f} s "
          f"({size / 1e6 / results['sha256']:.0f} MB/s)")


def moto_version() -> str:
    from importlib.metadata import version

    return version("moto")


if __name__ == "__main__":
    main()
