"""`mlship baseline` and drift rendering: statistics, sample formats, errors, config, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from jsonschema import Draft202012Validator
from mlship_testsupport import make_model
from typer.testing import CliRunner

from mlship.cli import app
from mlship.cli.contract import load_schema
from mlship.config.load import load_config, validate_config
from mlship.errors import BadInputError, ConfigError
from mlship.model.baseline import compute_baseline, model_inputs, read_samples
from mlship.render.bundle import render

XSPEC = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
runner = CliRunner()


def normal_rows(rows=2000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal([5.8, 3.0, 3.7, 1.2], [0.8, 0.4, 1.7, 0.7],
                      size=(rows, 4)).astype(np.float32)


# ---- statistics -------------------------------------------------------------------------------


def test_statistics_per_feature_match_numpy():
    x = normal_rows()
    document, warnings = compute_baseline({"x": x}, metadata=XSPEC, sources=["s.npz"])
    assert warnings == []
    (entry,) = document["inputs"]
    assert (entry["name"], entry["rank"], entry["axis"], entry["features_total"],
            entry["rows"], entry["shape"]) == ("x", 2, 1, 4, 2000, [-1, 4])
    for index, feature in enumerate(entry["features"]):
        column = x[:, index].astype(np.float64)
        assert feature["index"] == index
        assert feature["count"] == 2000
        assert feature["mean"] == pytest.approx(column.mean())
        assert feature["std"] == pytest.approx(column.std(ddof=1))
        assert feature["low"] == pytest.approx(np.quantile(column, 0.005))
        assert feature["high"] == pytest.approx(np.quantile(column, 0.995))
        assert feature["min"] <= feature["low"] < feature["mean"] < feature["high"] <= \
            feature["max"]
    assert document["schema"] == "mlship.baseline/v1"


def test_feature_cap_rank_one_and_rank_three():
    rng = np.random.default_rng(1)
    document, warnings = compute_baseline(
        {"wide": rng.normal(size=(300, 100)), "idx": np.arange(300),
         "img": rng.normal(size=(300, 3, 2, 2))}, max_features=64, feature_axis=-1)
    by_name = {entry["name"]: entry for entry in document["inputs"]}
    assert len(by_name["wide"]["features"]) == 64
    assert by_name["wide"]["features_total"] == 100
    assert "input 'wide' has 100 features: only the first 64 are monitored (--max-features)" \
        in warnings
    assert by_name["idx"]["axis"] is None
    assert by_name["idx"]["features"][0]["mean"] == pytest.approx(149.5)
    assert by_name["img"]["axis"] == 3  # the last axis by default
    channels, _ = compute_baseline({"img": np.arange(48.0).reshape(4, 3, 2, 2)},
                                   feature_axis=1, tail=0.0)
    (entry,) = channels["inputs"]
    assert entry["axis"] == 1
    assert entry["features_total"] == 3
    # channel 1 of 4 images: values 4..7, 16..19, 28..31, 40..43
    assert entry["features"][1]["mean"] == pytest.approx(23.5)
    assert entry["features"][1]["low"] == 4


def test_non_finite_values_and_non_numeric_inputs():
    x = normal_rows(400)
    x[:10, 1] = np.nan
    x[:, 3] = np.inf
    document, warnings = compute_baseline(
        {"x": x, "s": np.array([["a"]] * 400)},
        metadata=[*XSPEC, {"name": "s", "datatype": "BYTES", "shape": [-1, 1]},
                  {"name": "absent", "datatype": "FP32", "shape": [-1]}])
    features = document["inputs"][0]["features"]
    assert [f["index"] for f in features] == [0, 1, 2]
    assert features[1]["count"] == 390
    assert features[1]["nonfinite"] == 10
    assert np.isfinite(features[1]["mean"])
    assert document["skipped"] == [{"name": "s", "reason": "BYTES values are not numeric"},
                                   {"name": "absent", "reason": "no samples"}]
    assert "input 'x' feature 3 has no finite value: not monitored" in warnings
    assert "input 's' is not monitored: BYTES values are not numeric" in warnings


def test_thin_samples_warn_and_nothing_numeric_fails():
    _, warnings = compute_baseline({"x": normal_rows(50)}, metadata=XSPEC)
    assert any("has 50 rows" in warning for warning in warnings)
    with pytest.raises(BadInputError, match="no numeric input has samples"):
        compute_baseline({"s": np.array(["a", "b"])})


def test_the_document_is_what_the_runtime_reads(iris_signature):
    from mlship_runtime.drift import check_against_model, parse_baseline

    document, _ = compute_baseline({"x": normal_rows()}, metadata=model_inputs(iris_signature))
    inputs = parse_baseline(json.loads(json.dumps(document)), "b.json")
    check_against_model(inputs, model_inputs(iris_signature), "b.json")
    assert inputs[0].features[2].std == pytest.approx(document["inputs"][0]["features"][2]["std"])


# ---- sample files -----------------------------------------------------------------------------


def test_every_sample_format_concatenates_rows(tmp_path):
    x = normal_rows(6)
    np.savez(tmp_path / "a.npz", x=x[:2])
    np.save(tmp_path / "b.npy", x[2:3])
    (tmp_path / "c.json").write_text(json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x[3].tolist()}]}))
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"x": x[4].tolist()}) + "\n\n" +  # one row per line, no batch axis
        json.dumps({"instances": [x[5].tolist()]}) + "\n")
    samples = read_samples([tmp_path / name for name in ("a.npz", "b.npy", "c.json", "d.jsonl")],
                           XSPEC)
    np.testing.assert_allclose(samples["x"], x)


@pytest.mark.parametrize(("name", "content", "metadata", "message"), [
    ("s.npz", {"x": np.zeros((3, 5))}, XSPEC,
     "{dir}/s.npz: input 'x': expected shape [-1, 4], got [3, 5]"),
    ("s.npz", {"y": np.zeros((3, 4))}, XSPEC,
     "{dir}/s.npz: unknown input 'y'; the model's inputs are: x"),
    ("s.jsonl", '{"x": [1, 2, 3, 4]}\n{"x": [1, 2\n', XSPEC,
     "{dir}/s.jsonl:2: not JSON: Expecting ',' delimiter at column 12"),
    ("s.jsonl", '["x"]\n', XSPEC, "{dir}/s.jsonl:1: expected a JSON object of inputs, got list"),
    ("s.json", '{"x": [["a", "b", "c", "d"]]}', XSPEC,
     "{dir}/s.json: input 'x': the model takes FP32, the samples hold text values"),
    ("s.json", '{"i": [[1.5]]}', [{"name": "i", "datatype": "INT64", "shape": [-1, 1]}],
     "{dir}/s.json: input 'i': the model takes INT64, the samples hold non-integer values"),
    ("s.npy", np.zeros((2, 4)), None,
     "{dir}/s.npy: a .npy file holds one unnamed array; pass --model of a single-input model, "
     "or use .npz with input names"),
    ("s.csv", "x\n1\n", None, "{dir}/s.csv: unsupported sample file type '.csv'"),
])
def test_sample_errors_name_file_and_input(tmp_path, name, content, metadata, message):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, dict):
        np.savez(path, **content)
    else:
        np.save(path, content)
    with pytest.raises(BadInputError) as info:
        read_samples([path], metadata)
    assert info.value.message == message.format(dir=tmp_path)


def test_files_with_different_row_shapes_are_refused(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 4)))
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 5)))
    with pytest.raises(BadInputError) as info:
        read_samples([tmp_path / "a.npz", tmp_path / "b.npz"], None)
    assert info.value.message == (f"{tmp_path}/b.npz: input 'x' has rows of shape [5], "
                                  f"{tmp_path}/a.npz had [4]")


# ---- the command ------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, iris_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "iris.onnx").write_bytes(iris_model.read_bytes())
    np.savez(tmp_path / "samples.npz", x=normal_rows())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_command_writes_the_document_and_prints_json(project, iris_signature):
    result = runner.invoke(app, ["baseline", "-i", "samples.npz", "-m", "iris.onnx",
                                 "-o", "drift/baseline.json", "--json"])
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    Draft202012Validator(load_schema("baseline")).validate(printed)
    written = json.loads((project / "drift" / "baseline.json").read_text())
    assert printed == {**written, "ok": True, "out": "drift/baseline.json"}
    assert written["model"] == {"name": "iris", "sha256": iris_signature.sha256}
    assert written["sources"] == ["samples.npz"]


def test_command_table_and_errors(project):
    result = runner.invoke(app, ["baseline", "-i", "samples.npz"])
    assert result.exit_code == 0, result.stderr
    assert "drift baseline" in result.stdout
    assert "wrote baseline.json: 1 input(s), 4 feature(s)" in result.stderr
    np.savez(project / "wide.npz", x=np.zeros((5, 5), dtype=np.float32))
    result = runner.invoke(app, ["baseline", "-i", "wide.npz", "-m", "iris.onnx"])
    assert result.exit_code == 2
    assert result.stderr == "error: wide.npz: input 'x': expected shape [-1, 4], got [5, 5]\n"
    result = runner.invoke(app, ["baseline", "-i", "samples.npz", "--max-features", "0"])
    assert result.exit_code == 2
    assert result.stderr == "error: --max-features: 0 is invalid: must be >= 1\n"


# ---- config and render ------------------------------------------------------------------------


def drift_config(tmp_path: Path, baseline: str | None = "baseline.json", **drift) -> Path:
    config = {"name": "iris", "model": {"source": "iris.onnx"},
              "drift": {"enabled": True, **({"baseline": baseline} if baseline else {}),
                        **drift}}
    path = tmp_path / "mlship.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_defaults_and_mistakes():
    drift = validate_config({"name": "a", "model": {"source": "m.onnx"}}).drift
    assert (drift.enabled, drift.window, drift.for_duration, drift.mean_shift_std,
            drift.out_of_range_share, drift.min_values) == (False, "15m", "15m", 1.0, 0.05, 100)
    for key, value in (("window", "0s"), ("window", "15 minutes"), ("out_of_range_share", 2)):
        with pytest.raises(ConfigError) as info:
            validate_config({"name": "a", "model": {"source": "m.onnx"},
                             "drift": {key: value}})
        assert f"drift.{key}" in info.value.message


def test_render_ships_the_baseline_and_alerts(project, iris_signature):
    runner.invoke(app, ["baseline", "-i", "samples.npz", "-m", "iris.onnx"])
    config = load_config(drift_config(project, window="5m", min_values=20), environ={})
    assert config.drift.baseline == str(project / "baseline.json")  # relative to mlship.yaml
    bundle = render(config, iris_signature)
    configmap = yaml.safe_load(bundle.files["k8s/drift-baseline.yaml"])
    shipped = json.loads(configmap["data"]["baseline.json"])
    assert shipped == json.loads((project / "baseline.json").read_text())
    name = configmap["metadata"]["name"]
    assert name.startswith("iris-drift-")
    assert configmap["immutable"] is True
    pod = yaml.safe_load(bundle.files["k8s/deployment.yaml"])["spec"]["template"]["spec"]
    assert {"name": "drift-baseline", "configMap": {"name": name, "defaultMode": 0o444}} in \
        pod["volumes"]
    assert {"name": "drift-baseline", "mountPath": "/etc/mlship/drift", "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]
    env = yaml.safe_load(bundle.files["k8s/configmap.yaml"])["data"]
    assert env["MLSHIP_RUNTIME_BASELINE"] == "/etc/mlship/drift/baseline.json"
    assert "drift-baseline.yaml" in bundle.files["k8s/kustomization.yaml"]
    groups = yaml.safe_load(bundle.files["k8s/prometheusrule.yaml"])["spec"]["groups"]
    assert [group["name"] for group in groups] == ["iris.drift.rules"]  # no prometheus_rule
    rules = {rule["alert"]: rule for rule in groups[0]["rules"]}
    assert set(rules) == {"MlshipInputDrift", "MlshipInputOutOfRange"}
    for rule in rules.values():
        assert "[5m]" in rule["expr"]
        assert rule["expr"].endswith(">= 20")
        assert rule["for"] == "15m"
    # A new baseline is a new ConfigMap: the pod template changes, so pods roll.
    (project / "baseline.json").write_text((project / "baseline.json").read_text()
                                           .replace('"max_features": 64', '"max_features": 63'))
    again = render(config, iris_signature)
    assert yaml.safe_load(again.files["k8s/drift-baseline.yaml"])["metadata"]["name"] != name


def test_render_without_drift_is_unchanged(iris_signature):
    config = validate_config({"name": "iris", "model": {"source": "iris.onnx"},
                              "monitoring": {"prometheus_rule": True}})
    bundle = render(config, iris_signature)
    assert "k8s/drift-baseline.yaml" not in bundle.files
    assert "MLSHIP_RUNTIME_BASELINE" not in bundle.files["k8s/configmap.yaml"]
    groups = yaml.safe_load(bundle.files["k8s/prometheusrule.yaml"])["spec"]["groups"]
    assert [group["name"] for group in groups] == ["iris.rules"]


def test_render_errors_name_the_key(project, iris_signature, tmp_path):
    config = load_config(drift_config(project, baseline="absent.json"), environ={})
    with pytest.raises(ConfigError) as info:
        render(config, iris_signature)
    assert info.value.message == f"drift.baseline: no such file ({project / 'absent.json'})"
    other = make_model(tmp_path / "wide" / "wide.onnx", features=5)
    np.savez(project / "wide.npz", x=np.zeros((300, 5), dtype=np.float32))
    runner.invoke(app, ["baseline", "-i", "wide.npz", "-m", str(other), "-o", "wide.json"])
    config = load_config(drift_config(project, baseline="wide.json"), environ={})
    with pytest.raises(ConfigError) as info:
        render(config, iris_signature)
    assert info.value.message == (
        f"drift.baseline: {project / 'wide.json'}: input 'x': the baseline has 5 features on "
        "axis 1, the model's input has shape [-1, 4]")
