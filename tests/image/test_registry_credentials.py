"""Docker credentials as the docker CLI finds them: config.json files as `docker login` writes
them, real docker-credential-* programs on PATH, and loopback registries that accept only the
right credential (the token registry of tests/mlship_registry.py, and CI's htpasswd registry).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlship_registry import (
    IDENTITY_TOKEN,
    PASSWORD,
    USER,
    TokenRegistry,
    basic,
    docker_config,
    write_helper,
)

from mlship.cluster.checks import check_images
from mlship.errors import BadInputError, RegistryError
from mlship.image.credentials import RegistryCredential, credentials
from mlship.image.push import parse_target
from mlship.image.registry import RegistryClient, base_url

AUTH_REGISTRY = os.environ.get("MLSHIP_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
AUTH_USER = os.environ.get("MLSHIP_TEST_REGISTRY_USER", "mlship")
AUTH_PASSWORD = os.environ.get("MLSHIP_TEST_REGISTRY_PASSWORD", "mlship-test-password")
HUB = "https://index.docker.io/v1/"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean HOME and PATH entry for helpers; no credentials from this machine."""
    for variable in ("MLSHIP_REGISTRY_USERNAME", "MLSHIP_REGISTRY_PASSWORD", "DOCKER_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


@pytest.fixture
def registry() -> Iterator[TokenRegistry]:
    with TokenRegistry() as server:
        yield server


def _use(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))


def _private(registry: TokenRegistry) -> list[dict]:
    image = f"{registry.address}/private/iris:v1"
    return [{"kind": "Deployment", "metadata": {"name": "iris"},
             "spec": {"template": {"spec": {"containers": [{"name": "m", "image": image}]}}}}]


def test_docker_hub_login_is_found_under_its_historical_key(home, monkeypatch) -> None:
    """`docker login` (no server) stores Docker Hub under https://index.docker.io/v1/; every
    name of Docker Hub finds it, and its API is registry-1.docker.io."""
    _use(monkeypatch, docker_config(home / "docker", {"auths": {HUB: {
        "auth": basic("hub-user", "hub-token")}}}))
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        found = credentials(name)
        assert found is not None
        assert (found.username, found.password) == ("hub-user", "hub-token"), name
    assert credentials("ghcr.io") is None
    assert parse_target("docker.io/team/iris:v1").registry == "docker.io"
    assert base_url("docker.io") == "https://registry-1.docker.io"


def test_docker_hub_through_a_credential_store(home, monkeypatch) -> None:
    """Docker Desktop's layout: an empty auths entry and credsStore; the helper is asked for
    https://index.docker.io/v1/, as the docker CLI asks it."""
    helper = write_helper(home / "bin", "desktop", {HUB: ("hub-user", "hub-token")})
    _use(monkeypatch, docker_config(home / "docker", {"auths": {HUB: {}},
                                                      "credsStore": "desktop"}))
    found = credentials("docker.io")
    assert found is not None
    assert (found.username, found.password, found.source) == (
        "hub-user", "hub-token", "docker-credential-desktop")
    assert Path(f"{helper}.log").read_text().split() == [HUB]


@pytest.mark.parametrize("layout", ["credHelpers", "credsStore"])
def test_a_helper_wins_over_a_stale_auths_entry(layout, home, monkeypatch, registry) -> None:
    write_helper(home / "bin", "team", {registry.address: (USER, PASSWORD)})
    document = {"auths": {registry.address: {"auth": basic(USER, "stale-password")}}}
    document |= {"credHelpers": {registry.address: "team"}} if layout == "credHelpers" else \
        {"credsStore": "team"}
    _use(monkeypatch, docker_config(home / "docker", document))
    assert check_images(_private(registry)).status == "passed"
    (request,) = registry.token_requests
    assert request["authorization"] == f"Basic {basic(USER, PASSWORD)}"


def test_cred_helpers_win_over_the_store(home, monkeypatch, registry) -> None:
    write_helper(home / "bin", "team", {registry.address: (USER, PASSWORD)})
    store = write_helper(home / "bin", "store", {registry.address: (USER, "store-password")})
    _use(monkeypatch, docker_config(home / "docker", {
        "credHelpers": {registry.address: "team"}, "credsStore": "store"}))
    assert check_images(_private(registry)).status == "passed"
    assert not Path(f"{store}.log").exists()  # never asked


def test_an_auths_entry_still_serves_when_no_helper_is_configured(home, monkeypatch,
                                                                  registry) -> None:
    _use(monkeypatch, docker_config(home / "docker", {"auths": {
        f"http://{registry.address}": {"auth": basic(USER, PASSWORD)}}}))
    assert check_images(_private(registry)).status == "passed"
    _use(monkeypatch, docker_config(home / "wrong", {"auths": {
        registry.address: {"auth": basic(USER, "wrong")}}}))
    with pytest.raises(RegistryError, match=rf"failed as '{USER}' \(from .*wrong/config.json "
                                            r"\(auths\)\): token endpoint answered 401"):
        check_images(_private(registry))


