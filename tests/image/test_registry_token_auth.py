"""Bearer-token registries (ghcr.io, Docker Hub, Harbor, ACR) over real HTTP on loopback.

The Debian registry in CI speaks basic auth only; a registry that issues tokens needs a token
service, so tests/mlship_registry.py serves the distribution spec's token flow itself: the
realm hands out pull tokens anonymously for public repositories, for the right basic
credentials, or for the right identity token through the OAuth2 refresh-token grant.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mlship_registry import DIGEST, IDENTITY_TOKEN, PASSWORD, USER, TokenRegistry

from mlship.cluster.checks import check_images
from mlship.errors import RegistryError
from mlship.image.credentials import RegistryCredential
from mlship.image.registry import RegistryClient


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenRegistry]:
    for variable in ("MLSHIP_REGISTRY_USERNAME", "MLSHIP_REGISTRY_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent")  # no docker login on this machine
    with TokenRegistry() as server:
        yield server


def _deployment(image: str) -> list[dict]:
    return [{"kind": "Deployment", "metadata": {"name": "iris"},
             "spec": {"template": {"spec": {"containers": [{"name": "model", "image": image}]}}}}]


def test_a_public_image_is_found_with_an_anonymous_token(registry: TokenRegistry) -> None:
    check = check_images(_deployment(f"{registry.address}/public/iris:v1"))
    assert check.status == "passed"
    assert DIGEST in check.detail
    (query,) = registry.token_requests
    assert (query["service"], query["scope"]) == ("loopback", "repository:public/iris:pull")
    assert query["authorization"] is None


def test_a_private_image_needs_credentials_and_says_how_to_give_them(
        registry: TokenRegistry) -> None:
    with pytest.raises(RegistryError) as caught:
        check_images(_deployment(f"{registry.address}/private/iris:v1"))
    assert "failed anonymously: token endpoint answered 401" in caught.value.message
    assert "--registry-password-stdin" in (caught.value.hint or "")
    login = RegistryCredential("--registry-password-stdin", username=USER, password=PASSWORD)
    check = check_images(_deployment(f"{registry.address}/private/iris:v1"), login)
    assert check.status == "passed"


def test_an_identity_token_gets_its_token_through_the_refresh_grant(
        registry: TokenRegistry) -> None:
    """What `docker login` keeps for ACR and OAuth registries: an identity token, exchanged
    with a POST (grant_type=refresh_token), never sent as a basic password."""
    image = f"{registry.address}/private/iris:v1"
    token = RegistryCredential("test", identity_token=IDENTITY_TOKEN)
    assert check_images(_deployment(image), token).status == "passed"
    (request,) = registry.token_requests
    assert request == {"method": "POST", "grant_type": "refresh_token",
                       "refresh_token": IDENTITY_TOKEN, "client_id": "mlship",
                       "service": "loopback", "scope": "repository:private/iris:pull"}
    stale = RegistryCredential("test", identity_token="refresh-expired")
    with pytest.raises(RegistryError, match="failed with the identity token from test: token "
                                            "endpoint answered 401"):
        check_images(_deployment(image), stale)


def test_an_image_missing_behind_a_token_is_reported_as_missing(registry: TokenRegistry) -> None:
    with pytest.raises(RegistryError) as caught:
        check_images(_deployment(f"{registry.address}/public/missing:v1"))
    assert "not in the registry (HTTP 404" in caught.value.message


@pytest.mark.parametrize("credential", [
    RegistryCredential("MLSHIP_REGISTRY_USERNAME", username=USER, password=PASSWORD),
    RegistryCredential("docker-credential-team", identity_token=IDENTITY_TOKEN),
], ids=["password", "identity token"])
def test_credentials_never_go_to_a_plain_http_realm_off_loopback(credential) -> None:
    """A registry may name any token realm; over http to another host the secret would cross
    the network in clear text, so it is refused (before any connection) with the reason."""
    realm = "http://auth.registry.invalid/token"  # .invalid never resolves: nothing is dialled
    with TokenRegistry(realm=realm) as server:
        client = RegistryClient(server.address, credential)
        with pytest.raises(RegistryError) as caught:
            client.get("/v2/private/iris/manifests/v1", scope="repository:private/iris:pull")
        assert server.token_requests == []
    message = caught.value.message
    assert f"sends token requests to {realm}: plain http to auth.registry.invalid" in message
    assert "only over https or to a loopback address" in message
    assert PASSWORD not in message
    assert IDENTITY_TOKEN not in message
    assert "https realm" in (caught.value.hint or "")

