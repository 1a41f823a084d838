"""Input profiles: the shapes (and optionally the values) real requests have, per model.

A model with dynamic dimensions says little about the requests it will get: a detector takes
any height and width, a voice-activity model any number of samples. Everything that runs the
model without a real request (the warm-up, the memory probe, optimize's measurement, the smoke
test, generated inputs, synthetic canary traffic) runs it at a profile:

- **given**: shapes (``x=1x3x640x640``) or a sample file (.npz, .npy, .json) from the user; a
  run that fails at a given profile is the user's to fix, and the model is refused;
- **derived**: from what the model records (fixed dims, image-size metadata such as
  Ultralytics' ``imgsz``), then a short list of common sizes, keeping the first that runs.

``derive`` never refuses: when nothing runs it says what it tried, and the caller decides.
"""

from __future__ import annotations

import ast
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlship_runtime.signature import V2_TO_NUMPY

Shape = tuple[int, ...]
Metadata = Sequence[Mapping[str, Any]]  # V2 tensor metadata: name, datatype, shape (-1: dynamic)
# Sizes tried, in order, for dynamic dimensions the model says nothing about: sizes requests
# commonly have (image sides, audio frames, token sequences) first, then smaller ones for
# models that only take those; 1 last, as it is rarely what requests carry.
COMMON_SIZES = (224, 320, 512, 640, 64, 32, 16, 1)
# Values tried for integer scalars (sampling rates, counts) when zero does not run.
COMMON_SCALARS = (0, 1, 16000)
MAX_TRIES = 48
MAX_SECONDS = 20.0
_SIZE_KEYS = ("imgsz", "image_size", "img_size", "input_size", "imagesize")


class ProfileError(ValueError):
    """A profile the user gave cannot be read or does not fit the model."""


@dataclass(frozen=True)
class Profile:
    """One request's inputs: a shape per input (batch dimension included), and values when a
    sample gave them. ``source`` says where it came from, for logs and reports."""

    shapes: Mapping[str, Shape]
    source: str
    given: bool = False
    samples: Mapping[str, np.ndarray] | None = None
    scalars: Mapping[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        shapes = ", ".join(f"{name}=[{'x'.join(map(str, shape))}]" if shape or
                           name not in self.scalars else f"{name}={self.scalars[name]}"
                           for name, shape in self.shapes.items())
        return f"{shapes} ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": {name: list(shape) for name, shape in self.shapes.items()},
                "source": self.source, "given": self.given}


def parse_shapes(text: str) -> dict[str, Shape]:
    """``x=1x3x64x64,sr=`` -> {"x": (1, 3, 64, 64), "sr": ()}; dims also as ``1,3,64,64``
    (``x=1,3,64,64,y=2``: a part without ``=`` continues the previous input) or in brackets.
    A leading ``-1`` stands for the batch (the rows a caller runs at). ProfileError naming the
    part that is wrong."""
    shapes: dict[str, Shape] = {}
    parts: list[str] = []
    for part in _split_top(text):
        if "=" not in part and parts:
            parts[-1] += "," + part
        else:
            parts.append(part)
    for part in parts:
        name, sep, dims = part.partition("=")
        name, dims = name.strip(), dims.strip().strip("[]()")
        if not sep or not name:
            raise ProfileError(f"{part!r}: expected NAME=DIMS, e.g. images=1x3x640x640")
        try:
            shape = tuple(int(d) for d in dims.replace(",", "x").split("x") if d.strip())
        except ValueError:
            raise ProfileError(f"{part!r}: dimensions must be integers, e.g. 1x3x640x640") \
                from None
        if any(d < 1 for d in shape[1:]) or (shape and shape[0] < 1 and shape[0] != -1):
            raise ProfileError(f"{part!r}: every dimension must be >= 1 (-1 first: the batch)")
        if name in shapes:
            raise ProfileError(f"{name!r} is given twice")
        shapes[name] = shape
    return shapes


