"""The fast path (mlship_runtime.fastpath) answers exactly what the general codec path answers.

Over HTTP a request without ``parameters`` takes the fast path; the same request with an empty
request-level ``parameters`` object (which changes nothing in V2) takes the general one, so the
two answers must be the same bytes: for every datatype, with and without an id and a version,
and for refusals too. In process, ``Plan.decode``/``Plan.encode`` are compared with
``codec.decode_request``/``codec.encode_response`` on values at each datatype's edges, including
what JSON requests cannot carry (NaN, infinities, non-UTF-8 BYTES).
"""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pytest
from mlship_runtime import codec
from mlship_runtime.fastpath import Plan
from modelzoo import ALL_TYPES

V2_OF = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
         "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32",
         "int64": "INT64", "float16": "FP16", "float32": "FP32", "float64": "FP64",
         "string": "BYTES"}


def edge_values(name: str) -> list[list]:
    """[2, 2] JSON values at the edges of a datatype."""
    if name == "bool":
        return [[True, False], [False, True]]
    if name == "string":
        return [["ä \"quoted\" \\", ""], ["long text " * 20, "\u2603\n\t"]]
    dtype = np.dtype(name)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return [[float(info.min), float(info.max)], [-0.0, float(info.smallest_subnormal)]]
    info_i = np.iinfo(dtype)
    return [[int(info_i.min), int(info_i.max)], [0, 1]]


def request_doc(**extra: object) -> dict:
    inputs = [{"name": f"in_{name}", "datatype": V2_OF[name], "shape": [2, 2],
               "data": edge_values(name)} for name in ALL_TYPES]
    return {"inputs": inputs, **extra}


def post(server, model: str, doc: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=orjson.dumps(doc),
                      headers={"Content-Type": "application/json"}, timeout=10)


@pytest.mark.parametrize("extra", [{}, {"id": "req-7 \"ä\""}, {"id": 42}])
def test_every_datatype_same_bytes_fast_and_general(servers, extra):
    fast = post(servers["alltypes"], "alltypes", request_doc(**extra))
    general = post(servers["alltypes"], "alltypes", request_doc(**extra, parameters={}))
    assert fast.status_code == general.status_code == 200, fast.text
    assert fast.content == general.content
    assert fast.headers["content-type"] == general.headers["content-type"]
    outputs = {o["name"]: o for o in orjson.loads(fast.content)["outputs"]}
    assert set(outputs) == {f"out_{name}" for name in ALL_TYPES}
    assert outputs["out_int64"]["data"] == [v for row in edge_values("int64") for v in row]


def test_version_and_non_tensor_outputs_same_bytes(servers):
    """A model version in the answer (tiny: --model-version 3); a ZipMap output (sklearn)."""
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                       "data": [1.0, 2.5, -3.0, 4.0]}], "id": "a"}
    fast = post(servers["tiny"], "tiny", doc)
    general = post(servers["tiny"], "tiny", {**doc, "parameters": {}})
    assert fast.status_code == 200, fast.text
    assert fast.content == general.content
    assert b'"model_version":"3"' in fast.content
    meta = httpx.get(servers["sklearn"].url + "/v2/models/sklearn").json()
    dims = [4 if dim == -1 else dim for dim in meta["inputs"][0]["shape"]]
    count = int(np.prod(dims))
    doc = {"inputs": [{"name": meta["inputs"][0]["name"], "datatype": "FP32", "shape": dims,
                       "data": [float(i % 5) for i in range(count)]}]}
    fast = post(servers["sklearn"], "sklearn", doc)
    general = post(servers["sklearn"], "sklearn", {**doc, "parameters": {}})
    assert fast.status_code == 200, fast.text
    assert fast.content == general.content


