"""The audit trail and the payload log, on the real server: one JSON line per request for
every status class, caller identity only from a trusted header, request ids honoured or made,
no body ever in a line, no line forged; the payload log's sampling, rate and size bounds."""

from __future__ import annotations

import concurrent.futures
import json
import random
import signal
import time
from pathlib import Path

import httpx
import modelzoo
import numpy as np
import pytest
from mlship_runtime import codec
from mlship_runtime.audit import _Clock
from mlship_runtime.payloads import PayloadLog
from mlship_runtime.settings import RuntimeSettings
from mlship_runtime.xfcc import forwarded_identity

SECRET = 4242.125  # an input value that must never reach the audit trail
XFCC = ('By=spiffe://cluster.local/ns/mlship/sa/iris;Hash=3f2a;Subject="CN=web,O=a\\"b, c";'
        'URI=spiffe://cluster.local/ns/frontend/sa/web;DNS=web.frontend')
FIELDS = {"time", "level", "logger", "message", "request_id", "client", "client_port",
          "identity", "method", "path", "model", "version", "status", "latency_ms"}


def audit_lines(log: str) -> list[dict]:
    lines = []
    for text in log.splitlines():
        if '"mlship_runtime.audit"' in text:
            entry = json.loads(text)  # every audit line is one whole JSON object
            if entry["path"] not in ("/v2/health/ready", "/v2/health/live"):  # the waits
                lines.append(entry)
    return lines


def infer(server, body: object, **headers: str) -> httpx.Response:
    return httpx.post(server.url + "/v2/models/tiny/infer", json=body, headers=headers,
                      timeout=30)


def _body(value: float = SECRET) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                        "data": [value, 0, 0, 0]}]}


@pytest.fixture(scope="module")
def loop_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return modelzoo.data_loop(tmp_path_factory.mktemp("loop") / "loop.onnx")


def test_one_line_per_request_for_2xx_and_4xx(start_server, models):
    server = start_server(models["tiny"], "--access-log", "true", "--model-version", "7",
                          "--max-body-bytes", "2048")
    server.wait_ready()
    answers = {
        200: infer(server, _body(), **{"x-request-id": "client-id-1"}),
        400: httpx.post(server.url + "/v2/models/tiny/infer", content=b"{not json",
                        headers={"content-type": "application/json"}),
        404: httpx.get(server.url + "/v2/models/other/versions/2"),
        405: httpx.get(server.url + "/v2/models/tiny/infer"),
        413: httpx.post(server.url + "/v2/models/tiny/infer", content=b"[" * 4096),
    }
    assert {status: answer.status_code for status, answer in answers.items()} == \
        {status: status for status in answers}
    assert server.stop() == 0
    lines = audit_lines(server.log())
    assert [line["status"] for line in lines] == list(answers)
    for line, answer in zip(lines, answers.values(), strict=True):
        assert set(line) == FIELDS
        assert line["level"] == "info"
        assert line["time"].endswith("Z")
        assert line["client"] == "127.0.0.1"
        assert isinstance(line["client_port"], int)
        assert line["identity"] is None
        assert 0 < line["latency_ms"] < 30_000
        assert line["message"] == f"{line['method']} {line['path']} {line['status']}"
        assert answer.headers["x-request-id"] == line["request_id"]  # echoed to the client
    ok, bad, unknown, method, too_large = lines
    assert ok["request_id"] == "client-id-1"
    assert (ok["model"], ok["version"], ok["method"]) == ("tiny", "7", "POST")
    assert (unknown["model"], unknown["version"]) == ("other", "2")
    generated = {line["request_id"] for line in lines[1:]}
    assert len(generated) == 4  # made for the rest, each its own
    assert all(line["model"] == "tiny" for line in (bad, method, too_large))
    assert str(SECRET) not in server.log()  # never a body


def test_5xx_lines_for_the_request_deadline_and_the_drain_cut(start_server, loop_model):
    server = start_server(loop_model, "--access-log", "true", "--request-timeout-s", "2",
                          "--drain-grace-s", "1", "--execution", "thread")
    server.wait_ready()
    x = np.zeros((1, 64), dtype=np.float32)
    endless, headers = codec.encode_request({"x": x, "n": np.full(1, 10**12, dtype=np.int64)},
                                            binary=True)

    def post() -> httpx.Response:
        return httpx.post(server.url + "/v2/models/loop/infer", content=endless,
                          headers=headers, timeout=30)

    assert post().status_code == 504
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post)
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        assert pending.result(20).status_code == 503
    assert server.proc.wait(20) == 0
    timeout, cut = audit_lines(server.log())
    assert (timeout["status"], cut["status"]) == (504, 503)
    # uvloop's timers count from the loop's clock as of its iteration's start: up to a few
    # ms early by a clock read later (seen: 1999.707)
    assert timeout["latency_ms"] >= 1990
    assert {timeout["model"], cut["model"]} == {"loop"}


