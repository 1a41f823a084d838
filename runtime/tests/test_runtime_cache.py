"""The prediction cache: the LRU itself, then real runtime processes (hits, metrics, bounds, TTL).

A hit must return exactly the bytes the uncached request got, must skip the model (the
inference histogram does not move), and the cache must stay within its entry and byte bounds
under concurrent load with more distinct inputs than it can hold.
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from mlship_runtime import codec
from mlship_runtime.cache import PredictionCache
from mlship_runtime.options import parse_settings

LABELS = [("model", "m")]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _x(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 4), value, np.float32)}


# ---- the cache object -------------------------------------------------------------------


def test_key_covers_names_dtypes_shapes_bytes_and_outputs():
    cache = PredictionCache(8, 1 << 20, 60, LABELS)
    cache.reset("m\0")
    base = cache.key(_x(1.0, 2), ["y"])
    assert cache.key(_x(1.0, 2), ["y"]) == base
    assert cache.key({"x": np.full((2, 4), 1.0, np.float64)}, ["y"]) != base  # dtype
    assert cache.key({"x": np.full((4, 2), 1.0, np.float32)}, ["y"]) != base  # shape
    assert cache.key({"z": np.full((2, 4), 1.0, np.float32)}, ["y"]) != base  # name
    assert cache.key(_x(1.0, 2), ["y", "z"]) != base  # requested outputs
    changed = _x(1.0, 2)
    changed["x"][1, 3] = np.nextafter(np.float32(1), np.float32(2))
    assert cache.key(changed, ["y"]) != base  # one bit of one element
    # Name order does not matter; str and bytes elements of a BYTES tensor hash alike.
    two = {"a": np.zeros(2, np.int64), "b": np.array(["t", "u"], dtype=object)}
    swapped = {"b": np.array([b"t", b"u"], dtype=object), "a": np.zeros(2, np.int64)}
    assert cache.key(two, ["y"]) == cache.key(swapped, ["y"])
    other = PredictionCache(8, 1 << 20, 60, LABELS)
    other.reset("another-model\0")
    assert other.key(_x(1.0, 2), ["y"]) != base  # never across models


def test_lru_entry_and_byte_bounds_ttl_and_read_only_values():
    clock = FakeClock()
    cache = PredictionCache(3, 100, 10, LABELS, clock=clock)
    row = np.arange(4, dtype=np.float32)  # 16 bytes
    for name in "abc":
        cache.put(name.encode(), [row])
    assert cache.get(b"a") is not None  # a is now the most recently used
    cache.put(b"d", [row])  # over 3 entries: b, the least recently used, goes
    assert cache.get(b"b") is None
    assert [cache.get(k) is not None for k in (b"a", b"c", b"d")] == [True, True, True]
    assert (len(cache), cache.bytes) == (3, 48)
    cache.put(b"big", [np.zeros(20, np.float32)])  # 80 bytes: only one 16-byte entry fits too
    assert (len(cache), cache.bytes) == (2, 96)
    cache.put(b"huge", [np.zeros(26, np.float32)])  # 104 > 100: never stored, nothing evicted
    assert (len(cache), cache.bytes) == (2, 96)
    assert cache.get(b"huge") is None
    stored = cache.get(b"big")
    assert stored is not None
    with pytest.raises(ValueError, match="read-only"):
        stored[0][0] = 1
    clock.now += 10
    assert cache.get(b"big") is None  # expired: dropped, counted as a miss
    assert (len(cache), cache.bytes) == (1, 16)
    assert (cache.hits, cache.misses) == (5, 3)
    source = np.ones((2, 4), np.float32)
    cache.put(b"view", [source[1:]])
    source[1] = 7  # the cache holds a copy, not a view of the batch result
    assert cache.get(b"view")[0].tolist() == [[1, 1, 1, 1]]
    cache.reset("other")
    assert (len(cache), cache.bytes) == (0, 0)
    text = "\n".join(cache.render())
    assert 'mlship_cache_entries{model="m"} 0' in text
    assert 'mlship_cache_hits_total{model="m"} 6' in text


def test_settings_bounds():
    settings = parse_settings(["--model", "m.onnx", "--prediction-cache-entries", "10",
                               "--prediction-cache-bytes", "4096"],
                              {"MLSHIP_RUNTIME_PREDICTION_CACHE_TTL_S": "2.5"})
    assert (settings.prediction_cache_entries, settings.prediction_cache_bytes,
            settings.prediction_cache_ttl_s) == (10, 4096, 2.5)
    assert parse_settings(["--model", "m.onnx"], {}).prediction_cache_entries == 0  # off
    for args, field in ((["--prediction-cache-entries", "-1"], "prediction_cache_entries"),
                        (["--prediction-cache-bytes", "0"], "prediction_cache_bytes"),
                        (["--prediction-cache-ttl-s", "0"], "prediction_cache_ttl_s")):
        with pytest.raises(ValueError, match=field):
            parse_settings(["--model", "m.onnx", *args], {})


# ---- real servers -----------------------------------------------------------------------


def _metrics(server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def _post(server, path, inputs, **options):
    body, headers = codec.encode_request(inputs, request_id="same", **options)
    response = httpx.post(server.url + path, content=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response


def test_hit_returns_exactly_the_uncached_bytes(start_server, models):
    server = start_server(models["tiny"], "--prediction-cache-entries", "64")
    server.wait_ready()
    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    runs = 'mlship_inference_duration_seconds_count{model="tiny"}'
    path = "/v2/models/tiny/infer"
    for options, value in (({}, x), ({"binary": True, "binary_outputs": True}, x * 2)):
        before = _metrics(server)
        miss = _post(server, path, {"x": value}, **options)
        after_miss = _metrics(server)
        hit = _post(server, path, {"x": value}, **options)
        after_hit = _metrics(server)
        assert hit.content == miss.content
        assert hit.headers["content-type"] == miss.headers["content-type"]
        assert after_miss[runs] == before[runs] + 1
        assert after_hit[runs] == after_miss[runs]  # the hit never reached the model
        assert after_hit['mlship_cache_hits_total{model="tiny"}'] == \
            before['mlship_cache_hits_total{model="tiny"}'] + 1
    session = ort.InferenceSession(str(models["tiny"]), providers=["CPUExecutionProvider"])
    decoded = codec.decode_response(hit.content, hit.headers)["probabilities"]
    np.testing.assert_array_equal(decoded, session.run(None, {"x": x * 2})[0])
    # JSON and binary requests of the same tensor share one entry.
    as_json = _post(server, path, {"x": x * 2})
    np.testing.assert_array_equal(codec.decode_response(as_json.content)["probabilities"],
                                  decoded)
    metrics = _metrics(server)
    assert metrics['mlship_cache_misses_total{model="tiny"}'] == 2
    assert metrics['mlship_cache_hits_total{model="tiny"}'] == 3
    assert metrics['mlship_cache_entries{model="tiny"}'] == 2
    assert metrics['mlship_cache_bytes{model="tiny"}'] == 2 * 3 * 3 * 4
    # /predict computes the same outputs: served from the same entry, its own encoding.
    first = httpx.post(server.url + "/predict", json={"inputs": {"x": x.tolist()}})
    second = httpx.post(server.url + "/predict", json={"inputs": {"x": x.tolist()}})
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert _metrics(server)['mlship_cache_hits_total{model="tiny"}'] == 5
    # A different input is a miss, never someone else's answer.
    other = codec.decode_response(_post(server, path, {"x": x + 1}).content)["probabilities"]
    np.testing.assert_array_equal(other, session.run(None, {"x": x + 1})[0])
    assert _metrics(server)['mlship_cache_misses_total{model="tiny"}'] == 3


def test_strings_and_requested_outputs(start_server, models):
    server = start_server(models["mixed"], "--prediction-cache-entries", "8")
    server.wait_ready()
    inputs = {"ids": np.array([[1, 2, 3]], np.int64), "text": np.array([["hé"]], dtype=object)}
    path = "/v2/models/mixed/infer"
    full = _post(server, path, inputs)
    only_total = _post(server, path, inputs, outputs=["total"])
    assert codec.decode_response(only_total.content).keys() == {"total"}
    binary = _post(server, path, {"ids": inputs["ids"],
                                  "text": np.array([["hé".encode()]], dtype=object)},
                   binary=True)
    assert binary.content == full.content
    metrics = _metrics(server)
    assert metrics['mlship_cache_misses_total{model="mixed"}'] == 2  # full, then only_total
    assert metrics['mlship_cache_hits_total{model="mixed"}'] == 1
    assert metrics['mlship_cache_entries{model="mixed"}'] == 2


def test_cache_stays_within_bounds_under_load(start_server, models):
    """4 clients, 600 requests over 240 distinct inputs of 1-8 rows, against 32 entries and
    1 KiB: both bounds bind. /metrics is scraped all along; every answer is checked."""
    max_entries, max_bytes = 32, 1024
    server = start_server(models["tiny"], "--prediction-cache-entries", str(max_entries),
                          "--prediction-cache-bytes", str(max_bytes))
    server.wait_ready()
    rng = np.random.default_rng(11)
    pool = [rng.standard_normal((int(rng.integers(1, 9)), 4)).astype(np.float32)
            for _ in range(240)]
    session = ort.InferenceSession(str(models["tiny"]), providers=["CPUExecutionProvider"])
    expected = [session.run(None, {"x": x})[0] for x in pool]
    scrapes: list[dict[str, float]] = []
    failures: list[str] = []
    done = threading.Event()

    def client(seed: int) -> None:
        picks = np.random.default_rng(seed).integers(0, len(pool), 150)
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for index in picks:
                body, headers = codec.encode_request({"x": pool[index]}, binary=seed % 2 == 0)
                response = http.post("/v2/models/tiny/infer", content=body, headers=headers)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                    continue
                got = codec.decode_response(response.content, response.headers)
                if not np.array_equal(got["probabilities"], expected[index]):
                    failures.append(f"wrong answer for input {index}")

    def scraper() -> None:
        deadline = time.monotonic() + 120  # bounded even if a client hangs
        while not done.is_set() and time.monotonic() < deadline:
            scrapes.append(_metrics(server))
            time.sleep(0.01)

    watcher = threading.Thread(target=scraper)
    watcher.start()
    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    done.set()
    watcher.join(timeout=10)
    scrapes.append(_metrics(server))
    assert not failures, failures[:5]
    assert len(scrapes) > 3
    entries = [s['mlship_cache_entries{model="tiny"}'] for s in scrapes]
    sizes = [s['mlship_cache_bytes{model="tiny"}'] for s in scrapes]
    assert max(entries) <= max_entries
    assert max(sizes) <= max_bytes
    final = scrapes[-1]
    hits = final['mlship_cache_hits_total{model="tiny"}']
    misses = final['mlship_cache_misses_total{model="tiny"}']
    assert hits + misses == 600
    assert hits > 0
    assert misses > len(pool) / 2  # evictions happened: far more misses than a no-bound cache
    assert final['mlship_inference_duration_seconds_count{model="tiny"}'] <= misses


def test_entries_expire_after_the_ttl(start_server, models):
    server = start_server(models["tiny"], "--prediction-cache-entries", "8",
                          "--prediction-cache-ttl-s", "1")
    server.wait_ready()
    x = {"x": np.ones((1, 4), np.float32)}
    first = _post(server, "/v2/models/tiny/infer", x)
    # The entry may already be stale on a very slow machine; it must be at the next step.
    _post(server, "/v2/models/tiny/infer", x)
    time.sleep(1.2)
    stale = _post(server, "/v2/models/tiny/infer", x)
    assert stale.content == first.content
    metrics = _metrics(server)
    hits = metrics['mlship_cache_hits_total{model="tiny"}']
    misses = metrics['mlship_cache_misses_total{model="tiny"}']
    assert hits + misses == 3
    assert misses >= 2  # the first request and the one after the TTL


def test_cache_off_by_default(servers):
    text = httpx.get(servers["tiny"].url + "/metrics").text
    assert "mlship_cache_" not in text
