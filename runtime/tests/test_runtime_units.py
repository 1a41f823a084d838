"""Unit tests: settings, provider selection, thread budget, signatures, codec and metrics."""

from __future__ import annotations

import numpy as np
import pytest
from mlship_runtime import codec
from mlship_runtime.errors import BadRequest
from mlship_runtime.metrics import Metrics
from mlship_runtime.options import parse_settings
from mlship_runtime.providers import provider_chain, select_provider
from mlship_runtime.session import cpu_budget
from mlship_runtime.settings import RuntimeSettings
from mlship_runtime.signature import sample_inputs, tensor_metadata

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


@pytest.mark.parametrize(("requested", "available", "expected"), [
    ("auto", [TRT, CUDA, CPU], "tensorrt"),
    ("auto", [CUDA, CPU], "cuda"),
    ("auto", [CPU], "cpu"),  # CPU is what auto means on a CPU-only build
    ("cpu", [TRT, CUDA, CPU], "cpu"),
    ("cuda", [CUDA, CPU], "cuda"),
    # Asked for by name, a provider this build lacks is still asked for: the session then
    # shows it did not load, and mlship_runtime.providers refuses or allows the fallback.
    ("cuda", [CPU], "cuda"),
    ("tensorrt", [CUDA, CPU], "tensorrt"),
])
def test_select_provider(requested, available, expected):
    assert select_provider(requested, available) == expected


def test_provider_chain_always_ends_with_cpu():
    assert provider_chain("tensorrt") == [TRT, CUDA, CPU]
    assert provider_chain("cuda") == [CUDA, CPU]
    assert provider_chain("cpu") == [CPU]


@pytest.mark.parametrize(("affinity", "cpu_max", "expected"), [
    (8, None, 8), (8, "max 100000", 8), (8, "200000 100000", 2), (8, "150000 100000", 2),
    (1, "400000 100000", 1), (4, "50000 100000", 1), (0, None, 1),
])
def test_cpu_budget(affinity, cpu_max, expected):
    assert cpu_budget(affinity, cpu_max) == expected


def test_settings_env_then_argv():
    env = {"MLSHIP_RUNTIME_MODEL": "/m/iris.onnx", "MLSHIP_RUNTIME_PORT": "9000",
           "MLSHIP_RUNTIME_BATCHING": "false", "MLSHIP_RUNTIME_INTRA_OP_THREADS": "0",
           "MLSHIP_RUNTIME_LOG_FORMAT": "json", "MLSHIP_RUNTIME_MAX_QUEUE_DELAY_MS": "2"}
    settings = parse_settings(["--port", "9001", "--provider", "CUDA"], env)
    assert settings.model == "/m/iris.onnx"
    assert settings.model_name == "iris"
    assert settings.port == 9001
    assert settings.batching is False
    assert settings.intra_op_threads is None
    assert settings.provider == "cuda"
    assert settings.log_format == "json"
    assert settings.max_queue_delay_ms == 2.0


def test_settings_defaults_and_validation():
    settings = RuntimeSettings(model="m.onnx")
    assert (settings.host, settings.port, settings.workers, settings.drain_grace_s) == \
        ("127.0.0.1", 8080, 1, 25.0)
    assert settings.batching
    assert settings.max_batch_size == 8
    assert RuntimeSettings(model="m.onnx", log_format="text").log_format == "plain"
    with pytest.raises(ValueError, match="provider"):
        RuntimeSettings(model="m.onnx", provider="rocm")
    with pytest.raises(ValueError, match="MLSHIP_RUNTIME_PORT"):
        parse_settings([], {"MLSHIP_RUNTIME_MODEL": "m.onnx", "MLSHIP_RUNTIME_PORT": "x"})
    with pytest.raises(ValueError, match="model"):
        parse_settings([], {})


def test_tensor_metadata_and_sample_inputs():
    meta = [tensor_metadata("x", "tensor(float)", ["N", 4]),
            tensor_metadata("s", "tensor(string)", [None, 2, "k"]),
            tensor_metadata("b", "tensor(bool)", [3]),
            tensor_metadata("z", "seq(map(int64,tensor(float)))", [])]
    assert meta[0] == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    assert meta[1]["shape"] == [-1, 2, -1]
    assert meta[3] == {"name": "z", "datatype": "BYTES", "shape": [-1]}
    samples = sample_inputs(meta[:3], batch_size=5)
    assert samples["x"].shape == (5, 4)
    assert samples["x"].dtype == np.float32
    assert not samples["x"].any()
    assert samples["s"].shape == (5, 2, 1)
    assert samples["s"].flat[0] == "a"
    assert samples["b"].dtype == np.bool_
    assert samples["b"].shape == (3,)
    assert sample_inputs(meta[1:2], as_bytes=True)["s"].flat[0] == b"a"