def test_identity_only_from_a_trusted_header(start_server, models):
    trusting = start_server(models["tiny"], "--access-log", "true",
                            "--trust-forwarded-client-cert", "true")
    plain = start_server(models["tiny"], "--access-log", "true")
    for server in (trusting, plain):
        server.wait_ready()
        assert infer(server, _body(1), **{"x-forwarded-client-cert": XFCC}).status_code == 200
        assert server.stop() == 0
    (trusted,) = audit_lines(trusting.log())
    (untrusted,) = audit_lines(plain.log())
    assert trusted["identity"] == "spiffe://cluster.local/ns/frontend/sa/web"
    assert untrusted["identity"] is None  # without a sidecar, anyone could send the header


@pytest.mark.parametrize(("header", "identity"), [
    (XFCC, "spiffe://cluster.local/ns/frontend/sa/web"),
    # Two hops: the last element is the one this pod's sidecar appended.
    ('URI=spiffe://td/ns/a/sa/first,By=spiffe://td/ns/b/sa/me;URI=spiffe://td/ns/c/sa/last',
     "spiffe://td/ns/c/sa/last"),
    ('URI=spiffe://td/ns/a/sa/x,Hash=1', None),  # the last hop has no identity
    ('Subject="URI=spiffe://td/ns/forged/sa/x";Hash=1', None),  # quoted text is not a field
    ('URI=https://example.com/x', None),
    ('URI="spiffe://td/ns/q/sa/quoted"', "spiffe://td/ns/q/sa/quoted"),
    ('Subject="unterminated;URI=spiffe://td/ns/a/sa/b', None),
    ("garbage without pairs", None),
    ("", None),
])
def test_forwarded_client_cert_parsing(header: str, identity: str | None) -> None:
    assert forwarded_identity(header.encode()) == identity


def test_client_values_cannot_forge_or_split_lines(start_server, models):
    server = start_server(models["tiny"], "--access-log", "true", "--log-format", "plain")
    server.wait_ready()
    forged = '", "status": 200}\n{"logger": "mlship_runtime.audit", "status": 200'
    # The last: control characters JSON writes six bytes each, a line over PIPE_BUF (4096)
    paths = ["/v2/x%0d%0a2026-01-01 00:00:00,000 ERROR forged%1b[31m",
             "/v2/models/" + forged.replace("\n", "%0a").replace(" ", "%20").replace('"', "%22"),
             "/v2/y" + "%01" * 1100]
    for path in paths:
        assert httpx.get(server.url + path).status_code == 404
    ids = ['q"uote{}\\', "x" * 129]
    for request_id in ids:
        assert infer(server, _body(1), **{"x-request-id": request_id}).status_code == 200
    assert server.stop() == 0
    log = server.log()
    assert not any(line.startswith(("2026-01-01", '{"logger"')) for line in log.splitlines())
    assert "\x1b" not in log
    lines = audit_lines(log)
    assert len(lines) == 5
    assert lines[0]["path"] == "/v2/x\r\n2026-01-01 00:00:00,000 ERROR forged\x1b[31m"
    assert lines[1]["path"] == "/v2/models/" + forged
    assert lines[1]["status"] == 404
    assert lines[2]["path"] == ("/v2/y" + "\x01" * 1100)[:1024]  # cut to MAX_PATH, kept whole
    assert lines[2]["status"] == 404
    assert lines[3]["request_id"] == ids[0]  # visible ASCII: kept, and escaped
    assert lines[4]["request_id"] != ids[1]  # too long: replaced