def _split_top(text: str) -> list[str]:
    """Split on commas and semicolons outside brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char in ",;" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def format_shapes(shapes: Mapping[str, Shape]) -> str:
    return ",".join(f"{name}={'x'.join(map(str, shape))}" for name, shape in shapes.items())


def load_sample(path: Path) -> dict[str, np.ndarray]:
    """Arrays from .npz (by name), .npy (the only input) or .json (``{name: values}`` or a V2
    request); names are checked against the model by ``given``."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        if suffix == ".json":
            document = json.loads(path.read_bytes())
            if isinstance(document, dict) and isinstance(document.get("inputs"), list):
                return {str(entry["name"]): np.asarray(entry["data"]).reshape(entry["shape"])
                        for entry in document["inputs"]}
            if isinstance(document, dict):
                return {str(name): np.asarray(value) for name, value in document.items()}
            raise ProfileError(f"{path}: expected a JSON object of inputs")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProfileError(f"{path}: cannot read the sample: {exc}") from None
    raise ProfileError(f"{path}: a sample is .npz, .npy or .json, not {suffix or 'no suffix'}")


def given(metadata: Metadata, shapes: Mapping[str, Shape] | None = None,
          samples: Mapping[str, np.ndarray] | None = None, *, source: str) -> Profile:
    """The user's profile, checked against the model's inputs (names, ranks, fixed dims);
    inputs left out get the derived first guess."""
    names = [str(entry["name"]) for entry in metadata]
    arrays = dict(samples or {})
    if "" in arrays:  # a .npy holds the only input's array
        if len(names) != 1:
            raise ProfileError(f"{source}: a .npy sample holds one array, the model has inputs "
                               f"{names}; use .npz or .json")
        arrays = {names[0]: arrays.pop("")}
    wanted = {**{name: tuple(a.shape) for name, a in arrays.items()}, **(shapes or {})}
    for name in wanted:
        if name not in names:
            raise ProfileError(f"{source}: unknown input {name!r}; the model's inputs are "
                               f"{names}")
    first = candidates(metadata, {})[0]
    resolved: dict[str, Shape] = {}
    for entry in metadata:
        name = str(entry["name"])
        shape = wanted.get(name, first.shapes[name])
        declared = [int(d) for d in entry["shape"]]
        if len(shape) != len(declared) or any(
                d >= 0 and d != s and not (i == 0 and s == -1)
                for i, (d, s) in enumerate(zip(declared, shape, strict=True))):
            raise ProfileError(f"{source}: input {name!r} is {entry['datatype']} {declared}, "
                               f"so {list(shape)} does not fit it")
        resolved[name] = tuple(1 if i == 0 and d == -1 else d for i, d in enumerate(shape))
    return Profile(resolved, source, given=True, samples=arrays or None)


def hinted_sizes(model_metadata: Mapping[str, str]) -> tuple[int, ...] | None:
    """Image size the model's metadata records: ``imgsz: [320, 320]`` (Ultralytics),
    ``image_size: 224``...; None when there is none."""
    for key, value in model_metadata.items():
        if key.lower() not in _SIZE_KEYS:
            continue
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            continue
        sizes = (parsed,) if isinstance(parsed, int) else tuple(parsed) \
            if isinstance(parsed, (list, tuple)) else ()
        if sizes and all(isinstance(s, int) and s > 0 for s in sizes):
            return sizes
    return None


def candidates(metadata: Metadata, model_metadata: Mapping[str, str]) -> list[Profile]:
    """Profiles to try, best guess first: dims the model records, then common sizes.

    The leading dimension of every input is the batch (1). Dynamic dimensions sharing a name
    share a value; other dynamic dimensions take a common size, and, where that fails, each
    unnamed one may instead be another input's batch (a recurrent state's)."""
    hint = hinted_sizes(model_metadata)
    profiles: dict[tuple[tuple[str, Shape], ...], Profile] = {}
    for label, values in _options(metadata, hint):
        shapes = {str(entry["name"]): _concrete(entry, values, hint) for entry in metadata}
        profiles.setdefault(tuple(shapes.items()), Profile(shapes, f"derived: {label}"))
    return list(profiles.values())


def _key(entry: Mapping[str, Any], index: int) -> str:
    """The group of a dynamic dimension: its symbol, or the input and position if unnamed."""
    symbols = entry.get("symbols") or [None] * len(entry["shape"])
    return str(symbols[index] or f"{entry['name']}#{index}")


