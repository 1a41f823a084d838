"""Drift signals: per-feature input statistics as Prometheus counters, against a baseline.

With ``--baseline FILE`` (written by ``mlship baseline``) the runtime adds, for every numeric
feature the baseline lists, counters of the values it answered: how many, their sum and sum of
squares (so Prometheus computes a window's mean and standard deviation from ``increase()``),
how many fell below or above the baseline's expected range, and how many were NaN or infinite.
The baseline's mean and standard deviation are exported as gauges, so an alert expression needs
nothing but the scraped series (docs/drift.md).

Accounting runs on the event loop thread, after a request was answered (the same thread that
renders ``/metrics``), so no lock is needed. A request's tracked values are queued and reduced
in blocks by vectorised numpy (at a size bound and before every scrape); the feature cap in the
baseline bounds both the work and the series count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlship_runtime.metrics import _labels, _number

log = logging.getLogger("mlship_runtime")

SCHEMA = "mlship.baseline/v1"
# Queued values per input before they are reduced (512 KiB of float64): bounds memory, and
# amortises the fixed cost of the reductions over many requests.
FLUSH_ELEMENTS = 65536
NUMERIC_DATATYPES = frozenset({"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                               "INT32", "INT64", "FP16", "FP32", "FP64"})


class BaselineError(ValueError):
    """The baseline file is unreadable, not a v1 baseline, or does not fit the model."""


@dataclass(frozen=True)
class FeatureBaseline:
    """One feature: its index along the input's feature axis and its baseline statistics."""

    index: int
    mean: float
    std: float
    low: float  # values below this count as out of range (a low quantile of the samples)
    high: float  # values above this count as out of range


@dataclass(frozen=True)
class InputBaseline:
    """The features of one input tensor. Rank 1 has one feature: the values themselves."""

    name: str
    rank: int
    axis: int | None  # the feature axis (non-negative), None for rank 1
    features_total: int  # length of the feature axis in the samples
    features: tuple[FeatureBaseline, ...]


# ---- reading a baseline document ------------------------------------------------------------


def read_baseline(path: str | Path) -> list[InputBaseline]:
    """Parse and check the baseline file; BaselineError with one line saying what is wrong."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BaselineError(f"{path}: not JSON: {exc}") from None
    return parse_baseline(document, str(path))


def parse_baseline(document: Any, source: str) -> list[InputBaseline]:
    """The inputs of a ``mlship.baseline/v1`` document (see docs/drift.md for the format)."""
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        got = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise BaselineError(f"{source}: expected a baseline document with schema {SCHEMA!r}, "
                            f"got {got!r}")
    entries = document.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise BaselineError(f"{source}: 'inputs' must be a non-empty list")
    inputs = [_parse_input(entry, f"{source}: inputs[{i}]") for i, entry in enumerate(entries)]
    names = [item.name for item in inputs]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise BaselineError(f"{source}: input '{duplicate}' is listed twice")
    return inputs


def _parse_input(entry: Any, where: str) -> InputBaseline:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise BaselineError(f"{where}: expected an object with a 'name'")
    where = f"{where} ('{entry['name']}')"
    rank = _integer(entry, "rank", where, minimum=1)
    total = _integer(entry, "features_total", where, minimum=1)
    axis = entry.get("axis")
    if rank == 1:
        if axis is not None or total != 1:
            raise BaselineError(f"{where}: a rank-1 input has one feature and no 'axis'")
    elif not (isinstance(axis, int) and not isinstance(axis, bool) and 0 < axis < rank):
        raise BaselineError(f"{where}: 'axis' must be an integer in 1..{rank - 1}, got {axis!r}")
    features = entry.get("features")
    if not isinstance(features, list) or not features:
        raise BaselineError(f"{where}: 'features' must be a non-empty list")
    parsed = tuple(_parse_feature(item, f"{where}: features[{i}]", total)
                   for i, item in enumerate(features))
    indices = [feature.index for feature in parsed]
    if indices != sorted(set(indices)):
        raise BaselineError(f"{where}: feature indices must be unique and ascending")
    return InputBaseline(entry["name"], rank, axis, total, parsed)


def _parse_feature(item: Any, where: str, total: int) -> FeatureBaseline:
    if not isinstance(item, dict):
        raise BaselineError(f"{where}: expected an object")
    index = _integer(item, "index", where, minimum=0)
    if index >= total:
        raise BaselineError(f"{where}: index {index} is outside the {total} features")
    values = {}
    for key in ("mean", "std", "low", "high"):
        value = item.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value):
            raise BaselineError(f"{where}: '{key}' must be a finite number, got {value!r}")
        values[key] = float(value)
    if values["std"] < 0 or values["low"] > values["high"]:
        raise BaselineError(f"{where}: needs std >= 0 and low <= high")
    return FeatureBaseline(index, values["mean"], values["std"], values["low"], values["high"])


def _integer(entry: dict[str, Any], key: str, where: str, *, minimum: int) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BaselineError(f"{where}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def check_against_model(inputs: Sequence[InputBaseline],
                        metadata: Sequence[Mapping[str, Any]], source: str) -> None:
    """Every baseline input must be a numeric model input of the same rank whose feature axis,
    when fixed, has the baseline's length. ``metadata`` is V2 tensor metadata."""
    specs = {str(m["name"]): m for m in metadata}
    for item in inputs:
        spec = specs.get(item.name)
        where = f"{source}: input '{item.name}'"
        if spec is None:
            raise BaselineError(f"{where} is not an input of the model (its inputs: "
                                f"{', '.join(sorted(specs))})")
        if spec["datatype"] not in NUMERIC_DATATYPES:
            raise BaselineError(f"{where}: the model's input is {spec['datatype']}, not numeric")
        shape = list(spec["shape"])
        if len(shape) != item.rank:
            raise BaselineError(f"{where}: the baseline has rank {item.rank}, the model's input "
                                f"has shape {shape}")
        if item.axis is not None and shape[item.axis] not in (-1, item.features_total):
            raise BaselineError(f"{where}: the baseline has {item.features_total} features on "
                                f"axis {item.axis}, the model's input has shape {shape}")