def test_payload_log_records_sampled_bodies_to_a_file(start_server, models, tmp_path):
    target = tmp_path / "payloads.jsonl"
    server = start_server(models["tiny"], "--payload-log", str(target),
                          "--payload-log-sample", "1", "--payload-log-rate", "1000",
                          "--payload-log-max-bytes", "64")
    server.wait_ready()
    sent = json.dumps(_body()).encode()
    answer = httpx.post(server.url + "/v2/models/tiny/infer", content=sent,
                        headers={"x-request-id": "p-1", "content-type": "application/json"})
    assert answer.status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200  # a GET: no body, not logged
    assert server.stop() == 0
    (record,) = [json.loads(line) for line in target.read_text().splitlines()]
    assert (record["request_id"], record["model"], record["status"]) == ("p-1", "tiny", 200)
    assert record["request"]["bytes"] == len(sent)
    assert record["request"]["truncated"] is True  # cut at 64 bytes
    assert record["request"]["text"] == sent[:64].decode()
    assert record["response"]["bytes"] == len(answer.content)
    assert not audit_lines(server.log())  # access_log off: the payload log alone
    assert target.stat().st_mode & 0o777 == 0o600


def _payloads(tmp_path: Path, **values: object) -> PayloadLog:
    settings = RuntimeSettings(model="m.onnx", payload_log=str(tmp_path / "p.jsonl"),
                               **values)  # type: ignore[arg-type]
    return PayloadLog(settings, _Clock())


def test_payload_sampling_takes_its_share(tmp_path: Path) -> None:
    random.seed(7)
    payloads = _payloads(tmp_path, payload_log_sample=0.1, payload_log_rate=1000)
    taken = 0
    for _ in range(5000):
        payloads.tokens = 1000.0  # the rate bound apart: the share alone
        taken += payloads.take()
    assert 400 < taken < 600  # 10 % of 5000, within 5 standard deviations
    assert not any(_payloads(tmp_path, payload_log_sample=0).take() for _ in range(100))


def test_payload_rate_is_bounded_whatever_the_share(tmp_path: Path) -> None:
    payloads = _payloads(tmp_path, payload_log_sample=1, payload_log_rate=5)
    assert sum(payloads.take() for _ in range(1000)) <= 6  # a burst: the bucket's 5, no more
    payloads.refilled -= 1.0  # a second later: 5 more tokens, never more than the bucket
    assert sum(payloads.take() for _ in range(1000)) == 5


def test_payload_bodies_and_file_are_bounded(tmp_path: Path) -> None:
    payloads = _payloads(tmp_path, payload_log_max_bytes=64, payload_log_file_bytes=64 * 1024)
    text = ("é" * 40).encode()  # 80 bytes: the cut at 64 falls inside no character
    assert payloads.body([text], len(text)) == {"bytes": 80, "truncated": True,
                                                "text": "é" * 32}
    odd = ("a" + "é" * 40).encode()  # the cut at 64 splits an é: dropped, not mangled
    assert payloads.body([odd], len(odd))["text"] == "a" + "é" * 31
    binary = bytes(range(255, -1, -1)) * 2  # starts with 0xff: not UTF-8
    entry = payloads.body([binary[:10], binary[10:]], len(binary))
    assert entry["bytes"] == 512
    assert "base64" in entry
    line = {"request_id": "r", "model": "m", "version": None, "status": 200}
    for _ in range(2000):  # ~340 KB of records through a 64 KiB file
        payloads.write(line, payloads.body([text], 80), payloads.body([binary], 512))
    current, previous = tmp_path / "p.jsonl", tmp_path / "p.jsonl.1"
    assert current.stat().st_size <= 64 * 1024
    assert previous.stat().st_size <= 64 * 1024
    for path in (current, previous):
        assert all(json.loads(line)["request_id"] == "r"
                   for line in path.read_text().splitlines())


def test_several_models_each_request_has_its_line(tmp_path):
    from test_runtime_repository import REPOSITORY, RepositoryServer, build_models

    paths = build_models(tmp_path)
    config = paths["a"].parent / "models.json"
    config.write_text(json.dumps(REPOSITORY))
    server = RepositoryServer(config, tmp_path / "repo.log", "--access-log", "true")
    server.wait_ready()
    x = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    answers = [httpx.post(server.url + "/v2/models/a/infer", json=x),
               httpx.post(server.url + "/v2/models/ab/infer", json=x),
               httpx.post(server.url + "/v2/repository/index", json={}),
               httpx.get(server.url + "/v2/models/nothing")]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 404]
    assert server.stop() == 0
    lines = audit_lines(server.log())
    assert [(line["model"], line["version"], line["status"]) for line in lines] == [
        ("a", "1", 200), ("ab", None, 200), (None, None, 200), ("nothing", None, 404)]
    assert [line["request_id"] for line in lines] == \
        [answer.headers["x-request-id"] for answer in answers]
