"""Model signatures in V2 terms: dtype tables, tensor metadata and generated sample inputs.

onnxruntime describes types as strings (``tensor(float)``, ``seq(map(int64,tensor(float)))``);
the V2 protocol uses ``FP32``/``BYTES``; numpy needs dtypes. The tables live here once so the
server, the warm-up and the client (``mlship predict``) agree. Dimensions that are symbolic or
unknown are ``-1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# ONNX tensor element type (as onnxruntime spells it) -> V2 datatype.
ORT_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16",
    "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# V2 datatype -> numpy dtype of the array handed to onnxruntime (object for strings).
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_NUMPY_KIND_TO_V2: dict[str, str] = {str(dt): v2 for v2, dt in V2_TO_NUMPY.items() if v2 != "BYTES"}


def v2_datatype_of(array: np.ndarray) -> str:
    """V2 datatype for a numpy array (str/bytes/object arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _NUMPY_KIND_TO_V2[str(array.dtype)]
    except KeyError:
        raise ValueError(f"no V2 datatype for numpy dtype {array.dtype}") from None


def v2_datatype_of_ort(ort_type: str) -> str:
    """V2 datatype for an onnxruntime type string; non-tensors (sequences, maps) are BYTES."""
    return ORT_TO_V2.get(ort_type, "BYTES")


def v2_shape(shape: Iterable[Any]) -> list[int]:
    """onnxruntime shape (ints, symbolic names, None) -> V2 shape with -1 for dynamic dims."""
    return [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape]


def tensor_metadata(name: str, ort_type: str, shape: Sequence[Any] | None) -> dict[str, Any]:
    """One V2 ``inputs``/``outputs`` entry. Non-tensor outputs (sequence of maps) get [-1]."""
    is_tensor = ort_type.startswith("tensor(")
    dims = v2_shape(shape or []) if is_tensor else [-1]
    return {"name": name, "datatype": v2_datatype_of_ort(ort_type), "shape": dims}


def _sample_value(datatype: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        return np.full(shape, "a", dtype=object)
    if datatype == "BOOL":
        return np.zeros(shape, dtype=np.bool_)
    return np.zeros(shape, dtype=V2_TO_NUMPY[datatype])


def sample_inputs(metadata: Iterable[Mapping[str, Any]], batch_size: int = 1,
                  *, as_bytes: bool = False) -> dict[str, np.ndarray]:
    """Valid inputs from V2 tensor metadata: zeros, ``"a"`` (``b"a"`` with as_bytes), False.

    The first dynamic dimension takes ``batch_size``; later dynamic dimensions take 1, which
    every shape-polymorphic operator accepts.
    """
    samples: dict[str, np.ndarray] = {}
    for entry in metadata:
        shape = [int(dim) for dim in entry["shape"]]
        concrete = [(batch_size if i == 0 else 1) if dim < 0 else dim
                    for i, dim in enumerate(shape)]
        value = _sample_value(str(entry["datatype"]), concrete)
        if as_bytes and value.dtype == object:
            value = np.full(concrete, b"a", dtype=object)
        samples[str(entry["name"])] = value
    return samples
