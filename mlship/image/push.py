"""Push an image, believe nothing the push stream says, and verify the digest in the registry.

docker-py's ``push()`` does not raise when a push fails: the failure is an ``error`` /
``errorDetail`` entry in the stream, so every entry is read. Before pushing, the registry's
``/v2/`` endpoint is probed with the same credentials (unreachable and wrong credentials are
then clear exit-6 errors instead of a daemon message); afterwards the manifest is fetched
over the registry HTTP API and its ``Docker-Content-Digest`` must equal the digest the push
reported. Credentials come from ``--registry-auth``, then ``MLSHIP_REGISTRY_USERNAME`` /
``MLSHIP_REGISTRY_PASSWORD``, then ``~/.docker/config.json`` (``auths``); transient failures
(connection errors, 5xx, 429) are retried with exponential backoff by tenacity.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlship.config.quantities import parse_image_ref
from mlship.errors import BadInputError, DockerError, RegistryError
from mlship.image.engine import docker_errors

if TYPE_CHECKING:
    import docker
    import requests

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
ATTEMPTS = int(os.environ.get("MLSHIP_REGISTRY_ATTEMPTS", "3"))
_TRANSIENT = re.compile(r"connection refused|timeout|timed out|temporar|reset by peer|EOF|"
                        r"\b50[234]\b|\b429\b|too many requests", re.IGNORECASE)


class TransientRegistryError(RegistryError):
    """Worth retrying: the registry may answer on the next attempt."""


@dataclass(frozen=True)
class Target:
    registry: str
    repository: str
    tag: str

    @property
    def reference(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


def parse_target(image: str) -> Target:
    try:
        ref = parse_image_ref(image)
    except ValueError:
        raise BadInputError(f"{image!r} is not an image reference") from None
    if not ref.registry:
        raise BadInputError(f"{image}: names no registry, so there is nowhere to push it",
                            hint="set image.registry in mlship.yaml (e.g. 127.0.0.1:5000)")
    return Target(ref.registry, ref.path, ref.tag or "latest")


def credentials(registry: str, explicit: str | None = None) -> tuple[str, str] | None:
    """(user, password) from --registry-auth, the environment, or docker's config.json."""
    if explicit:
        user, sep, password = explicit.partition(":")
        if not sep:
            raise BadInputError("--registry-auth must be USER:PASSWORD")
        return user, password
    env_user = os.environ.get("MLSHIP_REGISTRY_USERNAME")
    if env_user:
        return env_user, os.environ.get("MLSHIP_REGISTRY_PASSWORD", "")
    config_dir = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        config = json.loads((config_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    auths = config.get("auths") or {}
    for key in (registry, f"https://{registry}", f"http://{registry}"):
        entry = auths.get(key) or {}
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, password
        if entry.get("username"):
            return entry["username"], entry.get("password", "")
    helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
    return _from_credential_helper(helper, registry) if helper else None


def _from_credential_helper(helper: str, registry: str) -> tuple[str, str] | None:
    """``docker-credential-HELPER get`` (the docker-credential-helpers protocol: the server on
    stdin, {"Username", "Secret"} on stdout), as `docker login` with a store leaves them."""
    import shutil
    import subprocess

    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        return None
    try:
        result = subprocess.run([program, "get"], input=registry, capture_output=True,
                                text=True, timeout=30, check=False)
        found = json.loads(result.stdout) if result.returncode == 0 else {}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    if not isinstance(found, dict) or not found.get("Secret"):
        return None  # "credentials not found in native keychain": anonymous, as docker does
    return str(found.get("Username", "")), str(found["Secret"])


def _base_url(registry: str) -> str:
    # dockerd talks plain HTTP to loopback registries (its default insecure 127.0.0.0/8).
    host = registry.rsplit(":", 1)[0].strip("[]")
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    return f"{'http' if loopback else 'https'}://{registry}"


class RegistryClient:
    """Registry HTTP API v2 with basic or bearer auth, as the registry asks."""

    def __init__(self, registry: str, auth: tuple[str, str] | None) -> None:
        import requests

        self.registry = registry
        self.base = _base_url(registry)
        self.auth = auth
        self.session = requests.Session()
        self.header: dict[str, str] = {}

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
                    self.auth or challenge.lower().startswith("bearer ")):
                self._authenticate(challenge, scope)
                response = self.session.request(method, url, timeout=15,
                                                headers={**(headers or {}), **self.header})
        except requests.exceptions.RequestException as err:
            raise TransientRegistryError(
                f"registry {self.registry} is unreachable ({self.base}): "
                f"{_reason(err)}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientRegistryError(f"registry {self.registry} answered "
                                         f"HTTP {response.status_code} on {path}")
        if response.status_code == 401:
            who = f"as {self.auth[0]!r}" if self.auth else "without credentials"
            raise RegistryError(
                f"authentication to registry {self.registry} failed {who} (HTTP 401)",
                hint="pass --registry-auth USER:PASSWORD, set MLSHIP_REGISTRY_USERNAME/"
                     "MLSHIP_REGISTRY_PASSWORD, or `docker login` to it")
        return response

    def _authenticate(self, challenge: str, scope: str | None) -> None:
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() != "bearer":
            assert self.auth is not None
            token = base64.b64encode(":".join(self.auth).encode()).decode()
            self.header = {"Authorization": f"Basic {token}"}
            return
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        query = {"service": fields.get("service", "")}
        if scope or fields.get("scope"):
            query["scope"] = scope or fields["scope"]
        reply = self.session.get(fields["realm"], params=query, auth=self.auth, timeout=15)
        if reply.status_code != 200:
            who = f"as {self.auth[0]!r}" if self.auth else "anonymously"
            raise RegistryError(f"authentication to registry {self.registry} failed {who}: "
                                f"token endpoint answered {reply.status_code}",
                                hint="pass --registry-auth USER:PASSWORD, set "
                                     "MLSHIP_REGISTRY_USERNAME/MLSHIP_REGISTRY_PASSWORD, or "
                                     "`docker login` to it")
        body = reply.json()
        self.header = {"Authorization": f"Bearer {body.get('token') or body['access_token']}"}

    def check(self) -> None:
        """GET /v2/: the registry answers, and accepts our credentials."""
        self.get("/v2/")

    def manifest_digest(self, target: Target) -> str:
        path = f"/v2/{target.repository}/manifests/{target.tag}"
        scope = f"repository:{target.repository}:pull"
        response = self.get(path, method="HEAD", scope=scope, headers={"Accept": MANIFEST_TYPES})
        digest = response.headers.get("Docker-Content-Digest")
        if response.status_code == 200 and digest:
            return digest
        response = self.get(path, scope=scope, headers={"Accept": MANIFEST_TYPES})
        if response.status_code != 200:
            raise RegistryError(f"{target.reference}: the registry has no such manifest "
                                f"(HTTP {response.status_code}) right after the push")
        import hashlib

        return response.headers.get("Docker-Content-Digest") or \
            "sha256:" + hashlib.sha256(response.content).hexdigest()


def _reason(err: Exception) -> str:
    text = str(err).lower()
    for words in ("connection refused", "timed out", "name or service not known",
                  "certificate verify failed", "connection reset"):
        if words in text:
            return words
    return type(err).__name__


def _retrying(function: Any) -> Any:
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

    return retry(retry=retry_if_exception_type(TransientRegistryError), reraise=True,
                 stop=stop_after_attempt(ATTEMPTS),
                 wait=wait_exponential(multiplier=0.5, max=8))(function)


def push_image(client: docker.DockerClient, image: str, *,
               registry_auth: str | None = None) -> str:
    """Push ``image`` (registry/repo:tag) and return its verified digest."""
    target = parse_target(image)
    _require_local(client, target)
    auth = credentials(target.registry, registry_auth)
    registry = RegistryClient(target.registry, auth)
    auth_config = {"username": auth[0], "password": auth[1]} if auth else None
    try:
        _retrying(registry.check)()
        pushed = _retrying(_push_once)(client, target, auth_config)
        verified = _retrying(registry.manifest_digest)(target)
    except TransientRegistryError as err:
        # Retries are spent: report it as the plain registry failure it now is.
        raise RegistryError(f"{err.message} (after {ATTEMPTS} attempts)",
                            hint="check that the registry is running and that image.registry "
                                 "names it") from None
    if verified != pushed:
        raise RegistryError(f"{target.reference}: digest mismatch: the push reported {pushed}, "
                            f"the registry serves {verified}",
                            hint="another push to the same tag raced this one; push again")
    return str(verified)


def _require_local(client: docker.DockerClient, target: Target) -> None:
    """A push needs the image in the local engine: a Docker problem (exit 4), not a registry one."""
    import docker.errors

    try:
        client.images.get(target.reference)
    except docker.errors.ImageNotFound:
        raise DockerError(f"{target.reference}: no such image in the local Docker engine",
                          hint="build it first (`mlship build`), or tag an existing image with "
                               "this name") from None
    except docker.errors.DockerException:
        pass  # an unreachable engine is reported, with its hint, by the push itself


def _push_once(client: docker.DockerClient, target: Target,
               auth_config: dict[str, str] | None) -> str:
    digest = None
    repository = f"{target.registry}/{target.repository}"
    with docker_errors(f"pushing {target.reference}"):
        for event in client.api.push(repository, tag=target.tag, stream=True, decode=True,
                                     auth_config=auth_config):
            if "error" in event or "errorDetail" in event:
                message = event.get("errorDetail", {}).get("message") or event.get("error")
                kind = TransientRegistryError if _TRANSIENT.search(str(message)) \
                    else RegistryError
                if re.search(r"unauthori[sz]ed|authentication required|denied", str(message),
                             re.IGNORECASE):
                    kind = RegistryError
                raise kind(f"push of {target.reference} failed: {message}")
            aux = event.get("aux") or {}
            if aux.get("Digest"):
                digest = aux["Digest"]
    if not digest:
        raise RegistryError(f"push of {target.reference} reported no digest")
    return str(digest)
