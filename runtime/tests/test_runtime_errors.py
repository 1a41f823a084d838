"""Every client mistake is a 4xx with {"error": ...} naming what was wrong; never a 500."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from mlship_runtime import codec


def v2(name, datatype, shape, data):
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


TINY_X = v2("x", "FP32", [1, 4], [1, 2, 3, 4])


@pytest.mark.parametrize(("body", "status", "fragments"), [
    ({"inputs": [v2("x", "FP32", [2, 5], list(range(10)))]}, 400,
     ["input 'x'", "expected shape [-1, 4], got [2, 5]"]),
    ({"inputs": [v2("x", "FP32", [4], [1, 2, 3, 4])]}, 400, ["input 'x'", "expected shape"]),
    ({"inputs": [v2("x", "FP64", [1, 4], [1, 2, 3, 4])]}, 400,
     ["input 'x'", "expected datatype FP32, got FP64"]),
    ({"inputs": [v2("x", "FP32", [1, 4], ["a", "b", "c", "d"])]}, 400,
     ["input 'x'", "FP32"]),
    ({"inputs": [v2("x", "FP32", [1, 4], [1, 2, 3])]}, 400, ["input 'x'", "4 elements"]),
    ({"inputs": [TINY_X, v2("y", "FP32", [1], [1])]}, 400, ["unknown input 'y'"]),
    ({"inputs": []}, 400, ["input 'x' is missing"]),
    ({"inputs": [TINY_X], "outputs": [{"name": "nope"}]}, 400, ["unknown output 'nope'"]),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]}, 400,
     ["input 'x'", "neither 'data'"]),
    ({"instances": "x"}, 400, ["inputs"]),
])
def test_bad_v2_requests(servers, body, status, fragments):
    response = httpx.post(servers["tiny"].url + "/v2/models/tiny/infer", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for fragment in fragments:
        assert fragment in error


def test_malformed_json_and_bad_binary(servers):
    url = servers["tiny"].url + "/v2/models/tiny/infer"
    response = httpx.post(url, content=b'{"inputs": [')
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]
    body, headers = codec.encode_request({"x": np.zeros((1, 4), np.float32)}, binary=True)
    cases = [
        (body[:-3], headers, "binary_data_size 16"),  # truncated tensor data
        (body + b"extra", headers, "binary data sizes add up"),
        (body, {**headers, codec.HEADER_LENGTH: str(len(body) + 10)}, codec.HEADER_LENGTH),
        (body, {**headers, codec.HEADER_LENGTH: "abc"}, "must be an integer"),
    ]
    for content, hdrs, fragment in cases:
        response = httpx.post(url, content=content, headers=hdrs)
        assert response.status_code == 400, response.text
        assert fragment in response.json()["error"]
    header = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],' \
             b'"parameters":{"binary_data_size":8}}]}'
    response = httpx.post(url, content=header + b"\0" * 8,
                          headers={codec.HEADER_LENGTH: str(len(header))})
    assert response.status_code == 400
    assert "input 'x'" in response.json()["error"]
    assert "needs 16 bytes" in response.json()["error"]


def test_fixed_shape_mismatch(servers):
    body = {"inputs": [v2("x", "FP32", [2, 4], [0] * 8)]}
    response = httpx.post(servers["fixed"].url + "/v2/models/fixed/infer", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "input 'x': expected shape [1, 4], got [2, 4]"


def test_string_input_rejects_numbers_and_bad_utf8(servers):
    url = servers["mixed"].url + "/v2/models/mixed/infer"
    body = {"inputs": [v2("ids", "INT64", [1, 3], [1, 2, 3]), v2("text", "BYTES", [1, 1], [5])]}
    response = httpx.post(url, json=body)
    assert response.status_code == 400
    assert "input 'text'" in response.json()["error"]
    payload, headers = codec.encode_request(
        {"ids": np.zeros((1, 3), np.int64), "text": np.array([[b"\xff\xfe"]], dtype=object)},
        binary=True)
    response = httpx.post(url, content=payload, headers=headers)
    assert response.status_code == 400
    assert "UTF-8" in response.json()["error"]


def test_onnxruntime_failure_is_422(servers):
    url = servers["gather"].url + "/v2/models/gather/infer"
    ok = httpx.post(url, json={"inputs": [v2("idx", "INT64", [2], [0, 4])]})
    assert ok.status_code == 200
    assert ok.json()["outputs"][0]["data"] == [0, 1, 8, 9]
    response = httpx.post(url, json={"inputs": [v2("idx", "INT64", [1], [10])]})
    assert response.status_code == 422
    assert "onnxruntime" in response.json()["error"]
    assert httpx.post(url, json={"inputs": [v2("idx", "INT64", [1], [1])]}).status_code == 200


def test_routing_errors(servers):
    url = servers["tiny"].url
    for path in ("/v2/models/other/infer", "/v2/models/other", "/v2/models/tiny/versions/9/infer",
                 "/nope", "/v2/models/tiny/explain"):
        response = httpx.post(url + path, json={"inputs": [TINY_X]})
        assert response.status_code == 404, path
        assert "error" in response.json()
    assert "unknown model 'other'" in httpx.get(url + "/v2/models/other").json()["error"]
    for method, path in (("GET", "/v2/models/tiny/infer"), ("POST", "/v2/health/ready"),
                         ("GET", "/predict"), ("DELETE", "/v2/models/tiny"),
                         ("POST", "/metrics")):
        response = httpx.request(method, url + path)
        assert response.status_code == 405, (method, path)
        assert "not allowed" in response.json()["error"]


def test_predict_errors(servers):
    url = servers["mixed"].url + "/predict"
    cases = [
        (b"nope", "malformed JSON"),
        (b'{"instances": [1, 2]}', "each instance must be an object"),
        (b'{"instances": [{"ids": [1, 2, 3], "text": ["a"]}, {"ids": [1, 2, 3]}]}', "instance 1"),
        (b'{"inputs": {"ids": [[1, 2, 3]], "text": [["a"]], "zzz": [1]}}', "unknown input 'zzz'"),
        (b'{"inputs": {"ids": [["a", 2, 3]], "text": [["a"]]}}', "input 'ids'"),
        (b'{"ids": [[1, 2, 3]], "txt": [["a"]]}', "unknown input 'txt'"),
        (b'{}', 'expected {name: values}'),
        (b'[1, 2]', 'expected {name: values}'),
    ]
    for body, fragment in cases:
        response = httpx.post(url, content=body)
        assert response.status_code == 400, body
        assert fragment in response.json()["error"]


def test_body_over_limit_is_413(servers):
    url = servers["tiny"].url + "/v2/models/tiny/infer"
    big = b'{"inputs": [], "pad": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    response = httpx.post(url, content=big)
    assert response.status_code == 413
    assert "exceeds the limit of 1048576 bytes" in response.json()["error"]

    def chunks():
        for _ in range(40):
            yield b"a" * 65536

    response = httpx.post(url, content=chunks())  # chunked: no Content-Length to check upfront
    assert response.status_code == 413
    assert httpx.get(servers["tiny"].url + "/v2/health/ready").status_code == 200


def test_metrics_after_traffic(servers):
    url = servers["tiny"].url
    httpx.post(url + "/v2/models/tiny/infer", json={"inputs": [TINY_X]})
    httpx.post(url + "/v2/models/tiny/infer", json={"inputs": [v2("x", "FP32", [1], [1])]})
    text = httpx.get(url + "/metrics").text
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
             for line in text.splitlines() if line and not line.startswith("#")}
    assert lines['mlship_requests_total{model="tiny",endpoint="infer",code="200"}'] >= 1
    assert lines['mlship_requests_total{model="tiny",endpoint="infer",code="400"}'] >= 1
    assert lines['mlship_request_duration_seconds_count{model="tiny",endpoint="infer"}'] >= 2
    assert lines['mlship_inference_duration_seconds_count{model="tiny"}'] >= 1
    assert lines['mlship_batch_size_count{model="tiny"}'] >= 1
    assert lines['mlship_queue_depth{model="tiny"}'] == 0
    assert lines['mlship_model_info{model="tiny",provider="cpu",version="3"}'] == 1
    assert lines['mlship_ready{model="tiny"}'] == 1
    assert 0 < lines['mlship_model_load_seconds{model="tiny"}'] < 30
