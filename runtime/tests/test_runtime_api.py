"""HTTP API against the real server: metadata, health, V2 infer (JSON and binary), /predict."""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from mlship_runtime import codec
from modelzoo import ALL_TYPES


def reference(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def infer(server, model, inputs, *, binary=False, binary_outputs=False, outputs=None,
          version=None):
    body, headers = codec.encode_request(inputs, binary=binary, binary_outputs=binary_outputs,
                                         outputs=outputs, request_id="req-1")
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    response = httpx.post(server.url + path, content=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    if binary_outputs:
        assert codec.HEADER_LENGTH.lower() in response.headers
    return codec.decode_response(response.content, response.headers)


def test_server_metadata_and_health(servers):
    url = servers["tiny"].url
    meta = httpx.get(url + "/v2").json()
    assert meta["name"] == "mlship-runtime"
    assert "binary_tensor_data" in meta["extensions"]
    for path in ("/v2/health/live", "/v2/health/ready", "/health", "/v2/models/tiny/ready",
                 "/v2/models/tiny/versions/3/ready"):
        assert httpx.get(url + path).status_code == 200, path


def test_model_metadata(servers):
    for path in ("/v2/models/tiny", "/v2/models/tiny/versions/3"):
        meta = httpx.get(servers["tiny"].url + path).json()
        assert meta["name"] == "tiny"
        assert meta["versions"] == ["3"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32",
                                    "shape": [-1, 3]}]
        assert meta["parameters"]["provider"] == "cpu"
        assert meta["parameters"]["intra_op_threads"] == 1
    mixed = httpx.get(servers["mixed"].url + "/v2/models/mixed").json()
    assert {i["name"]: i["datatype"] for i in mixed["inputs"]} == {"ids": "INT64", "text": "BYTES"}
    sk = httpx.get(servers["sklearn"].url + "/v2/models/sklearn").json()
    assert {o["name"]: (o["datatype"], o["shape"]) for o in sk["outputs"]} == {
        "output_label": ("INT64", [-1]), "output_probability": ("BYTES", [-1])}


@pytest.mark.parametrize(("binary", "binary_outputs"), [(False, False), (True, True),
                                                       (False, True), (True, False)])
def test_tiny_matches_onnxruntime(servers, models, binary, binary_outputs):
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    got = infer(servers["tiny"], "tiny", {"x": x}, binary=binary, binary_outputs=binary_outputs)
    np.testing.assert_allclose(got["probabilities"], reference(models["tiny"], {"x": x})
                               ["probabilities"], rtol=1e-6)


def test_nested_json_data_id_and_version(servers, models):
    x = [[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]]
    body = {"id": "abc", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                                     "data": x}]}
    response = httpx.post(servers["tiny"].url + "/v2/models/tiny/versions/3/infer", json=body)
    assert response.status_code == 200
    doc = response.json()
    assert doc["id"] == "abc"
    assert doc["model_name"] == "tiny"
    assert doc["model_version"] == "3"
    (out,) = doc["outputs"]
    assert out["shape"] == [2, 3]
    expected = reference(models["tiny"], {"x": np.array(x, dtype=np.float32)})["probabilities"]
    np.testing.assert_allclose(np.array(out["data"]).reshape(2, 3), expected, rtol=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_roundtrips(servers, binary):
    inputs = {}
    for name in ALL_TYPES:
        if name == "string":
            inputs[f"in_{name}"] = np.array([["ä", "b"], ["", "long text"]], dtype=object)
        elif name == "bool":
            inputs[f"in_{name}"] = np.array([[True, False], [False, True]])
        else:
            dtype = np.dtype(name)
            info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
            inputs[f"in_{name}"] = np.array([[info.min, info.max], [0, 1]], dtype=dtype)
    got = infer(servers["alltypes"], "alltypes", inputs, binary=binary, binary_outputs=binary)
    for name in ALL_TYPES:
        value, out = inputs[f"in_{name}"], got[f"out_{name}"]
        if name == "string":
            decoded = [x.decode() if isinstance(x, bytes) else x for x in out.ravel()]
            assert decoded == list(value.ravel())
        else:
            assert out.dtype == value.dtype, name
            np.testing.assert_array_equal(out, value)


@pytest.mark.parametrize("binary", [False, True])
def test_int64_and_string_inputs_two_outputs(servers, models, binary):
    ids = np.array([[1, 2, 3], [2**40, -5, 0]], dtype=np.int64)
    text = np.array([["hello"], ["wörld"]], dtype=object)
    got = infer(servers["mixed"], "mixed", {"ids": ids, "text": text}, binary=binary,
                binary_outputs=binary)
    expected = reference(models["mixed"], {"ids": ids, "text": text})
    np.testing.assert_array_equal(got["total"], expected["total"])
    echoed = [x.decode() if isinstance(x, bytes) else x for x in got["echo"].ravel()]
    assert echoed == list(expected["echo"].ravel())
    only = infer(servers["mixed"], "mixed", {"ids": ids, "text": text}, outputs=["total"])
    assert list(only) == ["total"]


@pytest.mark.parametrize("binary", [False, True])
def test_sklearn_zipmap_sequence_of_maps(servers, models, binary):
    features = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]],
                        dtype=np.float32)
    got = infer(servers["sklearn"], "sklearn", {"X": features}, binary=binary,
                binary_outputs=binary)
    expected = reference(models["sklearn"], {"X": features})
    np.testing.assert_array_equal(got["output_label"], expected["output_label"])
    assert got["output_probability"].shape == (3,)
    for text, want in zip(got["output_probability"], expected["output_probability"],
                          strict=True):
        row = json.loads(text)
        assert {int(k) for k in row} == set(want)
        for key, value in want.items():
            assert row[str(key)] == pytest.approx(value, rel=1e-6)


