"""Build and push logic without an engine: the wheelhouse, tags, budgets, credentials, and a
push stream that reports failure without raising."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from mlship.config.load import validate_config
from mlship.errors import BadInputError, DockerError, RegistryError, SizeBudgetError
from mlship.image import build, push, wheelhouse
from mlship.resources import runtime_lock_file


def test_runtime_wheel_is_deterministic_and_complete(tmp_path: Path) -> None:
    first = wheelhouse.runtime_wheel(tmp_path / "a")
    second = wheelhouse.runtime_wheel(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
        record = archive.read(next(n for n in names if n.endswith("RECORD"))).decode()
    assert "mlship_runtime/__main__.py" in names
    assert not any("__pycache__" in name for name in names)
    assert all(name in record for name in names)


def test_committed_lock_pins_only_what_inference_needs() -> None:
    pins = {pin.name: pin for pin in wheelhouse.read_lock(runtime_lock_file())}
    assert {"onnxruntime", "numpy", "uvicorn", "orjson"} <= set(pins)
    assert not set(pins) & wheelhouse.NOT_NEEDED
    assert all(len(pin.sha256) == 64 for pin in pins.values())


def test_a_lock_line_without_hash_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==2.0.0\n")
    with pytest.raises(DockerError, match="not a hashed pin"):
        wheelhouse.read_lock(lock)


def _config(**image: Any):
    return validate_config({"name": "iris", "model": {"source": "iris.onnx"},
                            "image": {"registry": "127.0.0.1:5000", **image}})


def test_tags_from_config_and_git_and_overrides() -> None:
    from mlship.render.identity import ModelFacts, image_identity

    config = _config(repository="team/iris")
    sha = "ab" * 32
    identity = image_identity(config, {"iris": ModelFacts("iris.onnx", 10, sha)})
    assert identity.tags("1234567890ab" + "0" * 28) == [
        f"127.0.0.1:5000/team/iris:model-{sha[:12]}", "127.0.0.1:5000/team/iris:1234567890ab"]
    assert identity.tags(None, ["v1", "other.io/x:y"]) == [
        "127.0.0.1:5000/team/iris:v1", "other.io/x:y"]
    assert identity.reference == f"127.0.0.1:5000/team/iris:model-{sha[:12]}"


def test_budget_error_names_size_budget_and_biggest_layers() -> None:
    result = build.BuildResult(image_id="sha256:x", tags=["iris:1"], base_image="base",
                               size_bytes=150 * build.MB, base_size_bytes=30 * build.MB,
                               layers=[build.Layer("a", "COPY /opt/venv", 119 * build.MB),
                                       build.Layer("b", "COPY /models/", 1 * build.MB)])
    build.check_budget(result, 120)
    with pytest.raises(SizeBudgetError) as err:
        build.check_budget(result, 110)
    assert "adds 120.0 MB over its base base, over the budget of 110 MB" in err.value.message
    assert "119.0 MB COPY /opt/venv" in err.value.message


def test_credentials_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A login given to the run, then MLSHIP_REGISTRY_*, then docker's config.json (helpers and
    Docker Hub keys: tests/image/test_registry_credentials.py)."""
    from mlship.image.credentials import RegistryCredential, credentials, login

    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    token = base64.b64encode(b"cfg-user:cfg-pass").decode()
    (docker_config / "config.json").write_text(json.dumps(
        {"auths": {"127.0.0.1:5001": {"auth": token}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    monkeypatch.delenv("MLSHIP_REGISTRY_USERNAME", raising=False)
    found = credentials("127.0.0.1:5001")
    assert found is not None
    assert (found.username, found.password) == ("cfg-user", "cfg-pass")
    assert credentials("127.0.0.1:5000") is None
    monkeypatch.setenv("MLSHIP_REGISTRY_USERNAME", "env-user")
    monkeypatch.setenv("MLSHIP_REGISTRY_PASSWORD", "env-pass")
    found = credentials("127.0.0.1:5001")
    assert found is not None
    assert (found.username, found.password) == ("env-user", "env-pass")
    given = login("cli", "pa:ss", source="--registry-password-stdin")
    assert credentials("127.0.0.1:5001", given) == RegistryCredential(
        "--registry-password-stdin", username="cli", password="pa:ss")
    with pytest.raises(BadInputError, match="has no password"):
        login("cli", "", source="--registry-username")


class _FakeApi:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.calls = 0

    def push(self, *args: Any, **kwargs: Any):
        self.calls += 1
        return iter(self.events)


class _LocalImages:
    def get(self, reference: str) -> str:
        return reference  # the image exists locally; only the push stream is under test


class _FakeClient:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.api = _FakeApi(events)
        self.images = _LocalImages()


@pytest.fixture
def reachable_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    served = {"digest": "sha256:" + "1" * 64}
    from mlship.image import registry

    monkeypatch.setattr(registry.RegistryClient, "check", lambda self: None)
    monkeypatch.setattr(registry.RegistryClient, "manifest_digest",
                        lambda self, repository, tag: served["digest"])
    monkeypatch.setattr(registry, "ATTEMPTS", 2)
    return served


def test_an_error_in_the_push_stream_fails_the_push(reachable_registry) -> None:
    client = _FakeClient([{"status": "Preparing"},
                          {"errorDetail": {"message": "blob upload unknown"},
                           "error": "blob upload unknown"}])
    with pytest.raises(RegistryError, match=r"push of 127\.0\.0\.1:5000/x:1 failed: blob upload"):
        push.push_image(client, "127.0.0.1:5000/x:1")
    assert client.api.calls == 1  # not transient: no retry


def test_transient_push_errors_are_retried(reachable_registry) -> None:
    client = _FakeClient([{"error": "dial tcp 127.0.0.1:5000: connection refused"}])
    with pytest.raises(RegistryError, match="after 2 attempts"):
        push.push_image(client, "127.0.0.1:5000/x:1")
    assert client.api.calls == 2


def test_digest_mismatch_is_an_error(reachable_registry) -> None:
    client = _FakeClient([{"aux": {"Tag": "1", "Digest": "sha256:" + "2" * 64, "Size": 1}}])
    with pytest.raises(RegistryError, match="digest mismatch"):
        push.push_image(client, "127.0.0.1:5000/x:1")
    reachable_registry["digest"] = "sha256:" + "2" * 64
    assert push.push_image(client, "127.0.0.1:5000/x:1") == "sha256:" + "2" * 64


def test_a_reference_without_registry_cannot_be_pushed() -> None:
    with pytest.raises(BadInputError, match="names no registry"):
        push.parse_target("iris:1")
