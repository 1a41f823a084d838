"""Hostile and mistaken clients over real HTTP on loopback (issue 15, continued): client
mistakes are 4xx with a JSON error and no traceback; credentials in URLs never reach the log;
the prediction cache's byte bound counts BYTES outputs at their real size; a worker killed with
SIGKILL is noticed, replaced and reflected in readiness and metrics. ``/v2/health/live`` is
probed throughout (``LiveProbe``).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from mlship_runtime import codec
from mlship_runtime.manifest import MANIFEST_NAME, Manifest, ManifestFile, sha256_file
from netprobe import LiveProbe


def v2(name: str, datatype: str, shape: list, data: list) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


X = v2("x", "FP32", [1, 4], [1, 2, 3, 4])
IDS = v2("ids", "INT64", [1, 3], [1, 2, 3])
TEXT = v2("text", "BYTES", [1, 1], ["a"])

# ---- 8: client mistakes are 400 with a JSON error, never 500 -----------------------------------

MISTAKES = [  # (model, body, what the error names)
    ("tiny", {"inputs": [X], "parameters": "binary"}, "'parameters' must be an object"),
    ("tiny", {"inputs": [{**X, "parameters": [1]}]}, "'parameters' must be an object"),
    ("tiny", {"inputs": [X], "outputs": [{"name": "probabilities", "parameters": 7}]},
     "'parameters' must be an object"),
    ("tiny", {"inputs": [v2("x", "FP32", [1] * 65, [1])]}, "more than 64"),
    ("tiny", {"inputs": [X], "outputs": []}, "'outputs' is empty"),
    ("tiny", {"inputs": [X], "outputs": [{"name": "probabilities"}] * 2}, "twice"),
    ("tiny", {"inputs": [X], "outputs": "probabilities"}, "'outputs' must be a list"),
    ("tiny", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                          "parameters": {"binary_data_size": 16}}]},
     "binary_data_size needs the Inference-Header-Content-Length header"),
    ("tiny", {"inputs": [v2("x", "FP32", [1, 4], ["1", "2", "3", "4"])]}, "FP32 data must be"),
    ("tiny", {"inputs": [v2("x", "FP32", [1, 4], [True, False, True, False])]},
     "FP32 data must be"),
    ("tiny", {"inputs": [v2("x", "FP32", [1, 4], [1, True, 2, 3])]}, "true/false"),
    ("tiny", {"inputs": [v2("x", "FP32", [1, 4], [[1, 2], [3]])]}, "input 'x'"),
    ("tiny", {"inputs": [X, X]}, "input 'x' is given twice"),
    ("tiny", {"inputs": [v2("x", "FP32", [1, -4], [1, 2, 3, 4])]}, "non-negative integers"),
    ("tiny", {"inputs": [v2("x", "FP32", [True, 4], [1, 2, 3, 4])]}, "non-negative integers"),
    ("tiny", {"inputs": [v2("x", "FP32", [2**70, 4], [1, 2, 3, 4])]}, "input 'x'"),
    ("tiny", {"inputs": ["x"]}, "each input must be an object"),
    ("mixed", {"inputs": [v2("ids", "INT64", [1, 3], [1.5, 2, 3]), TEXT]}, "INT64 data must"),
    ("mixed", {"inputs": [v2("ids", "INT64", [1, 3], [True, 2, 3]), TEXT]}, "true/false"),
    ("mixed", {"inputs": [v2("ids", "INT64", [1, 3], [2**64, 2, 3]), TEXT]}, "input 'ids'"),
    ("mixed", {"inputs": [IDS, v2("text", "BYTES", [1, 1], [5])]}, "BYTES data must be"),
    ("mixed", {"inputs": [IDS, TEXT, IDS]}, "input 'ids' is given twice"),
]


@pytest.fixture(scope="module")
def mistaken(tmp_path_factory: pytest.TempPathFactory, models) -> Iterator[dict]:
    from conftest import ServerProcess

    logs = tmp_path_factory.mktemp("mistakes")
    servers = {name: ServerProcess(models[name], log_path=logs / f"{name}.log")
               for name in ("tiny", "mixed")}
    try:
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_client_mistakes_are_400_with_a_json_error_and_no_traceback(mistaken):
    with LiveProbe(mistaken["tiny"].url) as probe:
        for model, body, fragment in MISTAKES:
            response = httpx.post(f"{mistaken[model].url}/v2/models/{model}/infer", json=body,
                                  timeout=10)
            assert response.status_code == 400, (body, response.text)
            assert fragment in response.json()["error"], (body, response.text)
        predict = [({"instances": [[[1.0] * 4]]}, "input 'x'"),
                   ({"instances": _deep_list(70)}, "input 'x'"),
                   ({"inputs": {"x": "abcd"}}, "input 'x'"),
                   ({"inputs": {"x": [[True, False, True, False]]}}, "true/false"),
                   ({"instances": [{"x": [1, 2, 3, 4]}, {"y": [1, 2, 3, 4]}]}, "instance 1")]
        for body, fragment in predict:
            response = httpx.post(mistaken["tiny"].url + "/predict", json=body, timeout=10)
            assert response.status_code == 400, (body, response.text)
            assert fragment in response.json()["error"], (body, response.text)
    probe.check()
    for server in mistaken.values():
        log = server.log()
        assert "Traceback" not in log, log[-3000:]
        assert " ERROR " not in log, log[-3000:]
        assert server.proc.poll() is None


def _deep_list(depth: int) -> list:
    value: list = [1.0, 2.0, 3.0, 4.0]
    for _ in range(depth):
        value = [value]
    return value


def test_binary_mistakes_are_400(mistaken):
    url = mistaken["tiny"].url + "/v2/models/tiny/infer"
    deep = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1] * 65,
                                   "parameters": {"binary_data_size": 4}}]}).encode()
    twice = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                    "parameters": {"binary_data_size": 16}}] * 2}).encode()
    strings = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 4],
                                      "parameters": {"binary_data_size": 20}}]}).encode()
    cases = [(deep, bytes(4), "more than 64"), (twice, bytes(32), "given twice"),
             (strings, b"\1\0\0\0a" * 4, "expected datatype FP32, got BYTES")]
    with LiveProbe(mistaken["tiny"].url) as probe:
        for header, data, fragment in cases:
            response = httpx.post(url, content=header + data, timeout=10,
                                  headers={codec.HEADER_LENGTH: str(len(header))})
            assert response.status_code == 400, response.text
            assert fragment in response.json()["error"]
    probe.check()
    assert "Traceback" not in mistaken["tiny"].log()


def test_client_mistakes_to_a_model_and_a_pipeline_of_a_repository_are_400(models, tmp_path):
    """``--models``: the router's models and its pipelines decode as strictly."""
    from test_runtime_repository import RepositoryServer

    config = tmp_path / "models.json"
    config.write_text(json.dumps({"models": [{"name": "t", "path": str(models["tiny"])}],
                                  "pipelines": [{"name": "p", "steps": [{"model": "t"}]}]}))
    server = RepositoryServer(config, tmp_path / "repository.log")
    try:
        server.wait_ready()
        with LiveProbe(server.url) as probe:
            for name in ("t", "p"):
                for model, body, fragment in MISTAKES:
                    if model != "tiny":
                        continue
                    response = httpx.post(f"{server.url}/v2/models/{name}/infer", json=body,
                                          timeout=10)
                    assert response.status_code == 400, (name, body, response.text)
                    assert fragment in response.json()["error"], (name, body, response.text)
        probe.check()
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log()
    assert " ERROR " not in server.log()


