"""Sample inputs -> a drift baseline: per input and feature, count, mean, std and expected range.

The document (schema ``mlship.baseline/v1``, docs/drift.md) is what the runtime loads with
``--baseline`` and what ``mlship render`` ships in a ConfigMap. Samples come from the files
``mlship predict`` takes (.npz, .npy, .json: a V2 request, ``{"inputs": {...}}``, ``{"instances":
[...]}`` or ``{name: values}``) and from JSON lines (.jsonl/.ndjson: one such document per line);
rows of every file are concatenated per input. With the model's signature every file is checked
against it (input names, datatypes, ranks, fixed dimensions) and a one-row sample without its
batch dimension is accepted.

The format's parser is the runtime's (``mlship_runtime.drift``), so both sides read it alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlship.errors import BadInputError
from mlship.model.arrays import read_npy, read_npz

if TYPE_CHECKING:
    from mlship.model.facts import ModelSignature

SCHEMA = "mlship.baseline/v1"
DEFAULT_MAX_FEATURES = 64  # 8 series each: 512 per input, a bounded cardinality
DEFAULT_TAIL = 0.005  # expected range: the 0.5 % and 99.5 % quantiles of the samples
_NUMERIC_KINDS = "biuf"
JSON_LINES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class BaselineFile:
    """A checked baseline as render ships it: the document, its canonical text and hash."""

    path: str
    document: dict[str, Any]

    @property
    def text(self) -> str:
        return json.dumps(self.document, sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def model_inputs(signature: ModelSignature) -> list[dict[str, Any]]:
    """The model's inputs as V2 metadata (``name``, ``datatype``, ``shape`` with -1)."""
    from mlship_runtime.signature import v2_datatype_of

    metadata = []
    for spec in signature.inputs:
        kind = spec.type
        if kind.kind != "tensor" or kind.dtype is None or kind.shape is None:
            datatype, shape = "BYTES", [-1]  # not a plain tensor: never numeric features
        else:
            datatype = "BYTES" if kind.dtype == "string" else \
                v2_datatype_of(np.empty(0, dtype=np.dtype(kind.dtype)))
            shape = [-1 if dim.size is None else dim.size for dim in kind.shape]
        metadata.append({"name": spec.name, "datatype": datatype, "shape": shape})
    return metadata


# ---- reading samples --------------------------------------------------------------------------


