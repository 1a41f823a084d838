"""V2 (Open Inference Protocol) wire format: JSON tensors and the binary tensor data extension.

Used on both sides: the server decodes requests and encodes responses; clients (``mlship
predict``, tests) call ``encode_request`` and ``decode_response``. The binary extension puts a
JSON header first (its length in ``Inference-Header-Content-Length``) and the raw tensors after
it, in order; BYTES elements are each prefixed with a 4-byte little-endian length.

Decoding is strict and cheap checks come first: the JSON's values are counted before it is
parsed (``max_values``), and every input's name, datatype and shape are checked (against the
model's ``Signature`` when the server passes one) before its data is touched. Data must have the
declared datatype: no strings or booleans read as numbers, no fractions read as integers, no
value wrapped into a smaller integer type.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from mlship_runtime.errors import BadRequest, PayloadTooLarge
from mlship_runtime.signature import V2_TO_NUMPY, v2_datatype_of

HEADER_LENGTH = "Inference-Header-Content-Length"
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_U32 = struct.Struct("<I")
MAX_DIMS = 64  # onnxruntime's own limit on a tensor's rank


class Signature(Protocol):
    """What the server checks a request against before decoding its data (a ``ModelSession``)."""

    def check_input(self, name: str, datatype: str, shape: Sequence[int]) -> None: ...

    def wanted(self, names: Sequence[str] | None) -> list[str]: ...


def count_values(text: bytes) -> int:
    """An upper bound on the values a JSON text parses into: each value but the first follows a
    comma or opens a list or an object. Counted in C, before any object is made."""
    return text.count(b",") + text.count(b"[") + text.count(b"{") + 1


def check_values(text: bytes, max_values: int | None) -> None:
    if max_values is not None and len(text) > max_values and count_values(text) > max_values:
        raise PayloadTooLarge(
            f"the JSON holds up to {count_values(text)} values, more than max_request_values "
            f"({max_values}); send large tensors with the binary tensor extension")


def parameters(entry: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    value = entry.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what}: 'parameters' must be an object, got {type(value).__name__}")
    return value


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
    if end < 4 * count:
        raise BadRequest(f"{what}: {count} BYTES elements need at least {4 * count} bytes, "
                         f"binary_data_size is {end}")
    while offset < end:
        if len(items) == count:
            raise BadRequest(f"{what}: more BYTES elements than the {count} of its shape")
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
        raise BadRequest(f"{what}: 'shape' must be a list of non-negative integers, got "
                         f"{_short(shape)}")
    if len(shape) > MAX_DIMS:
        raise BadRequest(f"{what}: 'shape' has {len(shape)} dimensions, more than {MAX_DIMS}")
    return shape


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# What JSON numbers numpy infers a kind for, by datatype family: integers for integer types;
# integers and fractions for floating-point types; true/false only for BOOL.
_FLOAT_KINDS, _INT_KINDS = "iuf", "iu"


def _json_tensor(data: Any, datatype: str, shape: list[int], count: int, what: str,
                 has_booleans: bool = True) -> np.ndarray:
    """``data`` (nested lists of JSON values) as an array of ``datatype``, strictly: a value of
    another JSON type is refused, not converted. ``has_booleans`` False (no ``true``/``false`` in
    the request) skips looking for booleans among numbers, which numpy would read as 0/1."""
    dtype = V2_TO_NUMPY[datatype]
    try:
        if datatype == "BYTES":
            array = np.array(data, dtype=object).reshape(-1)
            if not all(isinstance(item, str) for item in array):
                raise BadRequest(f"{what}: BYTES data must be strings")
        else:
            array = _typed(np.asarray(data), data, datatype, dtype, what, has_booleans)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"{what}: data does not fit datatype {datatype}: {exc}") from None
    if array.size != count:
        raise BadRequest(f"{what}: shape {shape} needs {count} elements, data has {array.size}")
    return array.reshape(shape)


def _typed(inferred: np.ndarray, data: Any, datatype: str, dtype: np.dtype[Any], what: str,
           has_booleans: bool) -> np.ndarray:
    kind = inferred.dtype.kind
    if inferred.size == 0:
        return inferred.astype(dtype)
    if datatype == "BOOL":
        if kind != "b":
            raise BadRequest(f"{what}: BOOL data must be true or false")
        return inferred
    kinds = _FLOAT_KINDS if dtype.kind == "f" else _INT_KINDS
    if dtype.kind in "iu" and kind in "fO" and all(
            type(item) is int for item in np.asarray(data, dtype=object).reshape(-1)):
        # Integers past int64 (UINT64's upper half) that numpy inferred as another kind: numpy
        # raises OverflowError (a 400) for any that does not fit.
        return np.asarray(data, dtype=dtype)
    if kind not in kinds:
        wanted = "numbers" if dtype.kind == "f" else "integers"
        raise BadRequest(f"{what}: {datatype} data must be JSON {wanted}, got "
                         f"{_json_kind(kind)}")
    if has_booleans and any(type(item) is bool
                            for item in np.asarray(data, dtype=object).reshape(-1)):
        raise BadRequest(f"{what}: {datatype} data must be JSON numbers, got true/false")
    if dtype.kind in "iu" and (inferred.dtype != dtype):
        info = np.iinfo(dtype)
        low, high = inferred.min(), inferred.max()
        if low < info.min or high > info.max:
            raise BadRequest(f"{what}: value {low if low < info.min else high} does not fit "
                             f"{datatype} ({info.min}..{info.max})")
    return inferred.astype(dtype, copy=False)


def _json_kind(kind: str) -> str:
    return {"b": "true/false", "U": "strings", "f": "fractions", "O": "mixed or nested "
            "values"}.get(kind, "other values")


def _binary_tensor(chunk: memoryview, datatype: str, shape: list[int], count: int,
                   what: str) -> np.ndarray:
    if datatype == "BYTES":
        return decode_bytes_tensor(chunk, count, what).reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise BadRequest(f"{what}: shape {shape} of {datatype} needs {count * dtype.itemsize} "
                         f"bytes, binary_data_size is {len(chunk)}")
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _decode_input(entry: Any, body: memoryview, offset: int, binary: bool,
                  signature: Signature | None, max_values: int | None,
                  has_booleans: bool) -> tuple[str, str, np.ndarray, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise BadRequest("each input must be an object with a 'name'")
    name = entry["name"]
    what = f"input '{name}'"
    datatype = entry.get("datatype")
    if datatype not in V2_TO_NUMPY:
        raise BadRequest(f"{what}: unsupported datatype {_short(datatype)}")
    shape = _shape_of(entry, what)
    if signature is not None:  # before a byte of its data is decoded
        signature.check_input(name, datatype, shape)
    count = 1
    for dim in shape:
        count *= dim
    if datatype == "BYTES" and max_values is not None and count > max_values:
        raise PayloadTooLarge(f"{what}: {count} BYTES elements, more than max_request_values "
                              f"({max_values})")
    size = parameters(entry, what).get("binary_data_size")
    if size is not None:
        if not binary:
            raise BadRequest(f"{what}: binary_data_size needs the {HEADER_LENGTH} header (the "
                             "length of the JSON part of the body)")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or \
                offset + size > len(body):
            raise BadRequest(f"{what}: binary_data_size {_short(size)} does not fit the "
                             f"{len(body) - offset} bytes left in the body")
        array = _binary_tensor(body[offset:offset + size], datatype, shape, count, what)
        offset += size
    elif "data" in entry:
        array = _json_tensor(entry["data"], datatype, shape, count, what, has_booleans)
    else:
        raise BadRequest(f"{what}: neither 'data' nor parameters.binary_data_size given")
    return name, datatype, array, offset


def _wanted_outputs(doc: dict[str, Any], request: InferRequest,
                    signature: Signature | None) -> None:
    binary_default = parameters(doc, "request").get("binary_data_output", False)
    wanted = doc.get("outputs")
    if wanted is not None:
        if not isinstance(wanted, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
            raise BadRequest("'outputs' must be a list of objects with a 'name'")
        if not wanted:
            raise BadRequest("'outputs' is empty: leave it out for every output, or name the "
                             "outputs wanted")
        request.outputs = [o["name"] for o in wanted]
        if len(set(request.outputs)) != len(request.outputs):
            raise BadRequest(f"'outputs' names an output twice: {request.outputs}")
        if signature is not None:
            signature.wanted(request.outputs)
        request.binary_outputs = {
            o["name"] for o in wanted
            if parameters(o, f"output '{o['name']}'").get("binary_data", binary_default)}
    elif binary_default:
        request.binary_outputs = {"*"}


def decode_request(body: bytes, header_length: int | None, signature: Signature | None = None,
                   max_values: int | None = None) -> InferRequest:
    """Parse a V2 infer request body (JSON, or JSON header + binary tensors). With a
    ``signature`` each input is checked against it before its data is decoded, and the
    requested outputs too."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {header_length}, body has {len(body)} bytes")
    header = body if header_length is None else body[:header_length]
    check_values(header, max_values)
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise BadRequest("request must be a JSON object with an 'inputs' list")
    request = InferRequest(inputs={}, datatypes={})
    _wanted_outputs(doc, request, signature)
    binary = memoryview(body)
    offset = header_length or 0
    has_booleans = b"true" in header or b"false" in header
    for entry in doc["inputs"]:
        name, datatype, array, offset = _decode_input(
            entry, binary, offset, header_length is not None, signature, max_values,
            has_booleans)
        if name in request.inputs:
            raise BadRequest(f"input '{name}' is given twice")
        request.inputs[name] = array
        request.datatypes[name] = datatype
    if header_length is not None and offset != len(body):
        raise BadRequest(f"binary data sizes add up to {offset - header_length} bytes, "
                         f"body has {len(body) - header_length} after the header")
    if doc.get("id") is not None:
        request.id = str(doc["id"])
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
