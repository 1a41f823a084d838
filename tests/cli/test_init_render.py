"""`mlship init`, `mlship render`, `mlship schema` through the real CLI: exit codes and the
exact stderr line for each configuration mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlship.cli import app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def project(tmp_path: Path, iris_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding the model, as a user would start."""
    (tmp_path / "iris.onnx").write_bytes(iris_model.read_bytes())
    monkeypatch.chdir(tmp_path)
    for variable in [v for v in __import__("os").environ if v.startswith("MLSHIP_")]:
        monkeypatch.delenv(variable)
    return tmp_path


def test_init_writes_a_valid_commented_config(runner: CliRunner, project: Path,
                                              iris_signature) -> None:
    result = runner.invoke(app, ["init", "iris.onnx"])
    assert result.exit_code == 0, result.stderr
    text = (project / "mlship.yaml").read_text()
    assert text.startswith("# mlship.yaml")
    raw = yaml.safe_load(text)
    assert raw["name"] == "iris"
    assert raw["model"]["source"] == "iris.onnx"
    assert raw["model"]["sha256"] == iris_signature.sha256
    assert raw["model"]["size_bytes"] == iris_signature.total_bytes
    assert raw["runtime"]["batching"]["enabled"] is True  # the model has a dynamic batch
    assert raw["resources"]["requests"]["memory"].endswith("Mi")


def test_init_defaults_match_the_config_model(runner: CliRunner, project: Path) -> None:
    """Sections init writes must equal the model's defaults, or init silently changes them."""
    from mlship.config.load import validate_config

    runner.invoke(app, ["init", "iris.onnx"])
    written = validate_config(yaml.safe_load((project / "mlship.yaml").read_text()))
    defaults = validate_config({"name": "iris", "model": {"source": "iris.onnx"}})
    for section in ("image", "autoscaling", "gpu", "probes", "namespace", "service",
                    "network_policy", "disruption_budget", "topology_spread", "monitoring",
                    "batch", "env"):
        assert getattr(written, section) == getattr(defaults, section), section
    assert written.runtime.model_copy(update={"batching": defaults.runtime.batching}) == \
        defaults.runtime


