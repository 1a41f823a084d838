"""Shadow mirroring between two real runtime processes on loopback: the stable one mirrors a
sample of its V2 infer requests to the shadow and compares the answers (mlship_runtime.shadow).

A dead, hung or wrong shadow never changes a live answer: every test asserts the live status
codes and the counters, never timings (the cost is measured in bench/shadow_bench.py).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import modelzoo
import numpy as np
import pytest
from mlship_runtime import codec
from netprobe import free_port

ROWS = np.random.default_rng(5).standard_normal((40, 4)).astype(np.float32)
_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def _metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = frozenset(tuple(pair.split("=", 1)) for pair in
                               re.findall(r'(\w+="[^"]*")', match[2]))
            found[(match[1], frozenset((k, v.strip('"')) for k, v in labels))] = \
                float(match[3])
    return found


def _value(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for (metric, have), value in _metrics(url).items():
        if metric == name and set(labels.items()) <= have:
            total += value
    return total


def _wait_for(url: str, name: str, at_least: float, timeout: float = 30, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = _value(url, name, **labels)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _send(url: str, count: int, *, binary: bool = False) -> list[int]:
    codes = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for index in range(count):
            body, headers = codec.encode_request({"x": ROWS[index % 40:index % 40 + 1]},
                                                 binary=binary, binary_outputs=binary)
            codes.append(client.post("/v2/models/tiny/infer", content=body,
                                     headers=headers).status_code)
    return codes


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, Path]:
    """The stable model, a copy of it, and another with other weights: all named ``tiny``."""
    paths = {}
    for key, seed in (("stable", 0), ("same", 0), ("other", 1)):
        (tmp_path / key).mkdir()
        paths[key] = modelzoo.tiny_classifier(tmp_path / key / "tiny.onnx", seed)
    return paths


def _pair(start_server, tiny: dict[str, Path], shadow: str, *extra: str):
    shadow_server = start_server(tiny[shadow])
    shadow_server.wait_ready()
    stable = start_server(tiny["stable"], "--shadow-url", shadow_server.url,
                          "--shadow-max-per-second", "1000", *extra)
    stable.wait_ready()
    return stable, shadow_server


def test_identical_model_agrees_on_every_request(start_server, tiny) -> None:
    stable, shadow = _pair(start_server, tiny, "same")
    assert _send(stable.url, 20) + _send(stable.url, 5, binary=True) == [200] * 25
    compared = _wait_for(stable.url, "mlship_shadow_compared_total", 25,
                         output="probabilities")
    assert compared == 25
    assert _value(stable.url, "mlship_shadow_disagreed_total") == 0
    assert _value(stable.url, "mlship_shadow_mirrored_total") == 25
    assert _value(stable.url, "mlship_shadow_errors_total") == 0
    assert _value(stable.url, "mlship_shadow_dropped_total") == 0
    assert _value(stable.url, "mlship_shadow_deviation_bucket", le="1e-06") == 25
    # The shadow answered the mirrored requests (on its own metrics, unlabelled as a shadow).
    assert _value(shadow.url, "mlship_requests_total", endpoint="infer", code="200") == 25


def test_other_model_disagreements_are_counted(start_server, tiny) -> None:
    stable, _ = _pair(start_server, tiny, "other")
    assert _send(stable.url, 40) == [200] * 40
    compared = _wait_for(stable.url, "mlship_shadow_compared_total", 40)
    disagreed = _value(stable.url, "mlship_shadow_disagreed_total", output="probabilities")
    # Other weights: the top-1 class of some rows differs, not of all (both are 3-class).
    assert compared == 40
    assert 0 < disagreed < 40
    assert _value(stable.url, "mlship_shadow_deviation_bucket", le="1") == 40
    assert _value(stable.url, "mlship_shadow_deviation_bucket", le="1e-06") == 40 - disagreed


def test_numeric_tolerance_from_the_setting(start_server, tiny) -> None:
    """Compared as numbers with a tolerance no other weights meet: every request disagrees."""
    tolerances = '{"default": {"compare": "numeric", "relative": 0.0001}}'
    stable, _ = _pair(start_server, tiny, "other", "--shadow-tolerances", tolerances)
    assert _send(stable.url, 10) == [200] * 10
    assert _wait_for(stable.url, "mlship_shadow_compared_total", 10) == 10
    assert _value(stable.url, "mlship_shadow_disagreed_total") == 10


def test_dead_shadow_never_fails_a_live_request(start_server, tiny) -> None:
    stable = start_server(tiny["stable"], "--shadow-url", f"http://127.0.0.1:{free_port()}",
                          "--shadow-max-per-second", "1000")
    stable.wait_ready()
    assert _send(stable.url, 20) == [200] * 20
    errors = _wait_for(stable.url, "mlship_shadow_errors_total", 1, reason="connect")
    backoff = _value(stable.url, "mlship_shadow_dropped_total", reason="backoff")
    # One refused connection stops the mirroring for a second: the requests after it (or
    # queued with it) are dropped, not sent to fail alike.
    assert errors >= 1
    assert backoff > 0
    mirrored = _value(stable.url, "mlship_shadow_mirrored_total")
    assert mirrored + backoff == 20
    assert _value(stable.url, "mlship_shadow_compared_total") == 0


@pytest.fixture
def hung_shadow() -> Iterator[str]:
    """A loopback listener that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def test_hung_shadow_fills_the_bounded_queue_and_drops(start_server, tiny,
                                                       hung_shadow: str) -> None:
    """Senders wait on the hung shadow up to the deadline (request_timeout_s here): the queue
    fills, further requests are dropped and counted, every live answer is a 200."""
    stable = start_server(tiny["stable"], "--shadow-url", hung_shadow,
                          "--shadow-max-per-second", "1000", "--request-timeout-s", "2")
    stable.wait_ready()
    assert _send(stable.url, 100) == [200] * 100
    dropped = _value(stable.url, "mlship_shadow_dropped_total", reason="queue_full")
    assert dropped > 0
    timeouts = _wait_for(stable.url, "mlship_shadow_errors_total", 1, reason="timeout")
    assert timeouts >= 1  # then the queue is dropped and mirroring backs off
    backoff = _value(stable.url, "mlship_shadow_dropped_total", reason="backoff")
    assert backoff > 0
    assert _value(stable.url, "mlship_shadow_mirrored_total") + dropped + backoff <= 100
    assert _value(stable.url, "mlship_requests_total", endpoint="infer", code="200") == 100


