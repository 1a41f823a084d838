"""Docker contexts as `docker context create/use` write them (the real docker CLI, in a
DOCKER_CONFIG of the test's own): mlship's client follows the active context, and a context
whose engine is down or that does not exist is named in the error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from mlship_contract import check_failure, mlship

from mlship.errors import DockerError
from mlship.image.engine import docker_client, engine_endpoint

pytestmark = pytest.mark.docker
ENGINE = "/var/run/docker.sock"


def docker(config: Path, *args: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != "DOCKER_HOST"}
    subprocess.run(["docker", *args], check=True, capture_output=True, timeout=60,
                   env={**env, "DOCKER_CONFIG": str(config)})


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A docker config directory with two contexts: one on this machine's engine (through a
    symlink, so the path proves which endpoint was used), one on a socket nobody serves."""
    engine = os.environ.get("DOCKER_HOST") or f"unix://{ENGINE}"
    if not engine.startswith("unix://") or not Path(engine.removeprefix("unix://")).exists():
        pytest.skip(f"the engine is not on a local unix socket ({engine})")
    engine = engine.removeprefix("unix://")
    (tmp_path / "engine.sock").symlink_to(engine)
    directory = tmp_path / "docker"
    docker(directory, "context", "create", "mlship-here", "--docker",
           f"host=unix://{tmp_path / 'engine.sock'}")
    docker(directory, "context", "create", "mlship-down", "--docker",
           f"host=unix://{tmp_path / 'nobody.sock'}")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    return directory


def test_the_client_follows_the_context_docker_context_use_selected(config: Path,
                                                                     tmp_path: Path) -> None:
    docker(config, "context", "use", "mlship-here")
    endpoint = engine_endpoint()
    assert endpoint.host == f"unix://{tmp_path / 'engine.sock'}"
    assert endpoint.origin == f"Docker context 'mlship-here', currentContext in " \
                              f"{config / 'config.json'}"
    client = docker_client()
    assert client.api.adapters["http+docker://"].socket_path == str(tmp_path / "engine.sock")


def test_docker_host_beats_the_context(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docker(config, "context", "use", "mlship-down")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{ENGINE}")
    assert engine_endpoint().describe() == f"DOCKER_HOST=unix://{ENGINE}"
    assert docker_client().ping()


def test_an_engine_down_names_the_context(config: Path, tmp_path: Path) -> None:
    docker(config, "context", "use", "mlship-down")
    run = mlship("push", "127.0.0.1:5000/mlship-test/context:1", "--json", cwd=tmp_path,
                 env={"DOCKER_CONFIG": str(config), "DOCKER_HOST": ""})
    error = check_failure(("push",), run.stdout, 4)["error"]
    assert error["message"].startswith(
        f"connecting to Docker: cannot reach the Docker engine at unix://{tmp_path}/nobody.sock "
        f"(Docker context 'mlship-down', currentContext in {config / 'config.json'}): ")
    assert "start the engine of context 'mlship-down'" in error["hint"]
    assert "/var/run/docker.sock (default)" not in run.stderr


def test_docker_context_variable_and_an_unknown_context(config: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    docker(config, "context", "use", "mlship-down")
    monkeypatch.setenv("DOCKER_CONTEXT", "mlship-here")  # the variable wins, as for the CLI
    assert engine_endpoint().host == f"unix://{tmp_path / 'engine.sock'}"
    monkeypatch.setenv("DOCKER_CONTEXT", "nope")
    with pytest.raises(DockerError) as caught:
        docker_client()
    assert caught.value.message == "Docker context 'nope' (DOCKER_CONTEXT) does not exist"
    assert "docker context ls" in (caught.value.hint or "")