@pytest.mark.parametrize("binary", [False, True])
def test_codec_request_roundtrip(binary):
    inputs = {"f": np.arange(6, dtype=np.float16).reshape(2, 3),
              "i": np.array([[-1, 2**40]], dtype=np.int64),
              "u": np.array([1, 255], dtype=np.uint8),
              "b": np.array([True, False]),
              "s": np.array([["héllo", ""]], dtype=object)}
    body, headers = codec.encode_request(inputs, binary=binary, request_id="r1")
    length = headers.get(codec.HEADER_LENGTH)
    request = codec.decode_request(body, int(length) if length else None)
    assert request.id == "r1"
    for name, value in inputs.items():
        got = request.inputs[name]
        assert got.shape == value.shape
        if name == "s":
            expected = [x.encode() if binary else x for x in value.ravel()]
            assert list(got.ravel()) == expected
        else:
            assert got.dtype == value.dtype
            np.testing.assert_array_equal(got, value)


def test_codec_response_roundtrip_binary_and_json():
    outputs = [("p", "FP32", np.array([[0.5, 0.25]], dtype=np.float32)),
               ("t", "BYTES", np.array(["a", "bc"], dtype=object))]
    for binary in (set(), {"p"}, {"*"}):
        body, length = codec.encode_response("m", "1", "id", outputs, binary)
        headers = {codec.HEADER_LENGTH: str(length)} if length else {}
        decoded = codec.decode_response(body, headers)
        np.testing.assert_array_equal(decoded["p"], outputs[0][2])
        assert [x.decode() if isinstance(x, bytes) else x for x in decoded["t"]] == ["a", "bc"]


@pytest.mark.parametrize(("body", "binary", "message"), [
    (b"{not json", None, "malformed JSON"),
    (b'{"inputs": 3}', None, "'inputs' list"),
    (b'{"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}', None,
     "unsupported datatype"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}', None,
     "needs 2 elements, data has 1"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}', None,
     "non-negative"),
    (b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": ["a"]}]}', None,
     "INT32 data must be JSON integers, got strings"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], '
     b'"parameters": {"binary_data_size": 4}}]}', b"abcd", "needs 8 bytes"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], '
     b'"parameters": {"binary_data_size": 8}}]}', b"abcd", "does not fit"),
    (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], '
     b'"parameters": {"binary_data_size": 4}}]}', b"\x09\x00\x00\x00", "overruns"),
])
def test_codec_rejects_malformed(body, binary, message):
    header = None if binary is None else len(body)
    with pytest.raises(BadRequest, match=message) as info:
        codec.decode_request(body + (binary or b""), header)
    assert info.value.status == 400
    if b'"name": "x"' in body:
        assert "input 'x'" in str(info.value)


def test_metrics_exposition():
    metrics = Metrics("iris")
    metrics.provider, metrics.version, metrics.load_seconds = "cpu", "2", 0.25
    metrics.request("infer", 200, 0.003)
    metrics.request("infer", 200, 0.0004)
    metrics.request("infer", 400, 0.001)
    metrics.batch_size.observe(3)
    metrics.queue_depth = 4
    text = metrics.render().decode()
    assert 'mlship_requests_total{model="iris",endpoint="infer",code="200"} 2' in text
    assert 'mlship_requests_total{model="iris",endpoint="infer",code="400"} 1' in text
    assert 'mlship_request_duration_seconds_bucket{model="iris",endpoint="infer",le="0.0005"} 1' \
        in text
    assert 'mlship_request_duration_seconds_count{model="iris",endpoint="infer"} 3' in text
    assert 'mlship_batch_size_bucket{model="iris",le="2"} 0' in text
    assert 'mlship_batch_size_bucket{model="iris",le="4"} 1' in text
    assert 'mlship_queue_depth{model="iris"} 4' in text
    assert 'mlship_model_load_seconds{model="iris"} 0.25' in text
    assert 'mlship_model_info{model="iris",provider="cpu",version="2"} 1' in text
    assert 'mlship_ready{model="iris"} 0' in text


def test_peers_answer_for_every_worker(tmp_path):
    """workers > 1: ready only when every worker is, metrics of every worker in one scrape."""
    from mlship_runtime.workers import Peers

    first, second = Peers(str(tmp_path), 0, 2), Peers(str(tmp_path), 1, 2)
    assert not first.all_ready(True)  # the second worker has not said it is ready
    second.publish(Metrics("iris", worker="1").render(), ready=True)
    assert first.all_ready(True)
    assert not first.all_ready(False)  # draining: not ready, and the others see it
    assert not second.all_ready(True)
    mine = Metrics("iris", worker="0")
    mine.request("infer", 200, 0.001)
    text = first.gather(mine.render()).decode()
    assert 'mlship_requests_total{model="iris",worker="0",endpoint="infer",code="200"} 1' in text
    assert 'mlship_ready{model="iris",worker="1"} 0' in text
    assert text.count("# TYPE mlship_ready gauge") == 1