# ---- 9: credentials in URLs are redacted in logs -----------------------------------------------

class _Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(403, "signature expired")

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(handler) -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


SECRETS = ("c2lnbmF0dXJlLXNlY3JldA", "AKIAMLSHIPSECRET0000", "FwoGZXIvYXdzEBYaDtoken",
           "hunter2-password")


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_presigned_url_signatures_and_tokens_are_redacted(start_server, models, tmp_path,
                                                          log_format):
    with serving(_Refusing) as base:
        url = (f"{base}/m/tiny.onnx?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
               f"{SECRETS[1]}%2F20261207%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature="
               f"{SECRETS[0]}&X-Amz-Security-Token={SECRETS[2]}&X-Amz-Expires=300")
        server = start_server(url, "--model-sha256", sha256_file(models["tiny"]),
                              "--cache-dir", str(tmp_path / "c"), "--log-format", log_format)
        assert server.proc.wait(60) == 11
    log = server.log()
    for secret in SECRETS[:3]:
        assert secret not in log
    assert "X-Amz-Signature=REDACTED" in log
    assert "X-Amz-Credential=REDACTED" in log
    assert "X-Amz-Expires=300" in log  # only credentials go
    assert "HTTP 403" in log


def test_a_served_presigned_url_is_redacted_in_every_line(start_server, models, tmp_path):
    served = tmp_path / "www" / "m"
    served.mkdir(parents=True)
    shutil.copy(models["tiny"], served / "tiny.onnx")
    handler = functools.partial(_Quiet, directory=str(served.parent))
    with serving(handler) as base:
        url = f"{base}/m/tiny.onnx?X-Amz-Signature={SECRETS[0]}&X-Amz-Credential={SECRETS[1]}"
        server = start_server(url, "--model-sha256", sha256_file(models["tiny"]),
                              "--cache-dir", str(tmp_path / "c"), "--model-name", "tiny")
        server.wait_ready(60)
        assert server.stop() == 0
    log = server.log()
    assert "X-Amz-Signature=REDACTED" in log
    assert SECRETS[0] not in log
    assert SECRETS[1] not in log


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_passwords_in_endpoint_and_model_urls_are_redacted(moto_s3, start_server, tmp_path,
                                                           log_format):
    host = moto_s3.endpoint.removeprefix("http://")
    env = moto_s3.env(AWS_ENDPOINT_URL=f"http://minio:{SECRETS[3]}@{host}")
    s3 = start_server("s3://mlship-no-such-bucket/m/tiny.onnx", "--cache-dir",
                      str(tmp_path / "c"), "--log-format", log_format, env=env)
    assert s3.proc.wait(60) == 11
    web = start_server(f"http://reader:{SECRETS[3]}@{host}/m/tiny.onnx", "--model-sha256",
                       "0" * 64, "--cache-dir", str(tmp_path / "c"), "--log-format",
                       log_format)
    assert web.proc.wait(60) == 11
    for server in (s3, web):
        log = server.log()
        assert SECRETS[3] not in log, log
        assert ":REDACTED@" in log, log