# ---- accounting and exposition ----------------------------------------------------------------


class _Tracked:
    """Accumulators for one input; every array has one slot per tracked feature."""

    def __init__(self, labels: Sequence[tuple[str, str]], baseline: InputBaseline) -> None:
        self.baseline = baseline
        self.name = baseline.name
        features = baseline.features
        indices = [feature.index for feature in features]
        # The first n features (what `mlship baseline` writes) are a slice: a view, no copy.
        self.columns: slice | np.ndarray = slice(0, len(indices)) \
            if indices == list(range(len(indices))) else np.asarray(indices)
        self.low = np.array([feature.low for feature in features])
        self.high = np.array([feature.high for feature in features])
        self.rows = 0  # rows seen; a feature's count is rows minus its non-finite values
        self.nonfinite = np.zeros(len(features), dtype=np.int64)
        self.sum = np.zeros(len(features))
        self.squares = np.zeros(len(features))
        self.below = np.zeros(len(features), dtype=np.int64)
        self.above = np.zeros(len(features), dtype=np.int64)
        base = [*labels, ("input", baseline.name)]
        self.labels = [_labels([*base, ("feature", str(f.index))]) for f in features]
        self.directions = [(_labels([*base, ("feature", str(f.index)), ("direction", "low")]),
                            _labels([*base, ("feature", str(f.index)), ("direction", "high")]))
                           for f in features]
        self.warned = False
        self.pending: list[np.ndarray] = []  # rows not yet reduced into the counters
        self.pending_size = 0

    def observe(self, array: np.ndarray) -> None:
        baseline = self.baseline
        if array.ndim != baseline.rank:  # session.check makes this impossible; be safe anyway
            return
        if baseline.axis is None:
            matrix = array.reshape(-1, 1)
        else:
            if baseline.axis != array.ndim - 1:
                array = np.moveaxis(array, baseline.axis, -1)
            if array.shape[-1] != baseline.features_total:
                self._mismatch(array.shape[-1])
                return
            matrix = array.reshape(-1, baseline.features_total)[:, self.columns]
        if not matrix.shape[0]:
            return
        # Requests are reduced in blocks, not one by one: a dozen numpy calls cost ~13 µs
        # whatever the size, so per request only an owned float64 copy is queued (~1 µs; a
        # copy never pins a request body). Blocks are reduced at FLUSH_ELEMENTS and before
        # every scrape, so /metrics is always exact.
        self.pending.append(matrix.astype(np.float64))
        self.pending_size += matrix.size
        if self.pending_size >= FLUSH_ELEMENTS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        values = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.pending.clear()
        self.pending_size = 0
        sums = values.sum(axis=0)
        squares = np.einsum("ij,ij->j", values, values)
        below = values < self.low
        above = values > self.high
        if not np.isfinite(squares).all():
            # Rare path: leave NaN/inf (and values whose square overflows) out of every sum and
            # range count, so one bad request cannot turn a counter into NaN for good.
            finite = np.abs(values) < 1e154  # False for NaN too
            values = np.where(finite, values, 0.0)
            sums = values.sum(axis=0)
            squares = np.einsum("ij,ij->j", values, values)
            below &= finite
            above &= finite
            self.nonfinite += (~finite).sum(axis=0)
        self.rows += values.shape[0]
        self.sum += sums
        self.squares += squares
        self.below += below.sum(axis=0)
        self.above += above.sum(axis=0)

    def _mismatch(self, got: int) -> None:
        if not self.warned:  # once: the hot path must not flood the log
            self.warned = True
            log.warning("drift: input '%s' has %d features on axis %d, the baseline %d; such "
                        "requests are not counted", self.name, got, self.baseline.axis,
                        self.baseline.features_total)


