"""`mlship build --context-only DIR` writes a complete build context: the Docker engine's
plain build of that folder alone (docker SDK ``images.build(path=...)``, no mlship code in the
build path) gives the image `mlship build` gives, layer for layer.

Layers are compared by their diff IDs (sha256 of the uncompressed layer tar). Two builds are
equal when the engine reuses its cache: its cache key for a COPY is the content of what is
copied, and for a RUN the instruction and the layer below it, so a hit is the engine saying
the inputs are the same. Built again without the cache, the layers that are plain copies of
the inputs (the base, and the model) are equal byte for byte; the virtualenv layer is not,
because pip writes every file with the time of the install and the tar records mtimes (the
Dockerfile does not fix SOURCE_DATE_EPOCH, and the legacy builder would not honour it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from mlship_contract import mlship

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BASE_IMAGE = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test/base:bookworm")
REPOSITORY = f"mlship-test/context-{os.getpid()}"


@pytest.fixture(scope="module")
def engine():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.images.get(BASE_IMAGE)
    except Exception as err:  # any reason the engine cannot serve this test
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"[docker] base image {BASE_IMAGE}: {err}")
        pytest.skip(f"[docker] {err}")
    yield client
    for image in client.images.list(name=REPOSITORY):
        client.images.remove(image.id, force=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, iris_model: Path) -> Path:
    directory = tmp_path_factory.mktemp("context") / "project"
    directory.mkdir()
    shutil.copyfile(iris_model, directory / "model.onnx")
    config = {"name": "iris", "model": {"source": "model.onnx"},
              "image": {"base": BASE_IMAGE, "repository": REPOSITORY}}
    (directory / "mlship.yaml").write_text(yaml.safe_dump(config))
    return directory


def _layers(client, image_id: str) -> list[str]:
    return list(client.images.get(image_id).attrs["RootFS"]["Layers"])


def test_context_only_needs_no_engine_and_holds_what_the_dockerfile_copies(
        project: Path) -> None:
    run = mlship("build", "--context-only", "ctx", cwd=project,
                 env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert run.code == 0, run.stderr
    context = project / "ctx"
    assert sorted(p.name for p in context.iterdir()) == [
        ".dockerignore", "Dockerfile", "model", "requirements.lock", "wheels"]
    assert (context / "model" / "model.onnx").read_bytes() == \
        (project / "model.onnx").read_bytes()
    assert any(p.name.startswith("mlship_runtime-") for p in (context / "wheels").iterdir())
    assert "docker build --build-arg RUNTIME_LOCK=" in run.stderr
    refused = mlship("build", "--context-only", "ctx", "--push", cwd=project)
    assert refused.code == 2
    assert "--context-only: cannot be combined with --push" in refused.stderr


def test_plain_docker_build_of_the_context_equals_mlship_build(engine, project: Path) -> None:
    run = mlship("build", "--context-only", "plain", cwd=project)
    assert run.code == 0, run.stderr
    plain, _ = engine.images.build(path=str(project / "plain"), tag=f"{REPOSITORY}:plain",
                                   pull=False, network_mode="host", rm=True)
    built = mlship("build", "--json", cwd=project)
    assert built.code == 0, built.stderr[-3000:]
    ours = built.json()["image_id"]
    assert _layers(engine, plain.id) == _layers(engine, ours)
    # The same labels once given the same build args (the rest of the config is equal too).
    assert engine.images.get(ours).attrs["Config"]["Entrypoint"] == \
        plain.attrs["Config"]["Entrypoint"]


def test_without_the_cache_the_copied_layers_are_equal_byte_for_byte(engine,
                                                                      project: Path) -> None:
    mlship("build", "--context-only", "fresh", cwd=project)
    fresh, _ = engine.images.build(path=str(project / "fresh"), tag=f"{REPOSITORY}:fresh",
                                   pull=False, network_mode="host", rm=True, nocache=True)
    built = mlship("build", "--json", cwd=project)
    assert built.code == 0, built.stderr[-3000:]
    base = _layers(engine, BASE_IMAGE)
    ours, theirs = _layers(engine, built.json()["image_id"]), _layers(engine, fresh.id)
    # base layers, then the virtualenv (COPY --from=builder), then the model (COPY model/).
    assert len(ours) == len(theirs) == len(base) + 2
    assert theirs[:len(base)] == ours[:len(base)] == base
    assert theirs[-1] == ours[-1]  # the model layer: the same bytes from the same context


@pytest.mark.registry
def test_a_base_from_a_registry_is_pinned_by_digest_in_from(engine, tmp_path: Path,
                                                           iris_model: Path) -> None:
    """Once the engine knows the base's registry digest (pulled or pushed), FROM names it:
    `name:tag@sha256:...`, the digest for the builder, the tag for people."""
    base = f"127.0.0.1:5000/{REPOSITORY}-base:bookworm"
    engine.images.get(BASE_IMAGE).tag(base)
    for line in engine.images.push(base, stream=True, decode=True):
        assert "error" not in line, line
    digest = next(d.split("@")[1] for d in engine.images.get(base).attrs["RepoDigests"]
                  if d.startswith(base.rsplit(":", 1)[0] + "@"))
    project = tmp_path / "project"
    project.mkdir()
    shutil.copyfile(iris_model, project / "model.onnx")
    (project / "mlship.yaml").write_text(yaml.safe_dump({
        "name": "iris", "model": {"source": "model.onnx"},
        "image": {"base": base, "repository": REPOSITORY}}))
    run = mlship("build", "--context-only", "ctx", cwd=project)
    assert run.code == 0, run.stderr
    froms = [line.split()[1] for line in (project / "ctx/Dockerfile").read_text().splitlines()
             if line.startswith("FROM ")]
    assert froms == [f"{base}@{digest}"] * 2
    built = mlship("build", "--json", cwd=project)  # the engine resolves the pinned FROM
    assert built.code == 0, built.stderr[-3000:]
    assert f"base image pinned: FROM {base}@{digest}" in " ".join(built.stderr.split())
    rendered = mlship("render", cwd=project)  # render has no engine: the tag, as written
    assert rendered.code == 0, rendered.stderr
    assert f"FROM {base} AS builder" in (project / "mlship-out/Dockerfile").read_text()
    engine.images.remove(base, force=True)