def test_access_log_has_no_query_string(start_server, models):
    server = start_server(models["tiny"], "--access-log", "true")
    server.wait_ready()
    response = httpx.get(server.url + f"/v2/health/live?token={SECRETS[2]}", timeout=5)
    assert response.status_code == 200
    assert server.stop() == 0
    assert "GET /v2/health/live 200" in server.log()
    assert SECRETS[2] not in server.log()


# ---- 10: the cache's byte bound counts BYTES outputs at their real size ------------------------

def _metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return float(re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE).group(1))


def _held_bytes(outputs: list[np.ndarray]) -> int:
    """What the outputs hold in memory, as Python measures it: the buffers, and for object
    arrays each element object (a str of one character is ~50 bytes, not 1)."""
    return sum(out.nbytes + (sum(sys.getsizeof(item) for item in out.flat)
                             if out.dtype == object else 0) for out in outputs)


@pytest.mark.parametrize("text", ["a", "é" * 40])
def test_cache_byte_bound_counts_string_outputs_at_their_real_size(start_server, models, text):
    rows, bound = 64, 64 * 1024
    server = start_server(models["mixed"], "--prediction-cache-entries", "10000",
                          "--prediction-cache-bytes", str(bound))
    server.wait_ready()
    session = ort.InferenceSession(str(models["mixed"]), providers=["CPUExecutionProvider"])

    def request(index: int) -> dict[str, np.ndarray]:
        return {"ids": np.full((rows, 3), index, np.int64),
                "text": np.array([[text]] * rows, dtype=object)}

    real = _held_bytes(session.run(None, request(0)))
    sent = 4 * bound // real + 4  # four times what the bound can hold
    with LiveProbe(server.url) as probe:
        for index in range(sent):
            body, headers = codec.encode_request(request(index))
            response = httpx.post(server.url + "/v2/models/mixed/infer", content=body,
                                  headers=headers, timeout=10)
            assert response.status_code == 200, response.text
            if index == 0:
                reported = _metric(server, "mlship_cache_bytes")
                assert real <= reported < 2 * real, (real, reported)
    probe.check()
    entries, held = _metric(server, "mlship_cache_entries"), _metric(server, "mlship_cache_bytes")
    assert held <= bound
    assert 0 < entries < sent  # evicted by bytes (the entry bound is far away)
    assert entries * real <= bound  # what is really held stays within the bound


# ---- 11: a worker killed with SIGKILL ------------------------------------------------------------

