"""The registry HTTP API v2, authenticated as the registry asks: basic, or a bearer token.

A bearer registry (ghcr.io, Docker Hub, Harbor, ACR) names a token service (``realm``) in its
401 challenge. The token is fetched anonymously, with the username and password (GET, basic
auth), or with an identity token (the OAuth2 ``refresh_token`` grant, a POST, as the docker
CLI does). Credentials go to a realm only over https, or to a loopback address: a realm over
plain http elsewhere is refused with the reason, because it would expose them to the network.
Transient failures (connection errors, 5xx, 429) are TransientRegistryError, retried by the
callers with exponential backoff (tenacity).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mlship.errors import RegistryError
from mlship.image.credentials import DOCKER_HUB_API, DOCKER_HUB_HOSTS, RegistryCredential

if TYPE_CHECKING:
    import requests

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
ATTEMPTS = int(os.environ.get("MLSHIP_REGISTRY_ATTEMPTS", "3"))
CLIENT_ID = "mlship"  # names the client in an OAuth2 token request, as docker sends "docker"
LOGIN_HINT = ("pipe a password to --registry-username USER --registry-password-stdin, set "
              "MLSHIP_REGISTRY_USERNAME/MLSHIP_REGISTRY_PASSWORD, or `docker login` to it")


class TransientRegistryError(RegistryError):
    """Worth retrying: the registry may answer on the next attempt."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(registry: str) -> str:
    """Where the API of ``registry`` answers. dockerd talks plain HTTP to loopback registries
    (its default insecure 127.0.0.0/8), https to every other; Docker Hub's API is on
    registry-1.docker.io, whatever name the image uses."""
    if registry in DOCKER_HUB_HOSTS:
        return f"https://{DOCKER_HUB_API}"
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    return f"{'http' if is_loopback(host) else 'https'}://{registry}"


class RegistryClient:
    """Registry HTTP API v2 with basic or bearer auth, as the registry asks."""

    def __init__(self, registry: str, credential: RegistryCredential | None) -> None:
        import requests

        self.registry = registry
        self.base = base_url(registry)
        self.credential = credential
        self.session = requests.Session()
        self.header: dict[str, str] = {}

    def _who(self, anonymous: str) -> str:
        return self.credential.describe() if self.credential else anonymous

    def get(self, path: str, *, method: str = "GET", scope: str | None = None,
            headers: dict[str, str] | None = None) -> requests.Response:
        import requests

        url = self.base + path
        try:
            response = self.session.request(method, url, headers={**(headers or {}),
                                                                  **self.header}, timeout=15)
            challenge = response.headers.get("WWW-Authenticate", "")
            # Bearer registries (ghcr.io, Docker Hub) hand out anonymous pull tokens too.
            if response.status_code == 401 and (
                    self.credential or challenge.lower().startswith("bearer ")):
                self._authenticate(challenge, scope)
                response = self.session.request(method, url, timeout=15,
                                                headers={**(headers or {}), **self.header})
        except requests.exceptions.RequestException as err:
            raise TransientRegistryError(
                f"registry {self.registry} is unreachable ({self.base}): "
                f"{reason(err)}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientRegistryError(f"registry {self.registry} answered "
                                         f"HTTP {response.status_code} on {path}")
        if response.status_code == 401:
            raise RegistryError(f"authentication to registry {self.registry} failed "
                                f"{self._who('without credentials')} (HTTP 401)",
                                hint=LOGIN_HINT)
        return response

    def _authenticate(self, challenge: str, scope: str | None) -> None:
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() != "bearer":
            self.header = {"Authorization": f"Basic {self._basic(challenge)}"}
            return
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(f"registry {self.registry} answered 401 with a bearer "
                                f"challenge naming no token service: {challenge[:200]!r}")
        query = {"service": fields.get("service", "")}
        if scope or fields.get("scope"):
            query["scope"] = scope or fields["scope"]
        if self.credential:
            self._check_realm(realm)
        reply = self._token_request(realm, query)
        if reply.status_code != 200:
            raise RegistryError(f"authentication to registry {self.registry} failed "
                                f"{self._who('anonymously')}: token endpoint answered "
                                f"{reply.status_code}", hint=LOGIN_HINT)
        try:
            body = reply.json()
            token = body.get("token") or body["access_token"]
        except (ValueError, KeyError, AttributeError):
            raise RegistryError(f"registry {self.registry}: its token endpoint {realm} "
                                "answered 200 without a token") from None
        self.header = {"Authorization": f"Bearer {token}"}

    def _basic(self, challenge: str) -> str:
        credential = self.credential
        assert credential is not None  # get() authenticates a basic challenge only with one
        if credential.identity_token:
            raise RegistryError(f"registry {self.registry} asks for basic authentication "
                                f"({challenge[:60]!r}), but the credential "
                                f"{credential.describe()} is an identity token, which only a "
                                "bearer token service accepts", hint=LOGIN_HINT)
        return base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode()

    def _check_realm(self, realm: str) -> None:
        """Credentials only over https, or to loopback: never in clear text on a network."""
        parts = urlsplit(realm)
        if parts.scheme == "https" or is_loopback(parts.hostname or ""):
            return
        raise RegistryError(
            f"registry {self.registry} sends token requests to {realm}: plain http to "
            f"{parts.hostname}, where the credentials ({self._who('')}) would cross the "
            "network unencrypted; mlship sends credentials only over https or to a loopback "
            "address",
            hint="configure the registry's token service with an https realm, or reach it "
                 "anonymously (no credentials for this registry)")

    def _token_request(self, realm: str, query: dict[str, str]) -> Any:
        credential = self.credential
        if credential and credential.identity_token:
            # The OAuth2 refresh-token grant of the distribution token spec ("docker login"
            # keeps an identity token instead of the password for such registries).
            form = {"grant_type": "refresh_token", "refresh_token": credential.identity_token,
                    "client_id": CLIENT_ID, **query}
            return self.session.post(realm, data=form, timeout=15)
        auth = (credential.username, credential.password) if credential else None
        return self.session.get(realm, params=query, auth=auth, timeout=15)

    def check(self) -> None:
        """GET /v2/: the registry answers, and accepts our credentials."""
        self.get("/v2/")

    def manifest_digest(self, repository: str, tag: str) -> str:
        """The digest the registry serves for ``repository:tag`` (HEAD, else GET and hash)."""
        path = f"/v2/{repository}/manifests/{tag}"
        scope = f"repository:{repository}:pull"
        response = self.get(path, method="HEAD", scope=scope, headers={"Accept": MANIFEST_TYPES})
        digest = response.headers.get("Docker-Content-Digest")
        if response.status_code == 200 and digest:
            return digest
        response = self.get(path, scope=scope, headers={"Accept": MANIFEST_TYPES})
        if response.status_code != 200:
            raise RegistryError(f"{self.registry}/{repository}:{tag}: the registry has no such "
                                f"manifest (HTTP {response.status_code}) right after the push")
        import hashlib

        return response.headers.get("Docker-Content-Digest") or \
            "sha256:" + hashlib.sha256(response.content).hexdigest()


def reason(err: Exception) -> str:
    text = str(err).lower()
    for words in ("connection refused", "timed out", "name or service not known",
                  "certificate verify failed", "connection reset"):
        if words in text:
            return words
    return type(err).__name__


def retrying(function: Any) -> Any:
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

    return retry(retry=retry_if_exception_type(TransientRegistryError), reraise=True,
                 stop=stop_after_attempt(ATTEMPTS),
                 wait=wait_exponential(multiplier=0.5, max=8))(function)
