"""Third-party V2 clients work unchanged: NVIDIA tritonclient.http and the KServe REST client."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


def reference(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def triton_infer(server, model, inputs, binary):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(model)
        meta = client.get_model_metadata(model)
        assert meta["name"] == model
        request = []
        for name, value in inputs.items():
            datatype = "BYTES" if value.dtype == object else triton.np_to_triton_dtype(value.dtype)
            item = triton.InferInput(name, list(value.shape), datatype)
            item.set_data_from_numpy(value, binary_data=binary)
            request.append(item)
        outputs = [triton.InferRequestedOutput(o["name"], binary_data=binary)
                   for o in meta["outputs"]]
        result = client.infer(model, request, outputs=outputs, request_id="t-1")
        assert result.get_response()["id"] == "t-1"
        return {o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]}
    finally:
        client.close()


def as_text(values):
    return [v.decode() if isinstance(v, bytes) else v for v in np.asarray(values).ravel()]


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient(servers, models, binary):
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    got = triton_infer(servers["tiny"], "tiny", {"x": x}, binary)
    np.testing.assert_allclose(got["probabilities"],
                               reference(models["tiny"], {"x": x})["probabilities"], rtol=1e-6)
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    text = np.array([["héllo"]], dtype=object)
    got = triton_infer(servers["mixed"], "mixed", {"ids": ids, "text": text}, binary)
    np.testing.assert_array_equal(got["total"], [[6]])
    assert as_text(got["echo"]) == ["héllo"]
    features = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    got = triton_infer(servers["sklearn"], "sklearn", {"X": features}, binary)
    expected = reference(models["sklearn"], {"X": features})
    np.testing.assert_array_equal(got["output_label"], expected["output_label"])
    for text_row, want in zip(as_text(got["output_probability"]),
                              expected["output_probability"], strict=True):
        row = json.loads(text_row)
        assert [row[str(k)] for k in sorted(want)] == pytest.approx(
            [want[k] for k in sorted(want)], rel=1e-6)


def test_tritonclient_all_binary_datatypes(servers):
    inputs = {}
    for name in ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32",
                 "int64", "float16", "float32", "float64"):
        inputs[f"in_{name}"] = np.array([[1, 0], [0, 1]], dtype=name)
    inputs["in_string"] = np.array([["a", "bc"], ["", "d"]], dtype=object)
    got = triton_infer(servers["alltypes"], "alltypes", inputs, binary=True)
    for name, value in inputs.items():
        out = got[name.replace("in_", "out_")]
        if value.dtype == object:
            assert as_text(out) == as_text(value)
        else:
            assert out.dtype == value.dtype
            np.testing.assert_array_equal(out, value)


@pytest.mark.parametrize("binary", [False, True])
def test_kserve_rest_client(servers, models, binary):
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    item = InferInput("x", list(x.shape), "FP32")
    item.set_data_from_numpy(x, binary_data=binary)
    request = InferRequest(model_name="tiny", infer_inputs=[item], request_id="k-1")

    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10))
        try:
            assert await client.is_server_ready(servers["tiny"].url)
            assert await client.is_model_ready(servers["tiny"].url, "tiny")
            return await client.infer(servers["tiny"].url, request, model_name="tiny")
        finally:
            await client.close()

    response = asyncio.run(call())
    assert response.id == "k-1"
    got = response.outputs[0].as_numpy()
    np.testing.assert_allclose(got, reference(models["tiny"], {"x": x})["probabilities"],
                               rtol=1e-6)
