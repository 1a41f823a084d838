"""Two models' answers to the same request, compared output by output: THE comparison of
``mlship compare`` (offline, before a deploy) and of shadow mirroring (the stable runtime
comparing its answer with the shadow's, mlship_runtime.shadow), so both judge alike.

Each output of a pair of answers gets one ``PairResult``: whether the new answer disagrees, and
a deviation (for the histogram):

- **numeric** (floats): disagreed when ``max |old - new| > absolute + relative * scale``, scale
  being the old output's largest magnitude (numpy.allclose's rule on the whole output); the
  deviation is ``max |old - new| / scale``;
- **exact** (labels, strings, integers, booleans): disagreed when any element differs; the
  deviation is the share of elements that differ;
- **top1** (classification probabilities): disagreed when the arg-max over the last axis of
  any row differs; the deviation is the share of rows whose top-1 class differs.

``auto`` (the default) picks exact for non-float outputs, top1 for float outputs that are
probabilities (rank >= 2, every value in [0, 1], rows summing to 1), numeric otherwise. An
output judged over many pairs (``Tally``) passes when the share of pairs that disagreed is at
most ``max_disagreement``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

KINDS = ("auto", "numeric", "exact", "top1")
# Relative deviation (numeric) or share of differing elements or rows (exact, top1).
DEVIATION_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0)
_HISTOGRAM_CAP = 1e6  # a deviation from an all-zero output is infinite: the sum stays finite


class ToleranceError(ValueError):
    """Tolerances that cannot be read: names the key and what it takes."""


@dataclass(frozen=True)
class Tolerance:
    """How one output is compared, and how much disagreement it may have."""

    compare: str = "auto"
    absolute: float = 1e-5
    relative: float = 0.01
    max_disagreement: float = 0.0

    def __post_init__(self) -> None:
        if self.compare not in KINDS:
            raise ToleranceError(f"compare: expected one of {', '.join(KINDS)}, "
                                 f"got {self.compare!r}")
        for key in ("absolute", "relative", "max_disagreement"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0:
                raise ToleranceError(f"{key}: expected a number >= 0, got {value!r}")
        if self.max_disagreement > 1:
            raise ToleranceError(f"max_disagreement: expected a share 0..1, got "
                                 f"{self.max_disagreement!r}")


@dataclass(frozen=True)
class Tolerances:
    """A default tolerance and per-output ones (by output name)."""

    default: Tolerance = field(default_factory=Tolerance)
    outputs: Mapping[str, Tolerance] = field(default_factory=dict)

    def of(self, name: str) -> Tolerance:
        return self.outputs.get(name, self.default)

    def to_dict(self) -> dict[str, Any]:
        return {"default": asdict(self.default),
                "outputs": {name: asdict(t) for name, t in self.outputs.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Tolerances:
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ToleranceError(f"not JSON: {exc}") from None
        if not isinstance(document, dict) or set(document) - {"default", "outputs"}:
            raise ToleranceError('expected {"default": {...}, "outputs": {NAME: {...}}}')
        outputs = document.get("outputs", {})
        if not isinstance(outputs, dict):
            raise ToleranceError("outputs: expected an object of output name -> tolerance")
        return cls(_tolerance(document.get("default", {}), "default"),
                   {str(name): _tolerance(value, f"outputs.{name}")
                    for name, value in outputs.items()})


def _tolerance(value: Any, where: str) -> Tolerance:
    known = {"compare", "absolute", "relative", "max_disagreement"}
    if not isinstance(value, dict) or set(value) - known:
        raise ToleranceError(f"{where}: expected an object with keys {', '.join(sorted(known))}")
    try:
        return Tolerance(**value)
    except ToleranceError as exc:
        raise ToleranceError(f"{where}.{exc}") from None


@dataclass(frozen=True)
class PairResult:
    """One output of one pair of answers."""

    kind: str  # numeric | exact | top1
    disagreed: bool
    deviation: float
    max_abs_deviation: float | None = None
    top1_agreement: float | None = None
    reason: str | None = None  # why the answers cannot be compared element by element


def is_probabilities(array: np.ndarray) -> bool:
    """Class probabilities: float, rank >= 2 with >= 2 classes, values in [0, 1], rows
    summing to 1 (a softmax's output)."""
    if array.dtype.kind != "f" or array.ndim < 2 or array.shape[-1] < 2 or not array.size:
        return False
    values = array.astype(np.float64, copy=False)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        return False
    return bool(np.allclose(values.sum(axis=-1), 1.0, atol=1e-3))


def kind_of(old: np.ndarray, tolerance: Tolerance) -> str:
    if tolerance.compare != "auto":
        return tolerance.compare
    if old.dtype.kind != "f":
        return "exact"
    return "top1" if is_probabilities(old) else "numeric"


def compare_output(old: Any, new: Any, tolerance: Tolerance) -> PairResult:
    """The old (reference) and new answer of one output."""
    a, b = np.asarray(old), np.asarray(new)
    kind = kind_of(a, tolerance)
    if a.shape != b.shape:
        return PairResult(kind, True, math.inf,
                          reason=f"shape {list(a.shape)} vs {list(b.shape)}")
    numeric = a.dtype.kind in "fiub" and b.dtype.kind in "fiub"
    if kind == "exact" or not numeric:
        same = _equal(a, b)
        share = float(1.0 - same.mean()) if same.size else 0.0
        return PairResult("exact", share > 0, share)
    x, y = a.astype(np.float64), b.astype(np.float64)
    nan_x, nan_y = np.isnan(x), np.isnan(y)
    # NaN on one side only is a disagreement; NaN on both sides is agreement.
    diff = np.where(nan_x & nan_y, 0.0, np.where(nan_x | nan_y, np.inf, np.abs(x - y)))
    largest = float(diff.max()) if diff.size else 0.0
    if kind == "top1":
        if x.ndim == 0 or not x.size:
            return PairResult("top1", False, 0.0, largest, 1.0)
        agree = float(np.mean(np.argmax(x, axis=-1) == np.argmax(y, axis=-1)))
        return PairResult("top1", agree < 1.0, 1.0 - agree, largest, agree)
    finite = x[~nan_x]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    relative = largest / scale if scale > 0 else (0.0 if largest == 0 else math.inf)
    bound = tolerance.absolute + tolerance.relative * scale
    return PairResult("numeric", largest > bound, relative, largest)


def _equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if object in (a.dtype, b.dtype):  # BYTES: bytes on one side, str on the other
        return np.asarray([_text(p) == _text(q) for p, q in zip(a.flat, b.flat, strict=True)],
                          dtype=bool).reshape(a.shape)
    return np.asarray(a == b, dtype=bool).reshape(a.shape)


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def compare_outputs(old: Mapping[str, Any], new: Mapping[str, Any],
                    tolerances: Tolerances) -> dict[str, PairResult]:
    """Every output of the old answer against the new one (an output missing from the new
    answer disagrees)."""
    results = {}
    for name, value in old.items():
        tolerance = tolerances.of(name)
        if name not in new:
            kind = kind_of(np.asarray(value), tolerance)
            results[name] = PairResult(kind, True, math.inf,
                                       reason="missing from the new model's answer")
            continue
        results[name] = compare_output(value, new[name], tolerance)
    return results


@dataclass
class Tally:
    """One output over many pairs."""

    kind: str = ""
    compared: int = 0
    disagreed: int = 0
    max_deviation: float = 0.0
    max_abs_deviation: float | None = None
    top1_rows_agreeing: float = 0.0
    top1_pairs: int = 0
    reasons: list[str] = field(default_factory=list)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DEVIATION_BUCKETS) + 1))
    deviation_sum: float = 0.0

    def add(self, result: PairResult) -> None:
        from bisect import bisect_left

        self.kind = self.kind or result.kind
        self.compared += 1
        self.disagreed += int(result.disagreed)
        self.max_deviation = max(self.max_deviation, result.deviation)
        if result.max_abs_deviation is not None:
            self.max_abs_deviation = max(self.max_abs_deviation or 0.0,
                                         result.max_abs_deviation)
        if result.top1_agreement is not None:
            self.top1_rows_agreeing += result.top1_agreement
            self.top1_pairs += 1
        if result.reason and result.reason not in self.reasons and len(self.reasons) < 5:
            self.reasons.append(result.reason)
        deviation = min(result.deviation, _HISTOGRAM_CAP)
        self.buckets[bisect_left(DEVIATION_BUCKETS, deviation)] += 1
        self.deviation_sum += deviation

    @property
    def agreement(self) -> float | None:
        return None if not self.compared else 1.0 - self.disagreed / self.compared

    def passes(self, tolerance: Tolerance) -> bool:
        return self.compared > 0 and self.disagreed <= tolerance.max_disagreement * self.compared

    def to_dict(self, tolerance: Tolerance) -> dict[str, Any]:
        """JSON-able: an infinite deviation (shapes differ, all-zero reference) is null."""
        return {"kind": self.kind, "compared": self.compared, "disagreed": self.disagreed,
                "agreement": self.agreement,
                "max_deviation": self.max_deviation if math.isfinite(self.max_deviation)
                else None,
                "max_abs_deviation": self.max_abs_deviation
                if self.max_abs_deviation is None or math.isfinite(self.max_abs_deviation)
                else None,
                "top1_agreement": self.top1_rows_agreeing / self.top1_pairs
                if self.top1_pairs else None,
                "tolerance": asdict(tolerance), "passed": self.passes(tolerance),
                "reasons": list(self.reasons)}