class _Gated(http.server.SimpleHTTPRequestHandler):
    """Serves the model's folder; the manifest only while ``gate`` is set."""

    gate = threading.Event()

    def do_GET(self) -> None:
        if self.path.endswith(MANIFEST_NAME):
            self.gate.wait(60)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _children(pid: int) -> list[int]:
    return [int(child) for child in
            Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _worker_series(server) -> dict[str, str]:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    return dict(re.findall(r'^mlship_ready\{model="tiny",worker="(\d)"\} (\d)$', text,
                           re.MULTILINE))


def _served(server) -> dict[str, int]:
    """Infer requests answered 200, by worker, as a scrape reports them."""
    text = httpx.get(server.url + "/metrics", timeout=5).text
    pattern = r'^mlship_requests_total\{model="tiny",worker="(\d)",endpoint="infer",' \
              r'code="200"\} (\d+)$'
    return {worker: int(count) for worker, count in re.findall(pattern, text, re.MULTILINE)}


def test_a_killed_worker_is_replaced_and_readiness_waits_for_it(start_server, models,
                                                                 tmp_path):
    folder = tmp_path / "www" / "m"
    folder.mkdir(parents=True)
    shutil.copy(models["tiny"], folder / "tiny.onnx")
    manifest = Manifest("tiny.onnx", (ManifestFile("tiny.onnx", (folder / "tiny.onnx").stat()
                                                   .st_size, sha256_file(folder / "tiny.onnx")),))
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    handler = type("Gate", (_Gated,), {"gate": threading.Event()})
    handler.gate.set()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with serving(functools.partial(handler, directory=str(folder.parent))) as base:
        server = start_server(f"{base}/m/tiny.onnx", "--workers", "2", "--cache-dir",
                              str(tmp_path / "c"), env={"TMPDIR": str(scratch)})
        server.wait_ready(60)
        body = {"inputs": [X]}
        with LiveProbe(server.url) as probe:
            for _ in range(20):
                assert httpx.post(server.url + "/v2/models/tiny/infer", json=body,
                                  timeout=10).status_code == 200
            deadline = time.monotonic() + 10  # expositions are published once a second
            while sum(_served(server).values()) < 20 and time.monotonic() < deadline:
                time.sleep(0.1)
            before = _served(server)
            assert sum(before.values()) == 20, before
            handler.gate.clear()  # the replacement cannot load until the test says so
            victim = _children(server.proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while "was killed by SIGKILL" not in server.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            [line] = [entry for entry in server.log().splitlines() if "SIGKILL" in entry]
            index = re.search(r"worker (\d) \(pid (\d+)\)", line)
            assert int(index.group(2)) == victim
            worker = index.group(1)
            # The replacement is loading (the manifest is held back): not ready, its marker
            # gone, its predecessor's series gone, SIGKILL not forgotten.
            assert len(_children(server.proc.pid)) == 2
            assert victim not in _children(server.proc.pid)
            for _ in range(5):
                assert httpx.get(server.url + "/v2/health/ready", timeout=1).status_code == 503
                assert _worker_series(server).get(worker, "0") == "0"
                # The dead worker's requests are gone with it; the survivor's still count.
                after = _served(server)
                assert after.get(worker, 0) == 0, after
                assert all(after[other] == count for other, count in before.items()
                           if other != worker), (before, after)
            assert not list(scratch.glob(f"mlship-workers-*/worker-{worker}.ready"))
            handler.gate.set()
            server.wait_ready(60)
            deadline = time.monotonic() + 10  # expositions are published once a second
            while _worker_series(server) != {"0": "1", "1": "1"} and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            assert _worker_series(server) == {"0": "1", "1": "1"}
            for _ in range(10):
                assert httpx.post(server.url + "/v2/models/tiny/infer", json=body,
                                  timeout=10).status_code == 200
        probe.check()
        assert server.stop() == 0
    assert "Traceback" not in server.log()


def test_a_worker_killed_over_and_over_stops_the_pod_with_exit_3(start_server, models):
    """More than 5 replacements within 60 s: the supervisor gives up (a crash loop is the
    kubelet's to back off), every worker stopped, exit 3 and one error line."""
    server = start_server(models["tiny"], "--workers", "2")
    server.wait_ready()
    killed: set[int] = set()
    deadline = time.monotonic() + 120
    while server.proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for child in set(_children(server.proc.pid)) - killed:
                os.kill(child, signal.SIGKILL)
                killed.add(child)
        time.sleep(0.05)
    assert server.proc.wait(30) == 3, server.log()
    assert 6 <= len(killed) <= 8
    errors = [line for line in server.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert "was killed by SIGKILL, the 6. time in 60 s: stopping" in errors[0]