def read_samples(paths: Sequence[Path],
                 metadata: list[dict[str, Any]] | None) -> dict[str, np.ndarray]:
    """Rows of every file, concatenated per input; BadInputError names the file and input."""
    if not paths:
        raise BadInputError("--input: give at least one sample file")
    parts: dict[str, list[np.ndarray]] = {}
    first: dict[str, str] = {}
    for path in paths:
        for label, arrays in _documents(path, metadata):
            for name, raw in arrays.items():
                array = _check(raw, name, label, metadata)
                if name in parts and parts[name][0].shape[1:] != array.shape[1:]:
                    raise BadInputError(
                        f"{label}: input '{name}' has rows of shape {list(array.shape[1:])}, "
                        f"{first[name]} had {list(parts[name][0].shape[1:])}")
                parts.setdefault(name, []).append(array)
                first.setdefault(name, label)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def _documents(path: Path, metadata: list[dict[str, Any]] | None,
               ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    if not path.is_file():
        raise BadInputError(f"{path}: no such sample file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            if metadata is None or len(metadata) != 1:
                raise BadInputError(f"{path}: a .npy file holds one unnamed array; pass --model "
                                    "of a single-input model, or use .npz with input names")
            yield str(path), {metadata[0]["name"]: read_npy(path)}
        elif suffix == ".npz":
            yield str(path), read_npz(path)
        elif suffix == ".json":
            yield str(path), _json_arrays(json.loads(path.read_text(encoding="utf-8")),
                                          str(path), metadata)
        elif suffix in JSON_LINES:
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    if line.strip():
                        label = f"{path}:{number}"
                        yield label, _json_arrays(_loads(line.strip(), label), label, metadata)
        else:
            raise BadInputError(f"{path}: unsupported sample file type '{suffix}'",
                                hint="use .npz, .npy, .json, .jsonl or .ndjson")
    except (ValueError, OSError) as err:  # JSON syntax, a bad .npy/.npz, undecodable text
        raise BadInputError(f"{path}: cannot read samples: {err}") from None


def _loads(line: str, label: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:  # the label has the line; say the column
        raise BadInputError(f"{label}: not JSON: {err.msg} at column {err.colno}") from None


def _json_arrays(document: Any, label: str,
                 metadata: list[dict[str, Any]] | None) -> dict[str, np.ndarray]:
    """A V2 request, ``{"inputs": {...}}``, ``{"instances": [...]}`` or ``{name: values}``."""
    if not isinstance(document, dict):
        raise BadInputError(f"{label}: expected a JSON object of inputs, "
                            f"got {type(document).__name__}")
    try:
        if isinstance(document.get("inputs"), list):  # V2: explicit shapes
            return {entry["name"]: np.asarray(entry["data"]).reshape(entry["shape"])
                    for entry in document["inputs"]}
        if isinstance(document.get("inputs"), dict):
            return {name: np.asarray(value) for name, value in document["inputs"].items()}
        if isinstance(document.get("instances"), list):
            return _instances(document["instances"], label, metadata)
    except (KeyError, TypeError, ValueError) as err:
        raise BadInputError(f"{label}: not a valid request: {type(err).__name__}: {err}",
                            ) from None
    return {name: np.asarray(value) for name, value in document.items()}


def _instances(instances: list[Any], label: str,
               metadata: list[dict[str, Any]] | None) -> dict[str, np.ndarray]:
    if instances and all(isinstance(item, dict) for item in instances):
        names = sorted(set().union(*instances))
        return {name: np.asarray([item[name] for item in instances]) for name in names}
    if metadata is None or len(metadata) != 1:
        raise BadInputError(f"{label}: bare instances need --model of a single-input model "
                            "(to know the input's name)")
    return {metadata[0]["name"]: np.asarray(instances)}


def _check(array: np.ndarray, name: str, label: str,
           metadata: list[dict[str, Any]] | None) -> np.ndarray:
    """One file's array for ``name``, checked against the model when there is one."""
    if metadata is None:
        if array.ndim == 0:
            raise BadInputError(f"{label}: input '{name}' is a scalar; samples need rows")
        return array
    specs = {entry["name"]: entry for entry in metadata}
    spec = specs.get(name)
    if spec is None:
        raise BadInputError(f"{label}: unknown input '{name}'; the model's inputs are: "
                            f"{', '.join(specs)}")
    shape, datatype = list(spec["shape"]), spec["datatype"]
    if array.ndim == len(shape) - 1:  # one row without its batch dimension (a JSON line)
        array = array[np.newaxis]
    if array.ndim != len(shape) or any(want not in (-1, got)
                                       for want, got in zip(shape, array.shape, strict=True)):
        raise BadInputError(f"{label}: input '{name}': expected shape {shape}, "
                            f"got {list(array.shape)}")
    if datatype != "BYTES":
        if array.dtype.kind not in _NUMERIC_KINDS:
            held = "text" if array.dtype.kind in "OSU" else str(array.dtype)
            raise BadInputError(f"{label}: input '{name}': the model takes {datatype}, the "
                                f"samples hold {held} values")
        if datatype[0] in "UIB" and array.dtype.kind == "f" and \
                not np.array_equal(array, np.round(array), equal_nan=False):
            raise BadInputError(f"{label}: input '{name}': the model takes {datatype}, the "
                                "samples hold non-integer values")
    return array


# ---- statistics ---------------------------------------------------------------------------------


def compute_baseline(samples: Mapping[str, np.ndarray], *,
                     metadata: list[dict[str, Any]] | None = None,
                     model: dict[str, str] | None = None, sources: Sequence[str] = (),
                     max_features: int = DEFAULT_MAX_FEATURES, tail: float = DEFAULT_TAIL,
                     feature_axis: int = -1) -> tuple[dict[str, Any], list[str]]:
    """The baseline document and warnings for people (skipped inputs, thin samples)."""
    check_options(max_features, tail)
    datatypes = {entry["name"]: entry["datatype"] for entry in metadata or []}
    inputs: list[Any] = []
    skipped: list[Any] = []
    warnings: list[str] = []
    order = [entry["name"] for entry in metadata or []] or sorted(samples)
    for name in order:
        array = samples.get(name)
        if array is None:
            skipped.append({"name": name, "reason": "no samples"})
            continue
        datatype = datatypes.get(name) or _datatype(array)
        if datatype == "BYTES" or array.dtype.kind not in _NUMERIC_KINDS:
            skipped.append({"name": name, "reason": f"{datatype} values are not numeric"})
            continue
        entry = _input_entry(name, datatype, array, max_features, tail, feature_axis, warnings)
        if entry["features"]:
            inputs.append(entry)
        else:
            skipped.append({"name": name, "reason": "no feature has a finite value"})
    warnings += [f"input '{item['name']}' is not monitored: {item['reason']}"
                 for item in skipped]
    if not inputs:
        raise BadInputError("no numeric input has samples: nothing to build a baseline from")
    document = {"schema": SCHEMA, "model": model, "sources": list(sources),
                "tail_quantile": tail, "max_features": max_features,
                "inputs": inputs, "skipped": skipped}
    return document, warnings


def check_options(max_features: int, tail: float) -> None:
    if max_features < 1:
        raise BadInputError(f"--max-features: {max_features} is invalid: must be >= 1")
    if not 0 <= tail < 0.5:
        raise BadInputError(f"--tail: {tail:g} is invalid: must be in [0, 0.5)")


def _datatype(array: np.ndarray) -> str:
    from mlship_runtime.signature import v2_datatype_of

    try:
        return v2_datatype_of(array)
    except ValueError:
        return "BYTES"


def _input_entry(name: str, datatype: str, array: np.ndarray, max_features: int, tail: float,
                 feature_axis: int, warnings: list[str]) -> dict[str, Any]:
    rank = array.ndim
    axis: int | None = None
    if rank == 1:
        matrix = array.reshape(-1, 1)
    else:
        axis = feature_axis + rank if feature_axis < 0 else feature_axis
        if not 0 < axis < rank:
            raise BadInputError(f"--feature-axis: {feature_axis} is invalid for input '{name}' "
                                f"of rank {rank}: must not be the batch axis 0")
        matrix = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis])
    total = matrix.shape[1]
    if total > max_features:
        warnings.append(f"input '{name}' has {total} features: only the first {max_features} "
                        "are monitored (--max-features)")
    features = []
    for index in range(min(total, max_features)):
        column = matrix[:, index].astype(np.float64)  # one column at a time: bounded memory
        finite = column[np.isfinite(column)]
        if not finite.size:
            warnings.append(f"input '{name}' feature {index} has no finite value: not monitored")
            continue
        low, high = np.quantile(finite, [tail, 1 - tail])
        features.append({
            "index": index, "count": int(finite.size),
            "nonfinite": int(column.size - finite.size),
            "mean": float(finite.mean()), "std": float(finite.std(ddof=1 if finite.size > 1
                                                                    else 0)),
            "min": float(finite.min()), "max": float(finite.max()),
            "low": float(low), "high": float(high)})
    if tail and matrix.shape[0] < 2 / tail:
        warnings.append(f"input '{name}' has {matrix.shape[0]} rows: the expected range (the "
                        f"{tail:.3g} and {1 - tail:.3g} quantiles) is just min and max below "
                        f"{2 / tail:.0f}")
    shape = [-1, *array.shape[1:]]
    return {"name": name, "datatype": datatype, "rank": rank, "axis": axis, "shape": shape,
            "rows": int(array.shape[0]), "features_total": int(total), "features": features}


# ---- files --------------------------------------------------------------------------------------


def write_baseline(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def read_baseline_file(path: Path, signature: ModelSignature | None,
                       label: str) -> BaselineFile:
    """A baseline checked by the runtime's own parser (and against the model when known);
    BadInputError prefixed with ``label`` (the config key that named the file)."""
    from mlship_runtime.drift import BaselineError, check_against_model, parse_baseline

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        inputs = parse_baseline(document, str(path))
        if signature is not None:
            check_against_model(inputs, model_inputs(signature), str(path))
    except BaselineError as err:
        raise BadInputError(f"{label}: {err}") from None
    except (OSError, ValueError) as err:
        raise BadInputError(f"{label}: {path}: cannot read a baseline: {err}") from None
    return BaselineFile(str(path), document)
