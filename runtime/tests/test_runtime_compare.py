"""The one comparison of two answers (mlship_runtime.compare), used by `mlship compare` and by
the shadow mirroring: each kind of output, each way two answers can differ."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mlship_runtime.compare import (
    Tally,
    Tolerance,
    ToleranceError,
    Tolerances,
    compare_output,
    compare_outputs,
    is_probabilities,
)

DEFAULT = Tolerance()


def test_numeric_within_and_beyond_the_relative_bound() -> None:
    old = np.array([[10.0, -20.0, 5.0]], np.float32)
    near = compare_output(old, old + np.float32(0.1), DEFAULT)  # 0.1 <= 1e-5 + 1% of 20
    assert (near.kind, near.disagreed) == ("numeric", False)
    assert near.deviation == pytest.approx(0.1 / 20, rel=1e-4)
    far = compare_output(old, old * np.float32(1.1), DEFAULT)  # 2.0 > 0.2
    assert far.disagreed
    assert far.max_abs_deviation == pytest.approx(2.0, rel=1e-5)
    loose = compare_output(old, old * np.float32(1.1), Tolerance(relative=0.2))
    assert not loose.disagreed


def test_all_zero_reference_uses_the_absolute_part() -> None:
    zeros = np.zeros((2, 3), np.float32)
    assert not compare_output(zeros, zeros + np.float32(1e-6), DEFAULT).disagreed
    off = compare_output(zeros, zeros + np.float32(1.0), DEFAULT)
    assert off.disagreed
    assert math.isinf(off.deviation)


def test_nan_on_both_sides_agrees_on_one_side_disagrees() -> None:
    old = np.array([1.0, np.nan], np.float32)
    assert not compare_output(old, old.copy(), DEFAULT).disagreed
    assert compare_output(old, np.array([1.0, 2.0], np.float32), DEFAULT).disagreed


def test_labels_and_strings_are_compared_exactly() -> None:
    labels = np.array([0, 1, 2, 1], np.int64)
    result = compare_output(labels, np.array([0, 1, 1, 1], np.int64), DEFAULT)
    assert (result.kind, result.disagreed, result.deviation) == ("exact", True, 0.25)
    words = np.array([b"cat", b"dog"], dtype=object)
    same = compare_output(words, np.array(["cat", "dog"], dtype=object), DEFAULT)
    assert (same.kind, same.disagreed) == ("exact", False)  # bytes and str of one text


def test_probabilities_are_compared_by_top1() -> None:
    old = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    assert is_probabilities(old)
    assert not is_probabilities(old * 3)
    calibrated = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]], np.float32)
    kept = compare_output(old, calibrated, DEFAULT)
    assert (kept.kind, kept.disagreed, kept.top1_agreement) == ("top1", False, 1.0)
    one_row = np.array([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]], np.float32)  # row 0 now class 2
    flipped = compare_output(old, one_row, DEFAULT)
    assert flipped.disagreed
    assert flipped.deviation == 0.5
    assert flipped.top1_agreement == 0.5
    # Asked for numeric, the same calibration change is a disagreement.
    assert compare_output(old, calibrated, Tolerance(compare="numeric")).disagreed


def test_shape_mismatch_and_missing_output_disagree() -> None:
    old = {"y": np.zeros((1, 3), np.float32), "label": np.zeros(1, np.int64)}
    results = compare_outputs(old, {"y": np.zeros((1, 4), np.float32)}, Tolerances())
    assert results["y"].disagreed
    assert results["y"].reason == "shape [1, 3] vs [1, 4]"
    assert results["label"].disagreed
    assert results["label"].reason == "missing from the new model's answer"


def test_tally_passes_within_max_disagreement() -> None:
    tally = Tally()
    old = np.array([1, 2], np.int64)
    for new in ([1, 2], [1, 2], [1, 2], [0, 2]):
        tally.add(compare_output(old, np.array(new, np.int64), DEFAULT))
    assert (tally.compared, tally.disagreed, tally.agreement) == (4, 1, 0.75)
    assert not tally.passes(DEFAULT)
    assert tally.passes(Tolerance(max_disagreement=0.25))
    assert not Tally().passes(Tolerance(max_disagreement=1.0))  # nothing compared: no verdict
    assert sum(tally.buckets) == 4


def test_tolerances_round_trip_and_refuse_junk() -> None:
    tolerances = Tolerances(Tolerance(relative=0.05),
                            {"probabilities": Tolerance("top1", max_disagreement=0.01)})
    assert Tolerances.from_json(tolerances.to_json()) == tolerances
    for text, words in (("[]", "expected {"), ('{"default": {"relative": -1}}', "relative"),
                        ('{"default": {"compare": "fuzzy"}}', "compare"),
                        ('{"outputs": {"y": {"max_disagreement": 2}}}', "outputs.y"),
                        ('{"default": {"tolerance": 1}}', "keys"), ("{", "not JSON")):
        with pytest.raises(ToleranceError, match=words):
            Tolerances.from_json(text)
