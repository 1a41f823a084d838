"""A per-model plan for the common V2 request: JSON in, JSON out, the checks made once per model.

Most requests to a model look alike: a JSON body naming each input with the model's datatype
and a shape that fits, no ``parameters`` and no ``outputs`` selection. ``Plan.decode`` reads
those with the signature looked up once per input instead of re-derived per request, and
``Plan.encode`` writes the answer from byte templates made when the model attaches (the model
name, version and each output's name and datatype are serialized once), joining only the shape
and data each request brings. Both give exactly what ``codec.decode_request`` and
``codec.encode_response`` give: runtime/tests/test_runtime_fastpath.py checks it byte for byte
for every datatype. Whatever the plan does not cover returns None and takes the general path,
which then gives every refusal its message; the data checks both paths share
(``codec._json_tensor``) raise the same error in the same order either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from mlship_runtime.codec import InferRequest, _json_tensor, check_values

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_REQUEST_KEYS = ({"inputs"}, {"inputs", "id"})
_ENTRY_KEYS = {"name", "datatype", "shape", "data"}


class Plan:
    """What one model's requests are checked against and its answers are made of."""

    def __init__(self, name: str, version: str | None, inputs: Sequence[Mapping[str, Any]],
                 outputs: Sequence[Mapping[str, Any]], inline_bytes: int = 256 * 1024) -> None:
        # Bodies and outputs larger than this are the codec thread's (app.OFFLOAD_BYTES).
        self.inline_bytes = inline_bytes
        # name -> (datatype, dims as the signature gives them: -1 for any)
        self.inputs = {m["name"]: (m["datatype"], tuple(m["shape"])) for m in inputs}
        self.output_names = [m["name"] for m in outputs]
        self.head = b'{"model_name":' + orjson.dumps(name)
        if version is not None:
            self.head += b',"model_version":' + orjson.dumps(version)
        self.entries = [(b'{"name":' + orjson.dumps(m["name"]) + b',"datatype":' +
                         orjson.dumps(m["datatype"]) + b',"shape":', m["datatype"] == "BYTES")
                        for m in outputs]

    def read(self, body: bytes, header_length: int | None,
             max_values: int | None) -> InferRequest | None:
        """``decode`` for a small JSON body; None for anything else."""
        if header_length is not None or len(body) > self.inline_bytes:
            return None
        return self.decode(body, max_values)

    def answer(self, request: InferRequest, outputs: Sequence[np.ndarray]) -> bytes | None:
        """``encode`` when the request wants every output as JSON and they are small."""
        if request.outputs is not None or request.binary_outputs or \
                output_bytes(outputs) > self.inline_bytes:
            return None
        return self.encode(request.id, outputs)

    def decode(self, body: bytes, max_values: int | None) -> InferRequest | None:
        """The request, or None when the general path must read it."""
        check_values(body, max_values)  # the general path's first step too
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(doc) is not dict or doc.keys() not in _REQUEST_KEYS or \
                type(doc["inputs"]) is not list:
            return None
        has_booleans = b"true" in body or b"false" in body
        arrays: dict[str, np.ndarray] = {}
        datatypes: dict[str, str] = {}
        for entry in doc["inputs"]:
            decoded = self._input(entry, arrays, max_values, has_booleans)
            if decoded is None:
                return None
            arrays[entry["name"]] = decoded
            datatypes[entry["name"]] = entry["datatype"]
        request_id = doc.get("id")
        return InferRequest(arrays, datatypes, None if request_id is None else str(request_id))

    def _input(self, entry: Any, seen: Mapping[str, np.ndarray], max_values: int | None,
               has_booleans: bool) -> np.ndarray | None:
        if type(entry) is not dict or entry.keys() != _ENTRY_KEYS:
            return None
        name, datatype, shape = entry["name"], entry["datatype"], entry["shape"]
        spec = self.inputs.get(name) if type(name) is str else None
        if spec is None or spec[0] != datatype or name in seen or type(shape) is not list or \
                len(shape) != len(spec[1]):
            return None
        count = 1
        for want, dim in zip(spec[1], shape, strict=True):
            if type(dim) is not int or dim < 0 or want not in (-1, dim):
                return None
            count *= dim
        if datatype == "BYTES" and max_values is not None and count > max_values:
            return None
        return _json_tensor(entry["data"], datatype, shape, count, f"input '{name}'",
                            has_booleans)

    def encode(self, request_id: str | None, outputs: Sequence[np.ndarray]) -> bytes:
        """The JSON answer carrying every output of the model, in its order."""
        head = self.head if request_id is None else \
            self.head + b',"id":' + orjson.dumps(request_id)
        if len(outputs) == 1:  # most models: one concatenation, no list
            return head + b',"outputs":[' + self._entry(0, outputs[0]) + b"]}"
        return head + b',"outputs":[' + b",".join(
            [self._entry(index, out) for index, out in enumerate(outputs)]) + b"]}"

    def _entry(self, index: int, array: np.ndarray) -> bytes:
        prefix, is_bytes = self.entries[index]
        if is_bytes:
            data: Any = [item.decode("utf-8", "replace") if isinstance(item, bytes) else item
                         for item in array.ravel().tolist()]
        else:
            data = array.ravel()  # C order and contiguous, as the codec writes it
        return prefix + orjson.dumps(array.shape) + b',"data":' + \
            orjson.dumps(data, option=_DUMPS_OPTIONS) + b"}"


def output_bytes(outputs: Sequence[np.ndarray]) -> int:
    """What encoding costs, roughly: JSON text is a few times the tensor bytes."""
    size = 0
    for out in outputs:
        size += out.nbytes if out.dtype != object else 64 * out.size
    return size * 4