_FAMILIES = (
    ("mlship_input_feature_count_total", "counter",
     "Finite values of an input feature in answered requests."),
    ("mlship_input_feature_sum_total", "counter", "Sum of those values."),
    ("mlship_input_feature_sum_squares_total", "counter", "Sum of their squares."),
    ("mlship_input_out_of_range_total", "counter",
     "Values below (direction=low) or above (direction=high) the baseline's expected range."),
    ("mlship_input_feature_nonfinite_total", "counter", "NaN or infinite values (not summed)."),
    ("mlship_input_baseline_mean", "gauge", "Mean of the feature in the baseline samples."),
    ("mlship_input_baseline_std", "gauge",
     "Standard deviation of the feature in the baseline samples."),
)


class DriftMonitor:
    """Per-feature accounting for the inputs a baseline lists; ``render`` feeds ``/metrics``."""

    def __init__(self, labels: Sequence[tuple[str, str]],
                 inputs: Sequence[InputBaseline]) -> None:
        # ``labels`` come first on every series: model, plus a canary's track/revision.
        self.tracked = [_Tracked(labels, item) for item in inputs]

    @classmethod
    def from_file(cls, path: str, labels: Sequence[tuple[str, str]],
                  metadata: Sequence[Mapping[str, Any]]) -> DriftMonitor:
        inputs = read_baseline(path)
        check_against_model(inputs, metadata, path)
        return cls(labels, inputs)

    @property
    def series(self) -> int:
        return sum(8 * len(tracked.labels) for tracked in self.tracked)

    def observe(self, inputs: Mapping[str, np.ndarray]) -> None:
        for tracked in self.tracked:
            array = inputs.get(tracked.name)
            if array is not None:
                tracked.observe(array)

    def flush(self) -> None:
        """Reduce every queued value into the counters (render does this first)."""
        for tracked in self.tracked:
            tracked.flush()

    def render(self) -> list[str]:
        self.flush()
        # Built at scrape time; the text format wants each family's samples together.
        samples: dict[str, list[str]] = {name: [] for name, _, _ in _FAMILIES}
        for tracked in self.tracked:
            counts = tracked.rows - tracked.nonfinite
            for i, (label, feature) in enumerate(zip(tracked.labels, tracked.baseline.features,
                                                     strict=True)):
                low, high = tracked.directions[i]
                samples["mlship_input_feature_count_total"].append(f"{label} {counts[i]}")
                samples["mlship_input_feature_sum_total"].append(
                    f"{label} {_number(float(tracked.sum[i]))}")
                samples["mlship_input_feature_sum_squares_total"].append(
                    f"{label} {_number(float(tracked.squares[i]))}")
                samples["mlship_input_out_of_range_total"] += [f"{low} {tracked.below[i]}",
                                                               f"{high} {tracked.above[i]}"]
                samples["mlship_input_feature_nonfinite_total"].append(
                    f"{label} {tracked.nonfinite[i]}")
                samples["mlship_input_baseline_mean"].append(f"{label} {_number(feature.mean)}")
                samples["mlship_input_baseline_std"].append(f"{label} {_number(feature.std)}")
        lines: list[str] = []
        for name, kind, text in _FAMILIES:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [name + sample for sample in samples[name]]
        return lines