@pytest.mark.parametrize("entry", [
    {"name": "in_int32", "datatype": "INT32", "shape": [2, 2], "data": ["1", "2", "3", "4"]},
    {"name": "in_float32", "datatype": "FP32", "shape": [2, 2], "data": [True, 1.0, 2.0, 3.0]},
    {"name": "in_int8", "datatype": "INT8", "shape": [2, 2], "data": [1, 2, 3, 300]},
    {"name": "in_int16", "datatype": "INT16", "shape": [2, 2], "data": [1.5, 2, 3, 4]},
    {"name": "in_uint8", "datatype": "UINT8", "shape": [2, 2], "data": [1, 2, 3]},
    {"name": "in_uint8", "datatype": "INT8", "shape": [2, 2], "data": [1, 2, 3, 4]},
    {"name": "in_uint8", "datatype": "UINT8", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
    {"name": "nope", "datatype": "UINT8", "shape": [2, 2], "data": [1, 2, 3, 4]},
])
def test_refusals_same_bytes_fast_and_general(servers, entry):
    doc = request_doc()
    doc["inputs"] = [e for e in doc["inputs"] if e["name"] != entry["name"]] + [entry]
    fast = post(servers["alltypes"], "alltypes", doc)
    general = post(servers["alltypes"], "alltypes", {**doc, "parameters": {}})
    assert fast.status_code == general.status_code
    assert 400 <= fast.status_code < 500, fast.text
    assert fast.content == general.content


@pytest.fixture
def plan(servers) -> Plan:
    meta = httpx.get(servers["alltypes"].url + "/v2/models/alltypes").json()
    return Plan("alltypes", None, meta["inputs"], meta["outputs"])


def test_plan_decodes_as_the_codec_does(plan):
    body = orjson.dumps(request_doc(id=7))
    fast = plan.decode(body, 1000)
    general = codec.decode_request(body, None, None, 1000)
    assert fast is not None
    assert fast.id == general.id == "7"
    assert fast.datatypes == general.datatypes
    assert fast.outputs is None
    assert not fast.binary_outputs
    for name, array in general.inputs.items():
        got = fast.inputs[name]
        assert (got.dtype, got.shape) == (array.dtype, array.shape), name
        if array.dtype == object:
            assert got.tolist() == array.tolist()
        else:
            assert got.tobytes() == array.tobytes(), name


@pytest.mark.parametrize("doc", [
    request_doc(parameters={}),
    request_doc(outputs=[{"name": "out_bool"}]),
    {"inputs": [{**request_doc()["inputs"][0], "parameters": {"binary_data_size": 4}}]},
    {"inputs": "x"},
    [1, 2],
])
def test_plan_leaves_the_rest_to_the_general_path(plan, doc):
    assert plan.decode(orjson.dumps(doc), None) is None


def _edge_array(name: str) -> np.ndarray:
    if name == "string":  # what ORT gives back (str) and what a BYTES tensor may hold (bytes)
        return np.array([["ä", b"\xff\xfe raw"], [b"", "x"]], dtype=object)
    if name == "bool":
        return np.array([[True, False], [False, True]])
    dtype = np.dtype(name)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return np.array([[info.min, info.max, np.nan], [np.inf, -np.inf, -0.0]], dtype=dtype)
    info_i = np.iinfo(dtype)
    return np.array([[info_i.min, info_i.max, 0]], dtype=dtype)


@pytest.mark.parametrize("name", list(ALL_TYPES))
@pytest.mark.parametrize(("version", "request_id"), [(None, None), ("2", "r\"1\u2603")])
def test_plan_encodes_as_the_codec_does(name, version, request_id):
    datatype = V2_OF[name]
    meta = [{"name": f"out_{name}", "datatype": datatype, "shape": [-1, -1]},
            {"name": "second", "datatype": datatype, "shape": [-1]}]
    array = _edge_array(name)
    outputs = [array, array[0]]
    plan = Plan("m", version, [], meta)
    general, length = codec.encode_response(
        "m", version, request_id,
        [(m["name"], datatype, out) for m, out in zip(meta, outputs, strict=True)], set())
    assert length is None
    assert plan.encode(request_id, outputs) == general
    assert plan.encode(request_id, [array.T, array[0][:0]]) == codec.encode_response(
        "m", version, request_id, [(meta[0]["name"], datatype, array.T),
                                   (meta[1]["name"], datatype, array[0][:0])], set())[0]
