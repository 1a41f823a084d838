"""Drift accounting: the baseline format, per-feature counters, a real server with --baseline."""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest
from mlship_runtime import codec
from mlship_runtime.drift import (
    BaselineError,
    DriftMonitor,
    check_against_model,
    parse_baseline,
    read_baseline,
)

TINY = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
LABELS = [("model", "tiny")]


def feature(index, mean=0.0, std=1.0, low=-2.0, high=2.0):
    return {"index": index, "mean": mean, "std": std, "low": low, "high": high}


def entry(name="x", rank=2, axis=1, total=4, features=None):
    features = features if features is not None else [feature(i) for i in range(total)]
    return {"name": name, "rank": rank, "axis": axis, "features_total": total,
            "features": features}


def document(*entries):
    return {"schema": "mlship.baseline/v1", "inputs": list(entries) or [entry()]}


def samples(text):
    """{(family, labels without model): value} from an exposition text."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^(mlship_input_\w+)\{([^}]*)\} (\S+)$", line)
        if match:
            labels = tuple(part for part in match.group(2).split(",")
                           if not part.startswith("model="))
            found[(match.group(1), labels)] = float(match.group(3))
    return found


def counter(found, family, feature_index, input_name="x", direction=None):
    labels = (f'input="{input_name}"', f'feature="{feature_index}"')
    if direction:
        labels += (f'direction="{direction}"',)
    return found[(family, labels)]


# ---- the document ---------------------------------------------------------------------------


def test_parse_a_valid_document():
    inputs = parse_baseline(document(entry(), entry("idx", rank=1, axis=None, total=1,
                                                    features=[feature(0)])), "b.json")
    assert [item.name for item in inputs] == ["x", "idx"]
    assert inputs[0].features[3].index == 3
    assert inputs[1].axis is None


@pytest.mark.parametrize(("doc", "message"), [
    ([], "expected a baseline document with schema 'mlship.baseline/v1', got 'list'"),
    ({"schema": "mlship.baseline/v2", "inputs": []}, "got 'mlship.baseline/v2'"),
    ({"schema": "mlship.baseline/v1", "inputs": []}, "'inputs' must be a non-empty list"),
    (document(entry(axis=0)), "inputs[0] ('x'): 'axis' must be an integer in 1..1, got 0"),
    (document(entry(rank=1, axis=1)), "a rank-1 input has one feature and no 'axis'"),
    (document(entry(features=[feature(4)])), "features[0]: index 4 is outside the 4 features"),
    (document(entry(features=[feature(1), feature(0)])), "unique and ascending"),
    (document(entry(features=[feature(0, std=-1.0)])), "needs std >= 0 and low <= high"),
    (document(entry(features=[{**feature(0), "mean": "NaN"}])),
     "'mean' must be a finite number, got 'NaN'"),
    (document(entry(), entry()), "input 'x' is listed twice"),
    (document(entry(total=True)), "'features_total' must be an integer >= 1, got True"),
])
def test_parse_errors_name_the_place(doc, message):
    with pytest.raises(BaselineError) as info:
        parse_baseline(doc, "b.json")
    assert str(info.value).startswith("b.json: ")
    assert message in str(info.value)


def test_read_errors_are_one_line(tmp_path):
    with pytest.raises(BaselineError, match=r"missing.json: cannot read: No such file"):
        read_baseline(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BaselineError, match=r"bad.json: not JSON"):
        read_baseline(bad)


@pytest.mark.parametrize(("doc", "metadata", "message"), [
    (document(entry("y")), TINY, "input 'y' is not an input of the model (its inputs: x)"),
    (document(entry(total=5, features=[feature(0)])), TINY,
     "the baseline has 5 features on axis 1, the model's input has shape [-1, 4]"),
    (document(entry(rank=3, axis=2)), TINY, "the baseline has rank 3"),
    (document(entry("text", total=1, features=[feature(0)])),
     [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}], "is BYTES, not numeric"),
])
def test_check_against_model(doc, metadata, message):
    with pytest.raises(BaselineError, match=re.escape(message)):
        check_against_model(parse_baseline(doc, "b.json"), metadata, "b.json")


def test_dynamic_feature_axis_fits_any_length():
    wide = [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]
    check_against_model(parse_baseline(document(entry(total=7, features=[feature(0)])),
                                       "b.json"), wide, "b.json")


# ---- accounting -----------------------------------------------------------------------------


def monitor(*entries):
    return DriftMonitor(LABELS, parse_baseline(document(*entries), "b.json"))


def test_counters_match_numpy():
    drift = monitor()
    rng = np.random.default_rng(1)
    batches = [rng.normal(0, 1.5, size=(rows, 4)).astype(np.float32) for rows in (1, 7, 32)]
    for batch in batches:
        drift.observe({"x": batch})
    everything = np.concatenate(batches).astype(np.float64)
    found = samples("\n".join(drift.render()))
    for i in range(4):
        column = everything[:, i]
        assert counter(found, "mlship_input_feature_count_total", i) == 40
        assert counter(found, "mlship_input_feature_sum_total", i) == pytest.approx(column.sum())
        assert counter(found, "mlship_input_feature_sum_squares_total", i) == \
            pytest.approx((column ** 2).sum())
        assert counter(found, "mlship_input_out_of_range_total", i, direction="low") == \
            (column < -2).sum()
        assert counter(found, "mlship_input_out_of_range_total", i, direction="high") == \
            (column > 2).sum()
        assert counter(found, "mlship_input_baseline_std", i) == 1
    # The data has values beyond +-2 std: the test would not notice a range count stuck at 0.
    assert sum(found[key] for key in found if key[0] == "mlship_input_out_of_range_total") > 0


def test_non_finite_values_are_counted_not_summed():
    # low 0.5: a left-out value replaced by 0 must not count as below the range either
    drift = monitor(entry(features=[feature(0)] + [feature(i, low=0.5, high=5.0)
                                                   for i in (1, 2, 3)]))
    drift.observe({"x": np.array([[1.0, np.nan, np.inf, -1e200],
                                  [3.0, 1.0, 1.0, 1.0]], dtype=np.float64)})
    found = samples("\n".join(drift.render()))
    assert counter(found, "mlship_input_feature_count_total", 0) == 2
    assert counter(found, "mlship_input_feature_sum_total", 0) == 4
    assert counter(found, "mlship_input_out_of_range_total", 0, direction="high") == 1
    for i in (1, 2, 3):  # NaN, inf and a value whose square overflows
        assert counter(found, "mlship_input_feature_nonfinite_total", i) == 1
        assert counter(found, "mlship_input_feature_count_total", i) == 1
        assert counter(found, "mlship_input_feature_sum_total", i) == 1
        assert counter(found, "mlship_input_feature_sum_squares_total", i) == 1
        # a left-out value is not out of range as well
        assert counter(found, "mlship_input_out_of_range_total", i, direction="low") == 0
    # A later clean request is summed normally: the counters did not turn into NaN.
    drift.observe({"x": np.ones((1, 4))})
    assert counter(samples("\n".join(drift.render())), "mlship_input_feature_sum_total", 1) == 2


def test_rank_one_rank_three_subsets_and_integers():
    drift = monitor(entry("idx", rank=1, axis=None, total=1, features=[feature(0)]),
                    entry("img", rank=3, axis=1, total=3, features=[feature(0), feature(2)]))
    image = np.arange(2 * 3 * 5, dtype=np.int64).reshape(2, 3, 5)  # channels on axis 1
    drift.observe({"idx": np.array([1, 2, 3], dtype=np.int64), "img": image})
    found = samples("\n".join(drift.render()))
    assert counter(found, "mlship_input_feature_sum_total", 0, "idx") == 6
    assert counter(found, "mlship_input_feature_count_total", 0, "img") == 10
    assert counter(found, "mlship_input_feature_sum_total", 0, "img") == image[:, 0].sum()
    assert counter(found, "mlship_input_feature_sum_total", 2, "img") == image[:, 2].sum()
    assert ("mlship_input_feature_sum_total", ('input="img"', 'feature="1"')) not in found


def test_unlisted_inputs_empty_batches_and_other_widths_are_ignored(caplog):
    drift = monitor(entry(total=4))
    drift.observe({"other": np.ones((2, 4)), "x": np.zeros((0, 4), dtype=np.float32)})
    drift.observe({"x": np.ones((2, 5), dtype=np.float32)})  # a dynamic axis of another width
    drift.observe({"x": np.ones((2, 5), dtype=np.float32)})
    found = samples("\n".join(drift.render()))
    assert counter(found, "mlship_input_feature_count_total", 0) == 0
    assert caplog.text.count("has 5 features on axis 1, the baseline 4") == 1


def test_exposition_groups_families_and_carries_constant_labels():
    drift = DriftMonitor([("model", "m"), ("track", "canary")],
                         parse_baseline(document(entry(), entry("y", total=2,
                                                                features=[feature(0)])), "b"))
    lines = drift.render()
    names = [line.split("{")[0] for line in lines if not line.startswith("#")]
    # each family's samples are contiguous, as the text format requires
    assert names == sorted(names, key=names.index)
    assert len(names) == drift.series == 8 * 5
    assert 'mlship_input_baseline_mean{model="m",track="canary",input="y",feature="0"} 0' in lines


# ---- a real server ---------------------------------------------------------------------------


def write(tmp_path, doc, name="baseline.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def infer_v2(server, model, inputs, *, binary=False):
    body, headers = codec.encode_request(inputs, binary=binary)
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", content=body,
                          headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response


def test_server_counts_answered_requests(start_server, models, tmp_path):
    baseline = write(tmp_path, document(entry(features=[feature(i, mean=i, std=1.0, low=i - 1,
                                                                high=i + 1) for i in range(4)])))
    server = start_server(models["tiny"], "--baseline", str(baseline))
    server.wait_ready()
    rng = np.random.default_rng(3)
    sent = []
    for binary in (False, True):
        batch = rng.normal(1.5, 2.0, size=(5, 4)).astype(np.float32)
        infer_v2(server, "tiny", {"x": batch}, binary=binary)
        sent.append(batch)
    row = [[0.5, 1.5, 2.5, 3.5]]
    assert httpx.post(server.url + "/predict", json={"instances": row}).status_code == 200
    sent.append(np.asarray(row, dtype=np.float32))
    # rejected requests are not counted
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    response = httpx.post(server.url + "/v2/models/tiny/infer", json=bad)
    assert response.status_code == 400
    assert "expected shape" in response.json()["error"]

    found = samples(httpx.get(server.url + "/metrics").text)
    everything = np.concatenate(sent).astype(np.float64)
    for i in range(4):
        column = everything[:, i]
        assert counter(found, "mlship_input_feature_count_total", i) == 11
        assert counter(found, "mlship_input_feature_sum_total", i) == pytest.approx(column.sum())
        assert counter(found, "mlship_input_feature_sum_squares_total", i) == \
            pytest.approx((column ** 2).sum())
        assert counter(found, "mlship_input_out_of_range_total", i, direction="low") == \
            (column < i - 1).sum()
        assert counter(found, "mlship_input_out_of_range_total", i, direction="high") == \
            (column > i + 1).sum()
        assert counter(found, "mlship_input_baseline_mean", i) == i
    assert server.stop() == 0


def test_env_var_and_mixed_inputs(start_server, models, tmp_path):
    baseline = write(tmp_path, document(entry("ids", total=3, features=[feature(0),
                                                                       feature(1)])))
    server = start_server(models["mixed"], env={"MLSHIP_RUNTIME_BASELINE": str(baseline)})
    server.wait_ready()
    inputs = {"ids": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64),
              "text": np.array([["a"], ["b"]], dtype=object)}
    infer_v2(server, "mixed", inputs)
    found = samples(httpx.get(server.url + "/metrics").text)
    assert counter(found, "mlship_input_feature_sum_total", 0, "ids") == 5
    assert counter(found, "mlship_input_feature_sum_total", 1, "ids") == 7
    assert not [key for key in found if 'input="text"' in key[1]]
    assert server.stop() == 0


def test_without_baseline_there_are_no_drift_series(start_server, models):
    server = start_server(models["tiny"])
    server.wait_ready()
    infer_v2(server, "tiny", {"x": np.ones((2, 4), dtype=np.float32)})
    assert "mlship_input_" not in httpx.get(server.url + "/metrics").text
    assert server.stop() == 0


@pytest.mark.parametrize(("doc", "message"), [
    (document(entry("y")), "input 'y' is not an input of the model (its inputs: x)"),
    ({"schema": "other"}, "expected a baseline document with schema"),
])
def test_a_baseline_that_does_not_fit_exits_2(start_server, models, tmp_path, doc, message):
    baseline = write(tmp_path, doc)
    server = start_server(models["tiny"], "--baseline", str(baseline))
    # Live first, as always; the baseline is checked with the model, then the process ends.
    assert server.proc.wait(30) == 2
    log = server.log()
    assert f"invalid drift baseline: {baseline}: {message}" in log
    assert "Traceback" not in log
