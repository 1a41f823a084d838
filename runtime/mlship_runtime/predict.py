"""``POST /predict``: the convenience format for people with curl and for older clients.

Two shapes are accepted: ``{"inputs": {"name": nested list}}`` (whole tensors, answered with
``{"outputs": {"name": nested list}}``) and ``{"instances": [...]}`` (one row per instance: a dict
of inputs, or a bare value for single-input models; answered with ``{"predictions": [...]}``, one
per instance, a bare value when the model has one output). Datatypes come from the model's
signature, so the client never names them; non-tensor outputs come back as JSON, not text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from mlship_runtime.errors import BadRequest
from mlship_runtime.session import ModelSession
from mlship_runtime.signature import V2_TO_NUMPY


def _array(value: Any, datatype: str, name: str) -> np.ndarray:
    try:
        if datatype == "BYTES":
            return np.array(value, dtype=object)
        return np.asarray(value, dtype=V2_TO_NUMPY[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"input '{name}': values do not fit datatype {datatype}: {exc}") from None


def decode(body: bytes, session: ModelSession) -> tuple[dict[str, np.ndarray], bool]:
    """Input arrays, and whether the request used ``instances`` (so the answer does too)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    datatypes = {m["name"]: m["datatype"] for m in session.inputs}
    if isinstance(doc, dict) and isinstance(doc.get("inputs"), dict):
        return {name: _array(value, datatypes.get(name, "FP32"), name)
                for name, value in doc["inputs"].items()}, False
    if not (isinstance(doc, dict) and isinstance(doc.get("instances"), list) and doc["instances"]):
        raise BadRequest('expected {"inputs": {name: values}} or {"instances": [...]} '
                         "with at least one instance")
    instances = doc["instances"]
    if all(isinstance(item, dict) for item in instances):
        names = set().union(*instances)
        for index, item in enumerate(instances):
            if set(item) != names:
                raise BadRequest(f"instance {index} has inputs {sorted(item)}, "
                                 f"others have {sorted(names)}")
        return {name: _array([item[name] for item in instances], datatypes.get(name, "FP32"),
                             name) for name in names}, True
    if len(session.inputs) != 1:
        raise BadRequest(f"the model has inputs {sorted(datatypes)}: each instance must be an "
                         "object naming them")
    name = session.inputs[0]["name"]
    return {name: _array(instances, datatypes[name], name)}, True


def _plain(value: Any, is_json: bool) -> Any:
    items = value.tolist() if isinstance(value, np.ndarray) else value
    return _texts(items, is_json) if value.dtype == object else items


def _texts(items: Any, is_json: bool) -> Any:
    if isinstance(items, list):
        return [_texts(item, is_json) for item in items]
    if isinstance(items, bytes):
        items = items.decode("utf-8", "replace")
    return orjson.loads(items) if is_json else items


def encode(session: ModelSession, outputs: Sequence[np.ndarray], instances: bool) -> bytes:
    names = session.output_names
    non_tensor = session.non_tensor_outputs
    if not instances:
        return orjson.dumps({"outputs": {name: _plain(out, name in non_tensor)
                                         for name, out in zip(names, outputs, strict=True)}})
    rows = len(outputs[0]) if outputs else 0
    predictions: list[Any] = []
    for row in range(rows):
        values = {name: _plain(out[row:row + 1], name in non_tensor)[0]
                  for name, out in zip(names, outputs, strict=True)}
        predictions.append(values[names[0]] if len(names) == 1 else values)
    return orjson.dumps({"predictions": predictions})
