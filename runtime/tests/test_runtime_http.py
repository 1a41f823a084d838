"""The runtime's own HTTP/1.1 connection (mlship_runtime.connection), on raw sockets: what a
client of any HTTP/1.1 server relies on, for requests run eagerly and for those that stream.

Against the model server, and against a real uvicorn ``Server`` with the same connection class
and a small ASGI app of the test's own for what the model app never does (a chunked answer, a
header that would split the response, an app that fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from mlship_runtime.connection import connection_class
from mlship_runtime.protocol import Limits

INFER = b"/v2/models/tiny/infer"
BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                               "data": [1, 2, 3, 4]}]}).encode()


def post(path: bytes, body: bytes, *extra: bytes, version: bytes = b"1.1") -> bytes:
    head = [b"POST " + path + b" HTTP/" + version, b"Host: x",
            b"Content-Type: application/json", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def read_response(reader: Any, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One response from a socket's buffered reader: status, headers, body (chunked or not)."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        assert name.lower() not in headers, f"header {name} twice"
        headers[name.lower()] = value.strip()
    if method == "HEAD" or status in (100, 204, 304):
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while (size := int(reader.readline(), 16)) > 0:
            body += reader.read(size)
            assert reader.read(2) == b"\r\n"
        assert reader.read(2) == b"\r\n"
        return status, headers, body
    return status, headers, reader.read(int(headers["content-length"]))


@contextlib.contextmanager
def connected(port: int) -> Iterator[tuple[socket.socket, Any]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        yield sock, sock.makefile("rb")


def closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def probabilities(body: bytes) -> list[float]:
    return json.loads(body)["outputs"][0]["data"]


# ---- against the model server -------------------------------------------------------------------

def test_pipelined_requests_are_answered_in_order_on_one_connection(servers):
    server = servers["tiny"]
    expected = probabilities(read_once(server.port, post(INFER, BODY)))
    other = BODY.replace(b"[1, 2, 3, 4]", b"[4, 3, 2, 1]")
    requests = [post(INFER, BODY), b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
                post(INFER, other), post(INFER, b"{not json")]
    with connected(server.port) as (sock, reader):
        sock.sendall(b"".join(requests))  # one write: the server sees them in one read
        answers = [read_response(reader) for _ in requests]
    assert [status for status, _, _ in answers] == [200, 200, 200, 400]
    assert probabilities(answers[0][2]) == expected
    assert json.loads(answers[1][2]) == {"live": True}
    assert probabilities(answers[2][2]) != expected
    assert "error" in json.loads(answers[3][2])


def read_once(port: int, request: bytes) -> bytes:
    with connected(port) as (sock, reader):
        sock.sendall(request)
        status, _, body = read_response(reader)
    assert status == 200, body
    return body


def test_http_1_0_is_answered_and_closed_and_1_1_kept_alive(servers):
    port = servers["tiny"].port
    with connected(port) as (sock, reader):
        sock.sendall(post(INFER, BODY, version=b"1.0"))
        status, headers, _ = read_response(reader)
        assert status == 200
        assert headers["connection"] == "close"
        assert closed(sock)
    with connected(port) as (sock, reader):
        for _ in range(3):
            sock.sendall(post(INFER, BODY))
            status, headers, _ = read_response(reader)
            assert status == 200
            assert "connection" not in headers


def test_expect_100_continue_gets_its_interim_answer_before_the_body(servers):
    with connected(servers["tiny"].port) as (sock, reader):
        request = post(INFER, BODY, b"Expect: 100-continue")
        sock.sendall(request[:-len(BODY)])
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert reader.readline() == b"\r\n"
        sock.sendall(BODY)
        status, _, body = read_response(reader)
    assert status == 200, body


def test_a_chunked_request_body_is_reassembled(servers):
    chunks = [BODY[:7], BODY[7:30], BODY[30:]]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    with connected(servers["tiny"].port) as (sock, reader):
        sock.sendall(b"POST " + INFER + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (encoded[:10], encoded[10:50], encoded[50:]):
            sock.sendall(piece)
            time.sleep(0.05)  # separate reads: the app waits for the rest of the body
        status, _, body = read_response(reader)
    assert status == 200, body
    assert probabilities(body) == probabilities(read_once(servers["tiny"].port,
                                                          post(INFER, BODY)))


def test_head_has_the_length_but_no_body_and_the_connection_goes_on(servers):
    with connected(servers["tiny"].port) as (sock, reader):
        sock.sendall(b"HEAD /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response(reader, "HEAD")
        assert status == 200
        assert headers["content-length"] == "14"
        status, again, body = read_response(reader)
        assert (status, again["content-length"], body) == (200, "14", b'{"ready":true}')


@pytest.mark.parametrize("garbage", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
                                     b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n"])
def test_what_does_not_parse_is_a_json_400_and_the_connection_closed(servers, garbage):
    with connected(servers["tiny"].port) as (sock, reader):
        sock.sendall(garbage)
        status, headers, body = read_response(reader)
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"].startswith("invalid HTTP request")
        assert closed(sock)


def test_a_body_too_large_to_run_eagerly_streams_in(start_server, models):
    server = start_server(models["tiny"], "--max-body-bytes", str(8 * 1024 * 1024))
    server.wait_ready()
    padded = BODY[:-1] + b" " * (3 * 1024 * 1024) + b"}"  # over connection.EAGER_BODY
    with connected(server.port) as (sock, reader):
        sock.sendall(post(INFER, padded))
        status, _, body = read_response(reader)
        assert status == 200, body
        sock.sendall(post(INFER, BODY))  # and the connection is in step for the next
        assert read_response(reader)[0] == 200


# ---- against the connection class with an ASGI app of the test's own ---------------------------

async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/fail":
        raise RuntimeError("the app failed")
    if path == "/split":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-echo", b"a\r\nset-cookie: forged=1")]})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/slow":
        await asyncio.sleep(0.2)  # a request that really waits: it becomes a task
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": []})  # no length
    for piece in (b"echo:", body, b""):
        await send({"type": "http.response.body", "body": piece, "more_body": piece != b""})


@pytest.fixture(scope="module")
def own_server() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None,
                            http=connection_class(Limits(8192, 5, 5, 100)),
                            timeout_keep_alive=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield port
    server.should_exit = True
    thread.join(10)


def test_an_answer_without_a_length_is_chunked(own_server):
    with connected(own_server) as (sock, reader):
        for path in (b"/echo", b"/slow"):
            sock.sendall(post(path, b"hello"))
            status, headers, body = read_response(reader)
            assert (status, headers["transfer-encoding"], body) == (200, "chunked",
                                                                     b"echo:hello")


def test_a_header_that_would_split_the_response_is_refused(own_server):
    with connected(own_server) as (sock, reader):
        sock.sendall(b"GET /split HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response(reader)
        assert status == 500
        assert "set-cookie" not in headers
        assert closed(sock)


def test_an_app_failure_is_a_500_and_a_closed_connection(own_server):
    with connected(own_server) as (sock, reader):
        sock.sendall(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(reader)
        assert status == 500
        assert json.loads(body) == {"error": "internal server error"}
        assert closed(sock)


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(own_server):
    with connected(own_server) as (sock, reader):
        sock.sendall(post(b"/echo", b"x"))
        assert read_response(reader)[0] == 200
        started = time.monotonic()
        assert closed(sock)
        assert 0.9 < time.monotonic() - started < 4  # timeout_keep_alive=1, a sweep's lag