def _options(metadata: Metadata,
             hint: tuple[int, ...] | None) -> list[tuple[str, dict[str, int]]]:
    free = sorted({_key(entry, i) for entry in metadata
                   for i, dim in enumerate(entry["shape"]) if i > 0 and int(dim) < 0})
    batch = {_key(entry, 0) for entry in metadata if entry["shape"]}
    unnamed = [key for key in free if "#" in key]
    options: list[tuple[str, dict[str, int]]] = []
    if not free and hint is None:
        return [("the shapes the model declares", {})]
    if hint is not None:
        options.append((f"image size {list(hint)} from the model's metadata", {}))
    for size in COMMON_SIZES:
        label = "every unknown dimension 1" if size == 1 else f"common size {size}"
        values = {key: 1 if key in batch else size for key in free}
        options.append((label, values))
        if size == 1:
            continue
        for count in range(1, min(len(unnamed), 3) + 1):  # unnamed dims that are a batch
            for batchlike in itertools.combinations(unnamed, count):
                options.append((f"{label}, {', '.join(batchlike)} as batch",
                                {**values, **dict.fromkeys(batchlike, 1)}))
    return options


def _concrete(entry: Mapping[str, Any], values: Mapping[str, int],
              hint: tuple[int, ...] | None) -> Shape:
    dims = [int(d) for d in entry["shape"]]
    concrete = [dim if dim >= 0 else 1 if i == 0 else values.get(_key(entry, i), 1)
                for i, dim in enumerate(dims)]
    if hint is not None and not values and len(dims) == 4:  # NCHW: the hint is H, W
        spatial = [i for i in (2, 3) if dims[i] < 0]
        for position, i in enumerate(spatial):
            concrete[i] = hint[min(position + 2 - len(spatial), len(hint) - 1)]
    return tuple(concrete)


def inputs_at(profile: Profile, metadata: Metadata, batch: int | None = None, *,
              as_bytes: bool = False) -> dict[str, np.ndarray]:
    """Arrays for ``profile``; ``batch`` replaces the leading dimension of inputs whose
    leading dimension is dynamic (a sample's rows are repeated or cut to it)."""
    arrays: dict[str, np.ndarray] = {}
    for entry in metadata:
        name = str(entry["name"])
        shape = list(profile.shapes[name])
        dynamic_batch = bool(entry["shape"]) and int(entry["shape"][0]) < 0
        if batch is not None and dynamic_batch and shape:
            shape[0] = batch
        sample = (profile.samples or {}).get(name)
        datatype = str(entry["datatype"])
        if sample is not None:
            value = _as_datatype(sample, datatype)
            if value.shape and tuple(shape) != value.shape:
                value = np.resize(value, shape)
        elif datatype == "BYTES":
            value = np.full(shape, b"a" if as_bytes else "a", dtype=object)
        else:
            value = np.zeros(shape, dtype=V2_TO_NUMPY[datatype])
            if not shape and name in profile.scalars:
                value = np.asarray(profile.scalars[name], dtype=value.dtype)
        arrays[name] = value
    return arrays


def _as_datatype(array: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return array.astype(object)
    return np.asarray(array).astype(V2_TO_NUMPY[datatype], copy=False)


@dataclass
class Derivation:
    """What ``derive`` found: the profile that ran (None when none did), and every try."""

    profile: Profile | None
    tried: list[str] = field(default_factory=list)
    last_error: str = ""


def derive(metadata: Metadata, model_metadata: Mapping[str, str],
           run: Callable[[dict[str, np.ndarray]], object], *,
           max_tries: int = MAX_TRIES, max_seconds: float = MAX_SECONDS) -> Derivation:
    """The first candidate the model runs on (``run`` raises when it does not)."""
    found = Derivation(None)
    deadline = time.monotonic() + max_seconds
    scalars = [str(e["name"]) for e in metadata
               if not e["shape"] and str(e["datatype"]).startswith(("INT", "UINT"))]
    value_sets: list[dict[str, int]] = [{}]
    value_sets += [dict.fromkeys(scalars, value) for value in COMMON_SCALARS[1:] if scalars]
    for candidate in candidates(metadata, model_metadata):
        for values in value_sets:
            if len(found.tried) >= max_tries or time.monotonic() > deadline:
                return found
            suffix = f", {'/'.join(values)} = {next(iter(values.values()))}" if values else ""
            profile = Profile(candidate.shapes, candidate.source + suffix, scalars=values)
            found.tried.append(profile.describe())
            try:
                run(inputs_at(profile, metadata))
            except Exception as exc:  # any refusal by the model: try the next candidate
                text = str(exc).strip()
                found.last_error = text.splitlines()[0] if text else type(exc).__name__
                continue
            found.profile = profile
            return found
    return found