def test_rate_cap_and_sample_rate_bound_the_mirroring(start_server, tiny) -> None:
    shadow = start_server(tiny["same"])
    shadow.wait_ready()
    capped = start_server(tiny["stable"], "--shadow-url", shadow.url,
                          "--shadow-max-per-second", "1")
    none = start_server(tiny["stable"], "--shadow-url", shadow.url, "--shadow-sample-rate", "0")
    capped.wait_ready()
    none.wait_ready()
    started = time.monotonic()
    assert _send(capped.url, 20) == [200] * 20
    elapsed = time.monotonic() - started
    capped_off = _value(capped.url, "mlship_shadow_dropped_total", reason="rate_cap")
    mirrored = _wait_for(capped.url, "mlship_shadow_mirrored_total", 20 - capped_off)
    assert mirrored + capped_off == 20
    assert mirrored <= 1 + elapsed  # one token at the start, one per second after
    assert _send(none.url, 10) == [200] * 10
    assert _value(none.url, "mlship_shadow_mirrored_total") == 0
    assert _value(none.url, "mlship_shadow_dropped_total") == 0


def test_bad_shadow_settings_refuse_to_start(start_server, tiny) -> None:
    for args in (["--shadow-url", "ftp://x"], ["--shadow-url", "http://x:port"],
                 ["--shadow-tolerances", '{"default": 1}'],
                 ["--shadow-sample-rate", "2"]):
        server = start_server(tiny["stable"], *args)
        assert server.proc.wait(30) == 2, server.log()
        assert "shadow" in server.log()
