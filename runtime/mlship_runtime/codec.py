"""V2 (Open Inference Protocol) wire format: JSON tensors and the binary tensor data extension.

Used on both sides: the server decodes requests and encodes responses; clients (``mlship
predict``, tests) call ``encode_request`` and ``decode_response``. The binary extension puts a
JSON header first (its length in ``Inference-Header-Content-Length``) and the raw tensors after
it, in order; BYTES elements are each prefixed with a 4-byte little-endian length. Decoding here
checks only the wire format; checking tensors against the model's signature is ``session``'s job.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from mlship_runtime.errors import BadRequest
from mlship_runtime.signature import V2_TO_NUMPY, v2_datatype_of

HEADER_LENGTH = "Inference-Header-Content-Length"
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_U32 = struct.Struct("<I")


@dataclass
class InferRequest:
    """A decoded request: arrays by input name plus what the client asked to get back."""

    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    id: str | None = None
    outputs: list[str] | None = None
    binary_outputs: set[str] = field(default_factory=set)


def encode_bytes_tensor(array: np.ndarray) -> bytes:
    """BYTES elements, row-major, each as ``<u32 length><bytes>``."""
    parts: list[bytes] = []
    for item in array.ravel():
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_U32.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def decode_bytes_tensor(buffer: memoryview | bytes, count: int, what: str) -> np.ndarray:
    """Inverse of ``encode_bytes_tensor``; ``what`` names the tensor in error messages."""
    items: list[bytes] = []
    offset, end = 0, len(buffer)
    while offset < end:
        if offset + 4 > end:
            raise BadRequest(f"{what}: truncated BYTES length prefix at byte {offset}")
        (length,) = _U32.unpack_from(buffer, offset)
        offset += 4
        if offset + length > end:
            raise BadRequest(f"{what}: BYTES element of {length} bytes overruns the data")
        items.append(bytes(buffer[offset:offset + length]))
        offset += length
    if len(items) != count:
        raise BadRequest(f"{what}: expected {count} BYTES elements for its shape, got {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def _shape_of(entry: Mapping[str, Any], what: str) -> list[int]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
            isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape):
        raise BadRequest(f"{what}: 'shape' must be a list of non-negative integers, got {shape!r}")
    return shape


def _json_tensor(data: Any, datatype: str, shape: list[int], count: int, what: str) -> np.ndarray:
    dtype = V2_TO_NUMPY[datatype]
    try:
        if datatype == "BYTES":
            array = np.array(data, dtype=object).reshape(-1)
            if not all(isinstance(item, str) for item in array):
                raise BadRequest(f"{what}: BYTES data must be strings")
        else:
            array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"{what}: data does not fit datatype {datatype}: {exc}") from None
    if array.size != count:
        raise BadRequest(f"{what}: shape {shape} needs {count} elements, data has {array.size}")
    return array.reshape(shape)


def _binary_tensor(chunk: memoryview, datatype: str, shape: list[int], count: int,
                   what: str) -> np.ndarray:
    if datatype == "BYTES":
        return decode_bytes_tensor(chunk, count, what).reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise BadRequest(f"{what}: shape {shape} of {datatype} needs {count * dtype.itemsize} "
                         f"bytes, binary_data_size is {len(chunk)}")
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _decode_input(entry: Any, body: memoryview,
                  offset: int) -> tuple[str, str, np.ndarray, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise BadRequest("each input must be an object with a 'name'")
    what = f"input '{entry['name']}'"
    datatype = entry.get("datatype")
    if datatype not in V2_TO_NUMPY:
        raise BadRequest(f"{what}: unsupported datatype {datatype!r}")
    shape = _shape_of(entry, what)
    count = 1
    for dim in shape:
        count *= dim
    size = (entry.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise BadRequest(f"{what}: binary_data_size {size!r} does not fit the "
                             f"{len(body) - offset} bytes left in the body")
        array = _binary_tensor(body[offset:offset + size], datatype, shape, count, what)
        offset += size
    elif "data" in entry:
        array = _json_tensor(entry["data"], datatype, shape, count, what)
    else:
        raise BadRequest(f"{what}: neither 'data' nor parameters.binary_data_size given")
    return entry["name"], datatype, array, offset


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse a V2 infer request body (JSON, or JSON header + binary tensors)."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {header_length}, body has {len(body)} bytes")
    header = body if header_length is None else body[:header_length]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise BadRequest("request must be a JSON object with an 'inputs' list")
    binary = memoryview(body)
    offset = header_length or 0
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for entry in doc["inputs"]:
        name, datatype, array, offset = _decode_input(entry, binary, offset)
        inputs[name] = array
        datatypes[name] = datatype
    if header_length is not None and offset != len(body):
        raise BadRequest(f"binary data sizes add up to {offset - header_length} bytes, "
                         f"body has {len(body) - header_length} after the header")
    request = InferRequest(inputs=inputs, datatypes=datatypes)
    if doc.get("id") is not None:
        request.id = str(doc["id"])
    binary_default = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    wanted = doc.get("outputs")
    if wanted is not None:
        if not isinstance(wanted, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
            raise BadRequest("'outputs' must be a list of objects with a 'name'")
        request.outputs = [o["name"] for o in wanted]
        request.binary_outputs = {
            o["name"] for o in wanted
            if (o.get("parameters") or {}).get("binary_data", binary_default)}
    elif binary_default:
        request.binary_outputs = {"*"}
    return request


def encode_response(model_name: str, model_version: str | None, request_id: str | None,
                    outputs: Sequence[tuple[str, str, np.ndarray]],
                    binary: set[str]) -> tuple[bytes, int | None]:
    """Body and, when any output is binary, the JSON header's length."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    everything_binary = "*" in binary
    for name, datatype, array in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if everything_binary or name in binary:
            raw = encode_bytes_tensor(array) if datatype == "BYTES" else \
                np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [item.decode("utf-8", "replace") if isinstance(item, bytes) else item
                             for item in array.ravel().tolist()]
        else:
            entry["data"] = np.ascontiguousarray(array).ravel()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        doc["model_version"] = model_version
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=_DUMPS_OPTIONS)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def encode_request(inputs: Mapping[str, np.ndarray], *, binary: bool = False,
                   outputs: Sequence[str] | None = None, binary_outputs: bool = False,
                   request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """Client side: a V2 infer body and the headers to send with it."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = v2_datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = encode_bytes_tensor(array) if datatype == "BYTES" else \
                np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [item.decode() if isinstance(item, bytes) else str(item)
                             for item in array.ravel().tolist()]
        else:
            entry["data"] = np.ascontiguousarray(array).ravel()
        entries.append(entry)
    doc: dict[str, Any] = {"inputs": entries}
    if request_id is not None:
        doc["id"] = request_id
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary_outputs}}
                          for n in outputs]
    if binary_outputs:
        doc["parameters"] = {"binary_data_output": True}
    header = orjson.dumps(doc, option=_DUMPS_OPTIONS)
    headers = {"Content-Type": "application/json"}
    if not chunks:
        return header, headers
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + b"".join(chunks), headers


def decode_response(body: bytes, headers: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """Client side: outputs of a V2 infer response as numpy arrays (BYTES as object arrays)."""
    length = None
    for key, value in (headers or {}).items():
        if key.lower() == HEADER_LENGTH.lower():
            length = int(value)
    doc = orjson.loads(body if length is None else body[:length])
    offset = length or 0
    results: dict[str, np.ndarray] = {}
    for entry in doc["outputs"]:
        datatype, shape = entry["datatype"], entry["shape"]
        count = int(np.prod(shape)) if shape else 1
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            chunk = memoryview(body)[offset:offset + size]
            offset += size
            results[entry["name"]] = _binary_tensor(chunk, datatype, shape, count, entry["name"])
        else:
            results[entry["name"]] = _json_tensor(entry["data"], datatype, shape, count,
                                                  entry["name"])
    return results
