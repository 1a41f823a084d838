"""``POST /predict``: the convenience format for people with curl and for older clients.

Two shapes are accepted: ``{"inputs": {"name": nested list}}`` or the bare ``{"name": nested
list}`` of `mlship predict -i` (whole tensors, answered with ``{"outputs": {"name": nested
list}}``) and ``{"instances": [...]}`` (one row per instance: a dict of inputs, or a bare value
for single-input models; answered with ``{"predictions": [...]}``, one per instance, a bare value
when the model has one output). Datatypes come from the model's signature, so the client never
names them; non-tensor outputs come back as JSON, not text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from mlship_runtime.codec import _json_tensor, check_values
from mlship_runtime.errors import BadRequest
from mlship_runtime.session import ModelSession

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _array(value: Any, datatype: str, name: str, has_booleans: bool) -> np.ndarray:
    """Nested lists as a tensor of ``datatype``, as strictly as V2 JSON data (codec)."""
    try:
        inferred = np.asarray(value) if datatype != "BYTES" else np.array(value, dtype=object)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"input '{name}': values do not fit datatype {datatype}: {exc}") \
            from None
    shape = list(inferred.shape)
    return _json_tensor(value, datatype, shape, inferred.size, f"input '{name}'",
                        has_booleans)


def decode(body: bytes, session: ModelSession,
           max_values: int | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """Input arrays, and whether the request used ``instances`` (so the answer does too)."""
    check_values(body, max_values)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    datatypes = {m["name"]: m["datatype"] for m in session.inputs}
    has_booleans = b"true" in body or b"false" in body
    tensors = _whole_tensors(doc)
    if tensors is not None:
        return {name: _array(value, _datatype(datatypes, name), name, has_booleans)
                for name, value in tensors.items()}, False
    if not (isinstance(doc, dict) and isinstance(doc.get("instances"), list) and doc["instances"]):
        raise BadRequest('expected {name: values}, {"inputs": {name: values}} or '
                         '{"instances": [...]} with at least one instance')
    instances = doc["instances"]
    if isinstance(instances[0], dict):
        names = list(instances[0])
        for name in names:
            _datatype(datatypes, name)
        wanted = set(names)
        for index, item in enumerate(instances):
            if not isinstance(item, dict) or item.keys() != wanted:
                got = sorted(item) if isinstance(item, dict) else type(item).__name__
                raise BadRequest(f"instance {index} has inputs {got}, instance 0 has "
                                 f"{sorted(wanted)}")
        return {name: _array([item[name] for item in instances], datatypes[name], name,
                             has_booleans) for name in names}, True
    if len(session.inputs) != 1:
        raise BadRequest(f"the model has inputs {sorted(datatypes)}: each instance must be an "
                         "object naming them")
    name = session.inputs[0]["name"]
    return {name: _array(instances, datatypes[name], name, has_booleans)}, True


def _whole_tensors(doc: Any) -> dict[str, Any] | None:
    """``{"inputs": {name: values}}``, or the bare ``{name: values}`` that `mlship predict -i
    FILE.json` reads; None for ``instances`` (or anything else)."""
    if not isinstance(doc, dict):
        return None
    inputs = doc.get("inputs")
    if isinstance(inputs, dict):
        return inputs
    return doc if doc and not {"inputs", "instances"} & doc.keys() else None


def _datatype(datatypes: dict[str, str], name: str) -> str:
    found = datatypes.get(name)
    if found is None:
        raise BadRequest(f"unknown input '{name}'; the model's inputs are {sorted(datatypes)}")
    return found


def _plain(value: np.ndarray, is_json: bool) -> Any:
    """A tensor as JSON-ready values: numbers stay a numpy array (orjson writes it in C)."""
    if value.dtype != object:
        return np.ascontiguousarray(value) if value.ndim else value.tolist()
    return _texts(value.tolist(), is_json)


def _texts(items: Any, is_json: bool) -> Any:
    if isinstance(items, list):
        return [_texts(item, is_json) for item in items]
    if isinstance(items, bytes):
        items = items.decode("utf-8", "replace")
    return orjson.loads(items) if is_json else items


def encode(session: ModelSession, outputs: Sequence[np.ndarray], instances: bool) -> bytes:
    names = session.output_names
    non_tensor = session.non_tensor_outputs
    plain = [_plain(out, name in non_tensor) for name, out in zip(names, outputs, strict=True)]
    if not instances:
        return orjson.dumps({"outputs": dict(zip(names, plain, strict=True))}, option=_NUMPY)
    if len(names) == 1:  # one prediction per row: the rows of the one output, as they are
        return orjson.dumps({"predictions": plain[0]}, option=_NUMPY)
    rows = len(outputs[0]) if outputs else 0
    # Rows of a 1-D output are numpy scalars, which orjson does not take; rows of others are
    # arrays, which it writes in C.
    plain = [values.tolist() if isinstance(values, np.ndarray) and values.ndim == 1 else values
             for values in plain]
    predictions = [{name: values[row] for name, values in zip(names, plain, strict=True)}
                   for row in range(rows)]
    return orjson.dumps({"predictions": predictions}, option=_NUMPY)
