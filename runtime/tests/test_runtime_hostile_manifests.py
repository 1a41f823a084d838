"""Hostile remote manifests and objects (issue 15): malformed fields, NUL and surrogates in
paths, deep nesting, oversized manifests, objects larger than their manifest size, endless and
trickled downloads. Each start ends with exit 11 and one line, never live-but-never-ready; S3
cases run against moto's server, the hostile endpoints (trickling, endless; S3 ones through
``AWS_ENDPOINT_URL``) are loopback HTTP servers of the test's own.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import hostile
import pytest
from hostile import WEIGHTS, error_lines, exit_never_ready
from mlship_runtime.manifest import MANIFEST_NAME, sha256_file
from motoserver import MotoS3


@pytest.fixture(scope="module")
def external_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile.external_model(tmp_path_factory.mktemp("external"))


# ---- 6: hostile remote manifests and objects ---------------------------------------------------

def manifest_doc(external_model: Path, **changes) -> dict:
    files = [{"path": rel, "size_bytes": (external_model.parent / rel).stat().st_size,
              "sha256": sha256_file(external_model.parent / rel)}
             for rel in ("mlp.onnx", WEIGHTS)]
    return {"format": "mlship.model-manifest/v1", "model": "mlp.onnx", "files": files,
            **changes}


def _deep(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


HOSTILE_MANIFESTS: dict[str, tuple[Callable[[dict], bytes], str]] = {
    "signature not an object": (
        lambda doc: json.dumps({**doc, "signature": "AAAA"}).encode(),
        "signature must be an object, not"),
    "signature a list": (
        lambda doc: json.dumps({**doc, "signature": ["x"] * 3}).encode(),
        "signature must be an object, not"),
    "NUL in a path": (
        lambda doc: json.dumps({**doc, "model": "mlp\0.onnx", "files": [
            {**doc["files"][0], "path": "mlp\0.onnx"}, doc["files"][1]]}).encode(),
        "unsafe or reserved file path"),
    "lone surrogate in a path": (
        lambda doc: json.dumps({**doc, "files": [
            doc["files"][0], {**doc["files"][1], "path": "weights/\udc80.bin"}]}).encode(),
        "unsafe or reserved file path"),
    "deep nesting in the signature": (
        lambda doc: json.dumps({**doc, "signature": "@"}).encode().replace(
            b'"@"', _deep(200_000).encode()),
        "not valid JSON"),
    "deep nesting at the top": (lambda doc: b"[" * 500_000, "not valid JSON"),
    "not UTF-8": (lambda doc: b"\xff\xfe\x00{" + bytes(range(128, 256)), "not valid JSON"),
    "a size that is not an integer": (
        lambda doc: json.dumps({**doc, "files": [
            doc["files"][0], {**doc["files"][1], "size_bytes": 1e300}]}).encode(),
        "size_bytes an integer"),
    "too many files": (
        lambda doc: json.dumps({**doc, "files": doc["files"] + [
            {"path": f"f{i}", "size_bytes": 1, "sha256": "a" * 64} for i in range(10_000)]})
        .encode(), "1 to 10000 entries"),
    "larger than the bound": (
        lambda doc: json.dumps(doc).encode() + b" " * (5 * 1024 * 1024),
        "too large"),
}


@pytest.mark.parametrize("case", list(HOSTILE_MANIFESTS))
def test_hostile_manifest_exits_11_with_one_line(moto_s3, start_server, external_model,
                                                 tmp_path, case):
    make, expected = HOSTILE_MANIFESTS[case]
    bucket = moto_s3.new_bucket()
    moto_s3.upload_model(bucket, "m/", external_model, (WEIGHTS,))
    moto_s3.client().put_object(Bucket=bucket, Key="m/" + MANIFEST_NAME,
                                Body=make(manifest_doc(external_model)))
    server = start_server(f"s3://{bucket}/m/mlp.onnx", "--cache-dir", str(tmp_path / "c"),
                          env=moto_s3.env())
    assert exit_never_ready(server) == 11
    [line] = error_lines(server)
    assert "cannot fetch model" in line, line
    assert expected in line, line
    assert "Traceback" not in server.log()
    assert len(line) < 2000  # one readable line, not the manifest echoed


def test_object_larger_than_its_manifest_size_is_refused_unread(moto_s3, start_server,
                                                                 external_model, tmp_path):
    bucket = moto_s3.new_bucket()
    moto_s3.upload_model(bucket, "m/", external_model, (WEIGHTS,))
    doc = manifest_doc(external_model)
    doc["files"][1]["size_bytes"] = 1024  # the object in S3 has 5 MB
    moto_s3.client().put_object(Bucket=bucket, Key="m/" + MANIFEST_NAME,
                                Body=json.dumps(doc).encode())
    cache = tmp_path / "c"
    server = start_server(f"s3://{bucket}/m/mlp.onnx", "--cache-dir", str(cache),
                          env=moto_s3.env())
    assert exit_never_ready(server) == 11
    [line] = error_lines(server)
    assert f"s3://{bucket}/m/{WEIGHTS}: larger than the 1024 bytes its manifest gives" in line
    written = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()
                  and p.name != ".lock")
    assert written <= (external_model.parent / "mlp.onnx").stat().st_size  # not the 5 MB
    assert not (cache / ".partial").exists()  # nothing unverified left behind


class Hostile(http.server.BaseHTTPRequestHandler):
    """Serves ``routes``: path suffix -> (mode, payload); counts the body bytes it wrote into
    ``sent``. Both are given per server by ``hostile_server``."""

    routes: ClassVar[dict[str, tuple[str, bytes]]]
    sent: ClassVar[dict[str, int]]
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        found = [route for suffix, route in self.routes.items() if path.endswith(suffix)]
        if not found:
            self.send_error(404)
            return
        with contextlib.suppress(OSError):  # the runtime gave up and closed: what is wanted
            self._serve(path, *found[0])

    def _serve(self, path: str, mode: str, payload: bytes) -> None:
        self.sent.setdefault(path, 0)
        if mode == "trickle-headers":
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
            return
        self.send_response(200)
        if mode == "file":
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_header("Connection", "close")  # no length: the body ends when we close
        self.end_headers()
        for _ in range(100_000):  # endless for the runtime: 1 byte per 50 ms, or 1 MB blocks
            chunk = payload[:1] if mode == "trickle-body" else payload
            self.wfile.write(chunk)
            self.wfile.flush()
            self.sent[path] += len(chunk)
            if mode == "trickle-body":
                time.sleep(0.05)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def hostile_server(routes: dict[str, tuple[str, bytes]]) -> Iterator[tuple[str, dict]]:
    handler = type("Routes", (Hostile,), {"routes": routes, "sent": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.sent
    finally:
        httpd.shutdown()
        httpd.server_close()


def remote_env(endpoint: str) -> dict[str, str]:
    return MotoS3(endpoint, "AKIAMLSHIPTEST000000", "secret").env()


@pytest.mark.parametrize("scheme", ["http", "s3"])
@pytest.mark.parametrize("what", ["manifest body", "manifest headers", "weights body"])
def test_trickled_download_ends_at_fetch_timeout_s(start_server, external_model, tmp_path,
                                                   scheme, what):
    doc = json.dumps(manifest_doc(external_model)).encode()
    routes = {"/mlp.onnx": ("file", (external_model.parent / "mlp.onnx").read_bytes()),
              "/" + MANIFEST_NAME: ("file", doc)}
    mode = "trickle-headers" if what == "manifest headers" else "trickle-body"
    routes["/" + (MANIFEST_NAME if what.startswith("manifest") else WEIGHTS)] = (mode, b" ")
    with hostile_server(routes) as (endpoint, _):
        source = f"{endpoint}/m/mlp.onnx" if scheme == "http" else "s3://bucket/m/mlp.onnx"
        server = start_server(source, "--cache-dir", str(tmp_path / "c"), "--fetch-timeout-s",
                              "2", env=remote_env(endpoint))
        assert exit_never_ready(server, timeout=60) == 11
    [line] = error_lines(server)
    assert "fetch_timeout_s" in line, line


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_endless_object_is_read_no_further_than_its_manifest_size(start_server, external_model,
                                                                  tmp_path, scheme):
    """No Content-Length to refuse up front: the read stops one chunk past the size."""
    doc = manifest_doc(external_model)
    size = doc["files"][1]["size_bytes"]
    routes = {"/mlp.onnx": ("file", (external_model.parent / "mlp.onnx").read_bytes()),
              "/" + MANIFEST_NAME: ("file", json.dumps(doc).encode()),
              "/" + WEIGHTS: ("endless", b"\0" * (1 << 20))}
    with hostile_server(routes) as (endpoint, sent):
        source = f"{endpoint}/m/mlp.onnx" if scheme == "http" else "s3://bucket/m/mlp.onnx"
        server = start_server(source, "--cache-dir", str(tmp_path / "c"),
                              env=remote_env(endpoint))
        assert exit_never_ready(server) == 11
        served = max(count for path, count in sent.items() if path.endswith(".bin"))
    [line] = error_lines(server)
    assert f"larger than the {size} bytes its manifest gives" in line, line
    # What was written before the runtime closed: the size, a chunk, and the socket buffers.
    assert served < size + 16 * (1 << 20), served


