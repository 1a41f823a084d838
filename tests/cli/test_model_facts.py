"""The model facts mlship.yaml records: `init --refresh` brings them up to date keeping every
other byte of the user's file, and a memory limit below inspect's estimate is warned about at
render and at deploy."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import yaml
from mlship_contract import check_success, mlship
from mlship_rollout import faulty_model


def _init(tmp_path: Path, iris_model: Path) -> Path:
    shutil.copyfile(iris_model, tmp_path / "model.onnx")
    made = mlship("init", "model.onnx", "--no-load", cwd=tmp_path)
    assert made.code == 0, made
    return tmp_path / "mlship.yaml"


def test_refresh_updates_only_the_recorded_facts(tmp_path, iris_model):
    config = _init(tmp_path, iris_model)
    # The user's edits: a comment of their own, a value changed, a key quoted their way.
    edited = config.read_text().replace("replicas: 2", "replicas: 3  # peak traffic, ask ops")
    edited = edited.replace('  version: "1"', "  version: '7'  # bumped by hand")
    config.write_text(edited)
    faulty_model(tmp_path / "model.onnx")  # retrained: same inputs, new weights
    warned = mlship("render", "-o", "out", cwd=tmp_path)
    assert warned.code == 0, warned
    assert "changed since init" in warned.stderr

    refreshed = mlship("init", "--refresh", "--no-load", "--json", cwd=tmp_path)
    assert refreshed.code == 0, refreshed
    changed = check_success(("init",), refreshed.stdout)["refreshed"]
    assert set(changed) == {"sha256", "size_bytes"}
    after = config.read_text()
    lines = [line for line in difflib.unified_diff(edited.splitlines(), after.splitlines(),
                                                     lineterm="", n=0)
             if line[:1] in "+-" and not line.startswith(("---", "+++"))]
    assert len(lines) == 4, lines  # the two values, before and after; nothing else moved
    assert all(line.lstrip("+-").startswith(("  sha256: ", "  size_bytes: ")) for line in lines)
    raw = yaml.safe_load(after)
    assert raw["model"]["sha256"] == changed["sha256"]["to"]
    assert raw["model"]["size_bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert raw["replicas"] == 3
    assert raw["model"]["version"] == "7"
    assert "# peak traffic, ask ops" in after
    assert "# bumped by hand" in after

    quiet = mlship("render", "-o", "out", cwd=tmp_path)
    assert quiet.code == 0, quiet
    assert "changed since init" not in quiet.stderr
    again = mlship("init", "--refresh", "--no-load", cwd=tmp_path)
    assert again.code == 0, again
    assert "nothing to change" in again.stderr
    assert config.read_text() == after


def test_refresh_puts_back_a_fact_the_user_removed(tmp_path, iris_model):
    config = _init(tmp_path, iris_model)
    text = "".join(line for line in config.read_text().splitlines(keepends=True)
                   if not line.startswith("  sha256: "))
    config.write_text(text)
    done = mlship("init", "--refresh", "--no-load", cwd=tmp_path)
    assert done.code == 0, done
    assert "model.sha256 unset -> " in done.stderr
    model = yaml.safe_load(config.read_text())["model"]
    assert model["sha256"]
    assert model["source"] == "model.onnx"


def test_refresh_refusals(tmp_path, iris_model):
    absent = mlship("init", "--refresh", cwd=tmp_path)
    assert absent.code == 2, absent
    assert "no such file: nothing to refresh" in absent.stderr
    _init(tmp_path, iris_model)
    mixed = mlship("init", "model.onnx", "--refresh", cwd=tmp_path)
    assert mixed.code == 2, mixed
    assert "--refresh takes the model from mlship.yaml" in mixed.stderr


def test_a_memory_limit_below_the_estimate_is_warned_about(tmp_path, iris_model):
    config = _init(tmp_path, iris_model)
    raw = yaml.safe_load(config.read_text())
    raw["resources"] = {"requests": {"cpu": "100m", "memory": "16Mi"},
                        "limits": {"cpu": "1", "memory": "32Mi"}}
    config.write_text(yaml.safe_dump(raw))
    warning = "resources.limits.memory 32Mi is below the "
    rendered = mlship("render", "-o", "out", cwd=tmp_path)
    assert rendered.code == 0, rendered
    assert warning in rendered.stderr
    assert "the model needs to load and run by inspect's estimate" in rendered.stderr
    planned = mlship("deploy", "--dry-run", "client", cwd=tmp_path)
    assert planned.code == 0, planned
    assert warning in planned.stderr
    raw["resources"]["limits"]["memory"] = "512Mi"
    config.write_text(yaml.safe_dump(raw))
    fine = mlship("render", "-o", "out", cwd=tmp_path)
    assert fine.code == 0, fine
    assert "resources.limits.memory" not in fine.stderr
