"""`mlship build --context-only DIR` writes a complete build context: the Docker engine's
plain build of that folder alone (docker SDK ``images.build(path=...)``, no mlship code in the
build path) gives the image `mlship build` gives, layer for layer.

Layers are compared by their diff IDs (sha256 of the uncompressed layer tar). Two builds are
equal when the engine reuses its cache: its cache key for a COPY is the content of what is
copied, and for a RUN the instruction and the layer below it, so a hit is the engine saying
the inputs are the same. Built twice without the cache, only the base layers keep their diff
IDs: the virtualenv and model layers are new tars whose entries carry the time of the build
(pip writes every file at install time, COPY creates /models then; the Dockerfile does not fix
SOURCE_DATE_EPOCH, and the engine's legacy builder would not honour it), while the files in
them are the same bytes, compiled bytecode aside (a .pyc header records its source's mtime).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
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


def _tree(client, image_id: str, path: str) -> dict[str, tuple[int, str]]:
    """Every file under ``path`` in the image: its mode and the sha256 of its bytes (no times)."""
    container = client.containers.create(image_id, entrypoint=["/bin/true"])
    try:
        stream, _ = container.get_archive(path)
        tree = {}
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            for member in archive.getmembers():
                data = archive.extractfile(member) if member.isfile() else None
                tree[member.name] = (member.mode, hashlib.sha256(data.read()).hexdigest()
                                     if data else member.type.decode())
        return tree
    finally:
        container.remove(force=True)


def test_without_the_cache_two_builds_differ_only_in_file_times(engine, project: Path) -> None:
    run = mlship("build", "--context-only", "fresh", cwd=project)
    assert run.code == 0, run.stderr
    images = [engine.images.build(path=str(project / "fresh"), tag=f"{REPOSITORY}:fresh{n}",
                                  pull=False, network_mode="host", rm=True, nocache=True)[0]
              for n in (1, 2)]
    base = _layers(engine, BASE_IMAGE)
    first, second = (_layers(engine, image.id) for image in images)
    # base layers, then the virtualenv (COPY --from=builder), then the model (COPY model/).
    assert len(first) == len(second) == len(base) + 2
    assert first[:len(base)] == second[:len(base)] == base
    # The two layers above are new tars, with new times: the same files, the same bytes.
    assert _tree(engine, images[0].id, "/models") == _tree(engine, images[1].id, "/models")
    venv = [{name: entry for name, entry in _tree(engine, image.id, "/opt/venv").items()
             if not name.endswith(".pyc")} for image in images]  # .pyc headers hold mtimes
    assert venv[0] == venv[1]


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