def test_init_refuses_to_overwrite_without_force(runner: CliRunner, project: Path) -> None:
    (project / "mlship.yaml").write_text("keep me\n")
    result = runner.invoke(app, ["init", "iris.onnx"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == "error: mlship.yaml: already exists; not overwritten"
    assert (project / "mlship.yaml").read_text() == "keep me\n"
    assert runner.invoke(app, ["init", "iris.onnx", "--force"]).exit_code == 0
    assert (project / "mlship.yaml").read_text() != "keep me\n"


def test_init_names_from_model_as_dns_label(runner: CliRunner, project: Path) -> None:
    (project / "My_Model.v2.onnx").write_bytes((project / "iris.onnx").read_bytes())
    assert runner.invoke(app, ["init", "My_Model.v2.onnx"]).exit_code == 0
    assert yaml.safe_load((project / "mlship.yaml").read_text())["name"] == "my-model-v2"


def test_init_without_a_model_uses_the_only_one_in_the_folder(runner: CliRunner,
                                                              project: Path) -> None:
    empty = runner.invoke(app, ["init", "--config", "sub/mlship.yaml", "--name", "later"])
    assert empty.exit_code == 2
    assert "no .onnx file in" in empty.stderr
    assert "Traceback" not in empty.stderr
    assert not (project / "sub" / "mlship.yaml").exists()
    (project / "sub").mkdir(exist_ok=True)
    (project / "sub" / "only.onnx").write_bytes((project / "iris.onnx").read_bytes())
    result = runner.invoke(app, ["init", "--config", "sub/mlship.yaml", "--name", "later"])
    assert result.exit_code == 0, result.stderr
    written = yaml.safe_load((project / "sub" / "mlship.yaml").read_text())
    assert written["name"] == "later"
    assert written["model"]["source"].endswith("only.onnx")
    (project / "sub" / "other.onnx").write_bytes((project / "iris.onnx").read_bytes())
    two = runner.invoke(app, ["init", "--config", "sub/mlship.yaml", "--force"])
    assert two.exit_code == 2
    assert "only.onnx, other.onnx" in two.stderr


def test_render_writes_bundle_and_json_summary(runner: CliRunner, project: Path) -> None:
    runner.invoke(app, ["init", "iris.onnx"])
    result = runner.invoke(app, ["render", "--out", "out", "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "mlship.render/v1"
    assert "k8s/deployment.yaml" in document["files"]
    assert (project / "out" / "Dockerfile").is_file()
    kserve = runner.invoke(app, ["render", "--out", "ks", "--target", "kserve"])
    assert kserve.exit_code == 0, kserve.stderr
    assert (project / "ks" / "k8s" / "inferenceservice.yaml").is_file()


def test_render_and_client_dry_run_warn_of_an_image_no_node_can_pull(
        runner: CliRunner, project: Path) -> None:
    runner.invoke(app, ["init", "iris.onnx"])  # init leaves image.registry unset
    for argv in (["render", "--out", "out"], ["deploy", "--dry-run", "client"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.stderr
        assert "warning: image.registry is unset" in " ".join(result.stderr.split()), argv
    text = (project / "mlship.yaml").read_text().replace("  # registry: ghcr.io/acme",
                                                         "  registry: 127.0.0.1:5000 #")
    (project / "mlship.yaml").write_text(text)
    pushed = runner.invoke(app, ["deploy", "--dry-run", "client"])
    assert pushed.exit_code == 0, pushed.stderr
    assert "image.registry" not in pushed.stderr
    assert "imagePullPolicy: Always" in pushed.stdout


MISTAKES = [
    ("replicas: 2", "replica: 2",
     "mlship.yaml: replica: unknown key; did you mean 'replicas'? (line 11)"),
    ("replicas: 2", "replicas: two",
     "mlship.yaml: replicas: 'two' is invalid: must be an integer (line 11)"),
    ("replicas: 2", "replicas: -1",
     "mlship.yaml: replicas: -1 is invalid: must be >= 0 (line 11)"),
    ("    memory: 1Gi", "    memory: 128Mi",
     "mlship.yaml: resources.limits.memory: '128Mi' is invalid: must be >= requests.memory "
     "(512Mi) (line 10)"),
    ("gpu: {enabled: false}", "gpu: {enabled: true}\nimage: {base: 'debian:bookworm-slim'}",
     "mlship.yaml: image.base: 'debian:bookworm-slim' is invalid: a CPU-only image cannot run "
     "gpu.enabled: true; use an Ubuntu 24.04 nvidia/cuda runtime image with CUDA 12.x + cuDNN 9 "
     "(e.g. nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04) (line 13)"),
    ("gpu: {enabled: false}", "image: {base: 'registry.example.com/Team/App:v1'}",
     "mlship.yaml: image.base: 'registry.example.com/Team/App:v1' is invalid: must be an image "
     "reference such as registry.example.com/team/name:tag (line 12)"),
    ("name: iris", "name: Iris_Model",
     "mlship.yaml: name: 'Iris_Model' is invalid: must be a DNS-1123 label: lowercase letters, "
     "digits and '-', starting with a letter, at most 63 characters (line 1)"),
    ("source: iris.onnx", "source: s3:///iris.onnx",
     "mlship.yaml: model.source: 's3:///iris.onnx' is invalid: an s3:// URI needs a bucket: "
     "s3://BUCKET/KEY (line 3)"),
    ("replicas: 2", "replicas: [2",
     "mlship.yaml: line 12, column 4: invalid YAML: expected ',' or ']', but got ':'"),
]
BASE_CONFIG = """name: iris
model:
  source: iris.onnx
resources:
  requests:
    cpu: 250m
    memory: 512Mi
  limits:
    cpu: "2"
    memory: 1Gi
replicas: 2
gpu: {enabled: false}
"""


@pytest.mark.parametrize(("old", "new", "line"), MISTAKES,
                         ids=["unknown-key", "wrong-type", "negative-replicas",
                              "limit-below-request", "gpu-cpu-base", "bad-image-ref",
                              "not-dns-1123", "s3-no-bucket", "yaml-syntax"])
def test_config_mistakes_exit_2_with_one_line(runner: CliRunner, project: Path, old: str,
                                              new: str, line: str) -> None:
    assert old in BASE_CONFIG
    (project / "mlship.yaml").write_text(BASE_CONFIG.replace(old, new, 1))
    result = runner.invoke(app, ["render", "--out", "out"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {line}"]
    assert not (project / "out").exists()


def test_config_error_under_json_is_a_json_document(runner: CliRunner, project: Path) -> None:
    (project / "mlship.yaml").write_text(BASE_CONFIG.replace("replicas: 2", "replicas: -1"))
    result = runner.invoke(app, ["render", "--json"])
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["error"]["type"] == "ConfigError"
    assert document["error"]["exit_code"] == 2


def test_env_override_reaches_render(runner: CliRunner, project: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    runner.invoke(app, ["init", "iris.onnx"])
    monkeypatch.setenv("MLSHIP_REPLICAS", "7")
    assert runner.invoke(app, ["render", "--out", "out"]).exit_code == 0
    deployment = yaml.safe_load((project / "out" / "k8s" / "deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 7


def test_render_without_config_says_how_to_make_one(runner: CliRunner, project: Path) -> None:
    result = runner.invoke(app, ["render"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: mlship.yaml: no such file",
        "  hint: run `mlship init MODEL` to write one, or pass --config"]


def test_render_with_missing_model_file(runner: CliRunner, project: Path) -> None:
    (project / "mlship.yaml").write_text(BASE_CONFIG.replace("iris.onnx", "gone.onnx"))
    result = runner.invoke(app, ["render"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0].startswith(
        "error: mlship.yaml: model.source: 'gone.onnx' is invalid: no such file")


def test_schema_command_prints_the_published_schema(runner: CliRunner) -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == (REPO / "docs" / "mlship.schema.json").read_text()


def test_help_does_not_import_heavy_libraries() -> None:
    code = ("import sys; from mlship.cli import app; "
            "heavy = [m for m in ('jinja2', 'yaml', 'pydantic', 'onnx') if m in sys.modules]; "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=REPO)
    assert result.stdout.strip() == ""


def test_init_turns_batching_off_for_a_fixed_batch_model(runner: CliRunner, project: Path,
                                                         fixed_batch_model: Path) -> None:
    assert runner.invoke(app, ["init", str(fixed_batch_model)]).exit_code == 0
    raw = yaml.safe_load((project / "mlship.yaml").read_text())
    assert raw["runtime"]["batching"]["enabled"] is False
    assert Path(raw["model"]["source"]).name == "fixed.onnx"


def test_init_sizes_memory_from_the_estimate(project: Path, iris_signature) -> None:
    import dataclasses

    from mlship.render.init import init_text

    big = dataclasses.replace(iris_signature, memory_estimate_bytes=1000 * 2**20)
    raw = yaml.safe_load(init_text(project / "mlship.yaml", project / "iris.onnx", big))
    # 1000 MiB + 25 % = 1250 MiB, rounded up to a 64 MiB step; the limit doubles it.
    assert raw["resources"]["requests"]["memory"] == "1280Mi"
    assert raw["resources"]["limits"]["memory"] == "2560Mi"


def test_render_refuses_a_runtime_setting_the_pod_would_refuse(project: Path) -> None:
    """The runtime bounds max_queue_delay_ms to 0..1000: render stops at the edge (exit 2), so
    no pod is ever rolled out to exit 2 at start."""
    from mlship_contract import mlship

    (project / "mlship.yaml").write_text(
        "name: iris\nmodel:\n  source: iris.onnx\nruntime:\n  batching:\n"
        "    max_queue_delay_ms: 5000\n", encoding="utf-8")
    run = mlship("render", cwd=project)
    assert run.code == 2, run
    assert run.stderr.splitlines()[0] == (
        "error: mlship.yaml: runtime.batching.max_queue_delay_ms: 5000 is invalid: must be "
        "<= 1000 (line 6)")
    assert not (project / "mlship-out").exists()