def test_an_identity_token_in_auths_is_a_token_not_a_password(home, monkeypatch,
                                                             registry) -> None:
    """ACR's `docker login` layout: identitytoken (and a placeholder user in auth)."""
    _use(monkeypatch, docker_config(home / "docker", {"auths": {registry.address: {
        "auth": basic("00000000-0000-0000-0000-000000000000", ""),
        "identitytoken": IDENTITY_TOKEN}}}))
    found = credentials(registry.address)
    assert found is not None
    assert found.identity_token == IDENTITY_TOKEN
    assert found.auth_config() == {"identitytoken": IDENTITY_TOKEN}
    assert check_images(_private(registry)).status == "passed"
    (request,) = registry.token_requests
    assert (request["method"], request["grant_type"]) == ("POST", "refresh_token")


def test_a_helper_token_user_means_an_identity_token(home, monkeypatch, registry) -> None:
    write_helper(home / "bin", "acr", {registry.address: ("<token>", IDENTITY_TOKEN)})
    _use(monkeypatch, docker_config(home / "docker", {"credHelpers": {registry.address: "acr"}}))
    found = credentials(registry.address)
    assert found == RegistryCredential("docker-credential-acr", identity_token=IDENTITY_TOKEN)
    assert check_images(_private(registry)).status == "passed"


def test_a_helper_that_knows_nothing_means_anonymous(home, monkeypatch) -> None:
    write_helper(home / "bin", "store", {"127.0.0.1:5001": ("u", "p")})
    _use(monkeypatch, docker_config(home / "docker", {"credsStore": "store"}))
    assert credentials("ghcr.io") is None


def test_a_configured_helper_that_is_not_installed_says_so(home, monkeypatch) -> None:
    config = docker_config(home / "docker", {"credsStore": "osxkeychain"})
    _use(monkeypatch, config)
    with pytest.raises(RegistryError) as caught:
        credentials("ghcr.io")
    assert caught.value.message == (
        f"{config / 'config.json'}: the credential helper docker-credential-osxkeychain failed "
        "for ghcr.io: it is not installed or not on PATH")
    assert "remove credsStore" in (caught.value.hint or "")


def test_docker_config_is_the_only_place_when_set(home, monkeypatch) -> None:
    """The docker CLI's rule: with DOCKER_CONFIG set, ~/.docker/config.json is not read."""
    docker_config(home / "home" / ".docker", {"auths": {"ghcr.io": {"auth": basic("a", "b")}}})
    found = credentials("ghcr.io")
    assert found is not None
    assert found.username == "a"
    monkeypatch.setenv("DOCKER_CONFIG", str(home / "empty"))
    assert credentials("ghcr.io") is None


def test_a_broken_config_file_is_one_line_naming_it(home, monkeypatch) -> None:
    (home / "docker").mkdir()
    (home / "docker" / "config.json").write_text('{"auths": {')
    _use(monkeypatch, home / "docker")
    with pytest.raises(BadInputError, match=r"docker/config.json: not a readable docker config"):
        credentials("ghcr.io")


@pytest.mark.registry
def test_the_htpasswd_registry_takes_the_helpers_password(home, monkeypatch) -> None:
    """CI's basic-auth registry: a credsStore helper's password beats a stale auths entry; an
    identity token cannot answer a basic challenge and says so."""
    write_helper(home / "bin", "ci", {AUTH_REGISTRY: (AUTH_USER, AUTH_PASSWORD)})
    _use(monkeypatch, docker_config(home / "docker", {
        "auths": {AUTH_REGISTRY: {"auth": basic(AUTH_USER, "stale")}}, "credsStore": "ci"}))
    RegistryClient(AUTH_REGISTRY, credentials(AUTH_REGISTRY)).check()
    token = RegistryCredential("docker-credential-ci", identity_token="refresh-x")
    with pytest.raises(RegistryError, match=r"asks for basic authentication .* is an identity "
                                            "token"):
        RegistryClient(AUTH_REGISTRY, token).check()


@pytest.mark.docker
@pytest.mark.registry
def test_mlship_push_through_the_engine_with_a_helpers_credentials(home) -> None:
    """`mlship push` as a process: the engine pushes with the credential the helper gave (its
    X-Registry-Auth), not the stale auths entry, and the digest is verified with it too."""
    import subprocess

    from mlship_contract import check_success, mlship

    base = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test/base:bookworm")
    target = f"{AUTH_REGISTRY}/mlship-test/helper-{os.getpid()}:1"
    if subprocess.run(["docker", "image", "inspect", base], capture_output=True,
                      check=False).returncode != 0:
        message = f"base image {base} missing (.ci/install-docker.sh makes it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    helper = write_helper(home / "bin", "ci", {AUTH_REGISTRY: (AUTH_USER, AUTH_PASSWORD)})
    config = docker_config(home / "docker", {
        "auths": {AUTH_REGISTRY: {"auth": basic(AUTH_USER, "stale")}}, "credsStore": "ci"})
    subprocess.run(["docker", "tag", base, target], check=True, capture_output=True)
    env = {"DOCKER_CONFIG": str(config), "PATH": os.environ["PATH"], "HOME": os.environ["HOME"]}
    try:
        run = mlship("push", target, "--json", cwd=home, env=env)
    finally:
        subprocess.run(["docker", "image", "rm", target], check=False, capture_output=True)
    assert run.code == 0, run
    assert check_success(("push",), run.stdout)["digest"].startswith("sha256:")
    assert AUTH_REGISTRY in Path(f"{helper}.log").read_text().split()
