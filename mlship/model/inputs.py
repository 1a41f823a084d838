"""Input tensors for a model, from a file or a JSON document or generated from its signature,
as arrays of the dtypes the model declares.

``metadata`` is a model's V2 metadata (``{"inputs": [{"name", "datatype", "shape"}]}``), from a
running server or from an inspected file, so local and remote callers share one path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mlship.errors import BadInputError
from mlship.model.arrays import read_npy, read_npz


def load_inputs(path: Path | None, metadata: dict[str, Any],
                batch_size: int = 1) -> dict[str, np.ndarray]:
    """Inputs from a .json/.npy/.npz file, or generated from the model's signature."""
    from mlship_runtime.signature import sample_inputs

    specs = {entry["name"]: entry for entry in metadata["inputs"]}
    if path is None:
        return sample_inputs(metadata["inputs"], batch_size)
    if not path.is_file():
        raise BadInputError(f"{path}: no such input file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            if len(specs) != 1:
                raise BadInputError(f"{path}: a .npy file holds one array, but the model has "
                                    f"{len(specs)} inputs ({', '.join(specs)}); use .npz or .json")
            return {next(iter(specs)): read_npy(path)}
        if suffix == ".npz":
            raw: dict[str, Any] = dict(read_npz(path))
        elif suffix == ".json":
            raw = _json_inputs(json.loads(path.read_text()), str(path))
        else:
            raise BadInputError(f"{path}: unsupported input file type '{suffix}'",
                                hint="use .json, .npy or .npz")
    except (ValueError, OSError) as err:
        raise BadInputError(f"{path}: cannot read inputs: {err}") from None

    return _coerce(raw, specs, str(path))


def inputs_from_json(document: Any, metadata: dict[str, Any],
                     source: str = "request") -> dict[str, np.ndarray]:
    """Inputs from an already parsed JSON document (see ``load_inputs`` for the forms)."""
    specs = {entry["name"]: entry for entry in metadata["inputs"]}
    return _coerce(_json_inputs(document, source), specs, source)


def _coerce(raw: dict[str, Any], specs: dict[str, Any], source: str) -> dict[str, np.ndarray]:
    """Arrays of the dtypes the model declares, refusing names it does not have."""
    from mlship_runtime.signature import V2_TO_NUMPY

    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise BadInputError(f"{source}: unknown input '{unknown[0]}'; the model's inputs are: "
                            f"{', '.join(specs)}")
    arrays = {}
    for name, value in raw.items():
        datatype = specs[name]["datatype"]
        dtype = object if datatype == "BYTES" else V2_TO_NUMPY[datatype]
        try:
            arrays[name] = np.asarray(value, dtype=dtype)
        except (ValueError, TypeError) as err:
            raise BadInputError(f"{source}: input '{name}' is not a {datatype} array: {err}",
                                ) from None
    return arrays


def _json_inputs(document: Any, source: str) -> dict[str, Any]:
    """Accepts a V2 request, ``{"inputs": {name: value}}`` or a bare ``{name: value}``."""
    if isinstance(document, dict) and isinstance(document.get("inputs"), list):
        result = {}
        for entry in document["inputs"]:
            data = np.asarray(entry["data"])
            result[entry["name"]] = data.reshape(entry["shape"])
        return result
    if isinstance(document, dict) and isinstance(document.get("inputs"), dict):
        return dict(document["inputs"])
    if isinstance(document, dict):
        return document
    raise BadInputError(f"{source}: expected a JSON object of inputs, "
                        f"got {type(document).__name__}")
