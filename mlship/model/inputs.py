"""Input tensors for a model, from a file or a JSON document or generated at its input profile,
as arrays of the dtypes the model declares.

``metadata`` is a model's V2 metadata (``{"inputs": [{"name", "datatype", "shape"}],
"parameters": {...}}``), from a running server or from an inspected file, so local and remote
callers share one path. A server reports the input profile it warmed up at in
``parameters.input_profile``: generated inputs take those shapes, so ``mlship predict``, the
smoke test and synthetic canary traffic send what the model was shown to run at.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlship.errors import BadInputError
from mlship.model.arrays import read_npy, read_npz

Note = Callable[[str], None]


def load_inputs(path: Path | None, metadata: dict[str, Any], batch_size: int = 1, *,
                note: Note = lambda _: None) -> dict[str, np.ndarray]:
    """Inputs from a .json/.npy/.npz file, or generated at the model's input profile.
    Numbers of another dtype are converted when the conversion keeps their kind (float64 to
    float32, int32 to int64; never float to int): ``note`` says which."""
    specs = {entry["name"]: entry for entry in metadata["inputs"]}
    if path is None:
        return generated_inputs(metadata, batch_size)
    if not path.is_file():
        raise BadInputError(f"{path}: no such input file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            if len(specs) != 1:
                raise BadInputError(f"{path}: a .npy file holds one array, but the model has "
                                    f"{len(specs)} inputs ({', '.join(specs)}); use .npz or .json")
            raw: dict[str, Any] = {next(iter(specs)): read_npy(path)}
        elif suffix == ".npz":
            raw = dict(read_npz(path))
        elif suffix == ".json":  # JSON numbers have no dtype: converted as the server does
            return _coerce(_json_inputs(json.loads(path.read_text()), str(path)), specs,
                           str(path), None)
        else:
            raise BadInputError(f"{path}: unsupported input file type '{suffix}'",
                                hint="use .json, .npy or .npz")
    except (ValueError, OSError) as err:
        raise BadInputError(f"{path}: cannot read inputs: {err}") from None
    return _coerce(raw, specs, str(path), note)


def generated_inputs(metadata: dict[str, Any], batch_size: int = 1) -> dict[str, np.ndarray]:
    """Inputs at the profile the server reports (``parameters.input_profile``), else at the
    runtime's first guess from the model's dims; ``batch_size`` rows where the batch is
    dynamic."""
    from mlship_runtime.profile import Profile, candidates, inputs_at

    reported = (metadata.get("parameters") or {}).get("input_profile")
    if isinstance(reported, dict) and isinstance(reported.get("shapes"), dict):
        profile = Profile({name: tuple(dims) for name, dims in reported["shapes"].items()},
                          str(reported.get("source", "the server's")))
    else:
        profile = candidates(metadata["inputs"], {})[0]
    return inputs_at(profile, metadata["inputs"], batch_size, as_bytes=True)


def inputs_from_json(document: Any, metadata: dict[str, Any],
                     source: str = "request") -> dict[str, np.ndarray]:
    """Inputs from an already parsed JSON document (see ``load_inputs`` for the forms)."""
    specs = {entry["name"]: entry for entry in metadata["inputs"]}
    return _coerce(_json_inputs(document, source), specs, source, None)


def _coerce(raw: dict[str, Any], specs: dict[str, Any], source: str,
            note: Note | None) -> dict[str, np.ndarray]:
    """Arrays of the dtypes the model declares, refusing names it does not have. Typed
    arrays (``note`` given: from .npy/.npz) convert only within their kind, and say so."""
    from mlship_runtime.signature import V2_TO_NUMPY

    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise BadInputError(f"{source}: unknown input '{unknown[0]}'; the model's inputs are: "
                            f"{', '.join(specs)}")
    arrays = {}
    for name, value in raw.items():
        datatype = specs[name]["datatype"]
        dtype = np.dtype(object) if datatype == "BYTES" else V2_TO_NUMPY[datatype]
        given = value.dtype if isinstance(value, np.ndarray) else None
        if note is not None and given is not None and given != dtype and datatype != "BYTES":
            if not np.can_cast(given, dtype, casting="same_kind"):
                raise BadInputError(f"{source}: input '{name}' is {given}, the model takes "
                                    f"{datatype} ({dtype}); converting would change the "
                                    "values' kind", hint=f"save the array as {dtype}")
            note(f"{source}: input '{name}' converted from {given} to {dtype} ({datatype})")
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
