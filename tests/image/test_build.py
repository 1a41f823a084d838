"""`mlship build` / `mlship push` on the real engine and the loopback registries.

One image is built (and pushed, and smoke-tested) per session and shared; the other tests
rebuild from the warm cache or fail before building. Registries: .ci/install-registry.sh
(open on 127.0.0.1:5000, htpasswd on 127.0.0.1:5001).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlship_contract import Run, check_success, mlship
from mlship_testsupport import make_model

BASE_IMAGE = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test/base:bookworm")
REGISTRY = "127.0.0.1:5000"
AUTH_REGISTRY = os.environ.get("MLSHIP_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
AUTH_USER = os.environ.get("MLSHIP_TEST_REGISTRY_USER", "mlship")
AUTH_PASSWORD = os.environ.get("MLSHIP_TEST_REGISTRY_PASSWORD", "mlship-test-password")
REPOSITORY = f"mlship-test/iris-{os.getpid()}"


def write_project(directory: Path, model: Path, **image: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, directory / "model.onnx")
    config = {"name": "iris", "model": {"source": "model.onnx"},
              "image": {"base": BASE_IMAGE, "registry": REGISTRY, "repository": REPOSITORY,
                        **image}}
    (directory / "mlship.yaml").write_text(yaml.safe_dump(config))
    return directory


def docker_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=600)


@pytest.fixture(scope="session")
def base_image() -> str:
    if shutil.which("docker") is None or docker_cli("image", "inspect", BASE_IMAGE,
                                                    check=False).returncode != 0:
        message = f"base image {BASE_IMAGE} missing (.ci/install-docker.sh makes it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return BASE_IMAGE


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, base_image: str,
          iris_model: Path) -> tuple[Path, dict, Run]:
    """build --push --smoke --json, once per session."""
    project = write_project(tmp_path_factory.mktemp("build") / "project", iris_model)
    run = mlship("build", "--push", "--smoke", "--json", cwd=project)
    assert run.code == 0, run.stderr[-4000:]
    yield project, run.json(), run
    for tag in run.json()["tags"]:
        docker_cli("image", "rm", "-f", tag, check=False)


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_build_json_document(built) -> None:
    _, doc, run = built
    assert doc["schema"] == "mlship.build/v1"
    assert doc["ok"] is True
    assert doc["image_id"].startswith("sha256:")
    assert doc["tags"][0].startswith(f"{REGISTRY}/{REPOSITORY}:model-")
    assert doc["added_bytes"] == doc["size_bytes"] - doc["base_size_bytes"] > 0
    assert doc["added_bytes"] <= doc["size_budget_bytes"] == 110 * 1000 * 1000
    assert sum(layer["size_bytes"] for layer in doc["layers"]) == pytest.approx(
        doc["added_bytes"], rel=0.01)
    assert doc["layers"][0]["created_by"].startswith("LABEL")
    model_layer = next(layer for layer in doc["layers"] if layer["size_bytes"] > 0)
    assert model_layer["created_by"].endswith("/models/")  # the model is the last layer
    assert len(doc["lock_hash"]) == 64
    assert doc["digest"].startswith("sha256:")
    assert doc["pushed"][0]["digest"] == doc["digest"]
    assert doc["smoke"]["passed"] is True
    assert doc["smoke"]["exit_code"] == 0
    assert doc["duration_s"] > 0
    assert "smoke test passed" in run.stderr
    labels = json.loads(docker_cli("image", "inspect", "--format", "{{json .Config.Labels}}",
                                   doc["image_id"]).stdout)
    assert labels["dev.mlship.runtime.lock"] == doc["lock_hash"]
    assert labels["org.opencontainers.image.created"] != "unknown"


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_model_only_change_reuses_every_layer_but_the_model(built, tmp_path: Path) -> None:
    _, doc, _ = built
    other = make_model(tmp_path / "other.onnx", weights=64)
    project = write_project(tmp_path / "project", other)
    run = mlship("build", "--json", cwd=project)
    assert run.code == 0, run.stderr[-3000:]
    new = run.json()
    try:
        assert new["image_id"] != doc["image_id"]

        def below_model(layers: list[dict]) -> list[str]:
            index = next(i for i, layer in enumerate(layers)
                         if layer["created_by"].endswith("/models/"))
            return [layer["id"] for layer in layers[index + 1:]]

        assert below_model(new["layers"]) == below_model(doc["layers"])
        # Cached: every step before the model. Not: the 2 FROMs (never reported as cached), the
        # model COPY and the 4 zero-byte ARG/LABEL steps after it.
        assert new["cached_steps"] == new["steps"] - 7
    finally:
        for tag in new["tags"]:
            docker_cli("image", "rm", "-f", tag, check=False)


@pytest.mark.docker
@pytest.mark.registry
def test_unreachable_registry_exits_6(built) -> None:
    project, doc, _ = built
    target = f"127.0.0.1:5999/{REPOSITORY}:unreachable"
    docker_cli("tag", doc["image_id"], target)
    try:
        run = mlship("push", target, "--json", cwd=project, env={"MLSHIP_REGISTRY_ATTEMPTS": "2"})
    finally:
        docker_cli("image", "rm", target, check=False)
    assert run.code == 6, run.stderr
    assert "registry 127.0.0.1:5999 is unreachable" in run.stderr
    assert run.json()["error"]["type"] == "RegistryError"


@pytest.mark.docker
def test_pushing_an_image_that_is_not_local_exits_4(built) -> None:
    project, _, _ = built
    run = mlship("push", f"127.0.0.1:5000/{REPOSITORY}:never-built", "--json", cwd=project)
    assert run.code == 4, run.stderr
    assert "no such image in the local Docker engine" in run.stderr
    assert run.json()["error"]["type"] == "DockerError"


@pytest.mark.docker
@pytest.mark.registry
def test_wrong_credentials_exit_6_and_right_ones_push(built) -> None:
    project, doc, _ = built
    target = f"{AUTH_REGISTRY}/{REPOSITORY}:auth"
    docker_cli("tag", doc["image_id"], target)
    try:
        wrong = mlship("push", target, "--registry-username", AUTH_USER,
                       "--registry-password-stdin", cwd=project, stdin="wrong\n")
        right = mlship("push", target, "--json", cwd=project,
                       env={"MLSHIP_REGISTRY_USERNAME": AUTH_USER,
                            "MLSHIP_REGISTRY_PASSWORD": AUTH_PASSWORD})
        piped = mlship("push", target, "--registry-username", AUTH_USER,
                       "--registry-password-stdin", "--json", cwd=project,
                       stdin=f"{AUTH_PASSWORD}\n")
        on_the_line = mlship("push", target, "--registry-auth", f"{AUTH_USER}:{AUTH_PASSWORD}",
                             cwd=project)
    finally:
        docker_cli("image", "rm", target, check=False)
    assert wrong.code == 6, wrong.stderr
    assert f"authentication to registry {AUTH_REGISTRY} failed as '{AUTH_USER}' (from " \
           "--registry-password-stdin)" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) <= 3
    assert right.code == 0, right.stderr
    assert right.json()["digest"].startswith("sha256:")
    assert piped.code == 0, piped.stderr
    assert piped.json()["digest"] == right.json()["digest"]
    assert on_the_line.code == 2, on_the_line.stderr
    assert "a password on the command line shows in `ps`" in on_the_line.stderr


@pytest.mark.docker
def test_failing_build_step_exits_4_with_step_and_output(base_image: str,
                                                         tmp_path: Path, iris_model: Path) -> None:
    project = write_project(tmp_path / "project", iris_model)
    context = tmp_path / "context"
    (context / "wheels").mkdir(parents=True)
    (context / "requirements.lock").write_text("")
    (context / "Dockerfile").write_text(
        f"FROM {base_image}\nRUN echo 'the step says why' && exit 3\n")
    run = mlship("build", "--build-dir", str(context), cwd=project)
    assert run.code == 4, run.stderr
    assert "build failed at step 2/2: RUN echo 'the step says why' && exit 3" in run.stderr
    assert "the step says why" in run.stderr.split("build failed", 1)[1]
    old = mlship("build", "--context", str(context), cwd=project)  # the old spelling still works
    assert old.code == 4, old.stderr
    assert "--context is deprecated for the build folder" in old.stderr
    assert "build failed at step 2/2" in old.stderr


@pytest.mark.docker
def test_missing_base_image_exits_4_naming_image_base(tmp_path: Path, iris_model: Path) -> None:
    project = write_project(tmp_path / "project", iris_model, base="mlship-test/absent:1")
    run = mlship("build", cwd=project)
    assert run.code == 4, run.stderr
    assert "base image mlship-test/absent:1 is not in the local Docker engine" in run.stderr
    assert "image.base" in run.stderr


def test_docker_unreachable_exits_4_naming_docker_host(tmp_path: Path, iris_model: Path) -> None:
    project = write_project(tmp_path / "project", iris_model)
    run = mlship("build", cwd=project, env={"DOCKER_HOST": "unix:///nonexistent"})
    assert run.code == 4, run.stderr
    assert "DOCKER_HOST=unix:///nonexistent" in run.stderr
    assert "start the engine" in run.stderr


@pytest.mark.docker
@pytest.mark.registry
def test_over_size_budget_exits_5(built, tmp_path: Path, iris_model: Path) -> None:
    project = write_project(tmp_path / "project", iris_model, size_budget_mb=1)
    run = mlship("build", "--json", "--tag", "over-budget", cwd=project)
    docker_cli("image", "rm", f"{REGISTRY}/{REPOSITORY}:over-budget", check=False)
    assert run.code == 5, run.stderr
    error = run.json()["error"]
    assert error["type"] == "SizeBudgetError"
    assert "over the budget of 1 MB" in error["message"]
    assert "biggest layers:" in error["message"]
    assert "MB COPY /opt/venv" in error["message"]


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.slow
def test_pull_by_digest_runs_and_matches_onnxruntime(built, iris_model: Path) -> None:
    from mlship.image.engine import docker_client
    from mlship.image.smoke import smoke_test

    _, doc, _ = built
    by_digest = f"{REGISTRY}/{REPOSITORY}@{doc['digest']}"
    # --no-prune keeps the parent layers: the build cache the other tests rely on.
    for tag in doc["tags"]:
        docker_cli("image", "rm", "--no-prune", tag)
    assert docker_cli("image", "inspect", doc["image_id"], check=False).returncode != 0
    docker_cli("pull", by_digest)
    try:
        result = smoke_test(docker_client(), by_digest, {"iris": iris_model})
        assert result["passed"] is True
    finally:
        for tag in doc["tags"]:
            docker_cli("tag", by_digest, tag)


@pytest.mark.docker
@pytest.mark.slow
def test_an_image_of_several_models_serves_each_and_their_pipeline(base_image: str,
                                                                    tmp_path: Path) -> None:
    """models: + pipelines: baked into one image; --smoke answers every model and pipeline,
    and the pipeline returns what running its two files by hand returns."""
    import numpy as np
    import onnxruntime as ort

    from mlship.image.engine import docker_client
    from mlship.image.smoke import free_port, run_restricted
    from mlship.serving.client import RuntimeClient

    project = tmp_path / "project"
    make_model(project / "embed.onnx", weights=32)  # x [N, 4] -> y [N, 8]
    make_model(project / "rank.onnx", features=8)  # x [N, 8] -> y [N, 8]
    config = {"name": "search", "model": {"source": "embed.onnx"},
              "models": [{"name": "rank", "source": "rank.onnx"}],
              "pipelines": [{"name": "search-rank", "steps": [
                  {"model": "search"}, {"model": "rank", "inputs": {"x": "search.y"}}],
                  "outputs": {"scores": "rank.y", "embedding": "search.y"}}],
              "image": {"base": base_image, "repository": f"mlship-test/search-{os.getpid()}"}}
    (project / "mlship.yaml").write_text(yaml.safe_dump(config))
    run = mlship("build", "--smoke", "--json", cwd=project)
    assert run.code == 0, run.stderr[-4000:]
    doc = check_success(("build",), run.stdout)
    image = doc["tags"][0]
    try:
        served = {entry["name"]: entry["outputs"] for entry in doc["smoke"]["served"]}
        assert served == {"search": ["y"], "rank": ["y"],
                          "search-rank": ["embedding", "scores"]}
        x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
        embed = ort.InferenceSession(str(project / "embed.onnx"))
        rank = ort.InferenceSession(str(project / "rank.onnx"))
        (embedding,) = embed.run(None, {"x": x})
        (scores,) = rank.run(None, {"x": embedding})
        port = free_port()
        container = run_restricted(docker_client(), image, port)
        try:
            runtime = RuntimeClient(f"http://127.0.0.1:{port}", timeout_s=10)
            assert runtime.wait_ready(60), container.logs().decode()[-2000:]
            answer = runtime.infer("search-rank", {"x": x}).outputs
            np.testing.assert_allclose(answer["embedding"], embedding, rtol=1e-6)
            np.testing.assert_allclose(answer["scores"], scores, rtol=1e-6)
        finally:
            container.remove(force=True)
    finally:
        for tag in doc["tags"]:
            docker_cli("image", "rm", "-f", tag, check=False)