def test_predict_inputs_and_instances(servers, models):
    url = servers["tiny"].url + "/predict"
    x = [[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]
    expected = reference(models["tiny"], {"x": np.array(x, dtype=np.float32)})["probabilities"]
    outputs = httpx.post(url, json={"inputs": {"x": x}}).json()["outputs"]
    np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-6)
    bare = httpx.post(url, json={"x": x})  # {name: values}, as `mlship predict -i` reads it
    assert bare.status_code == 200, bare.text
    np.testing.assert_allclose(bare.json()["outputs"]["probabilities"], expected, rtol=1e-6)
    predictions = httpx.post(url, json={"instances": x}).json()["predictions"]
    np.testing.assert_allclose(predictions, expected, rtol=1e-6)
    named = httpx.post(url, json={"instances": [{"x": row} for row in x]}).json()["predictions"]
    np.testing.assert_allclose(named, expected, rtol=1e-6)
    sk = httpx.post(servers["sklearn"].url + "/predict",
                    json={"instances": [[5.1, 3.5, 1.4, 0.2]]}).json()["predictions"]
    assert sk[0]["output_label"] == 0
    assert set(sk[0]["output_probability"]) == {"0", "1", "2"}
    mixed = httpx.post(servers["mixed"].url + "/predict",
                       json={"instances": [{"ids": [1, 2, 3], "text": ["hi"]}]}).json()
    assert mixed["predictions"] == [{"total": [6], "echo": ["hi"]}]


def test_the_bare_address_answers_with_the_server_metadata(servers):
    response = httpx.get(servers["tiny"].url + "/")
    assert response.status_code == 200
    assert response.json() == httpx.get(servers["tiny"].url + "/v2").json()
    assert httpx.post(servers["tiny"].url + "/").status_code == 404


def test_concurrent_requests_get_their_own_rows(servers, models):
    # Requests that arrive together are merged into one run; each must get back its own rows,
    # whatever its batch size, and mixed output selections must not be merged wrongly.
    rng = np.random.default_rng(11)
    cases = [rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32)
             for _ in range(40)]
    expected = [reference(models["tiny"], {"x": x})["probabilities"] for x in cases]

    def one(x):
        body, headers = codec.encode_request({"x": x}, binary=bool(len(x) % 2))
        response = httpx.post(servers["tiny"].url + "/v2/models/tiny/infer", content=body,
                              headers=headers, timeout=20)
        assert response.status_code == 200, response.text
        return codec.decode_response(response.content, response.headers)["probabilities"]

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, cases))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    meta = httpx.get(servers["tiny"].url + "/v2/models/tiny").json()
    assert meta["parameters"]["execution"] == "loop"
    # a batch-1 run of the tiny model is cheaper than merging: each request ran on its own
    assert "runs start at once" in servers["tiny"].log()


def test_example_iris_model(start_server):
    from pathlib import Path
    examples = Path(__file__).resolve().parents[2] / "examples"
    server = start_server(examples / "iris.onnx")
    server.wait_ready()
    body = (examples / "iris-request.json").read_bytes()
    response = httpx.post(server.url + "/v2/models/iris/infer", content=body)
    assert response.status_code == 200
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["label"]["data"] == [0, 2]
    assert outputs["probabilities"]["shape"] == [2, 3]
    assert server.stop() == 0


def test_request_larger_than_warm_up_batch(servers, models):
    # 500 rows is far beyond max_batch_size (8): it runs in a thread, not on the event loop,
    # and still returns exactly onnxruntime's answer.
    x = np.random.default_rng(12).standard_normal((500, 4)).astype(np.float32)
    got = infer(servers["tiny"], "tiny", {"x": x}, binary=True, binary_outputs=True)
    np.testing.assert_allclose(got["probabilities"],
                               reference(models["tiny"], {"x": x})["probabilities"], rtol=1e-6)
