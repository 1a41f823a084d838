"""Push an image, believe nothing the push stream says, and verify the digest in the registry.

docker-py's ``push()`` does not raise when a push fails: the failure is an ``error`` /
``errorDetail`` entry in the stream, so every entry is read. Before pushing, the registry's
``/v2/`` endpoint is probed with the same credentials (unreachable and wrong credentials are
then clear exit-6 errors instead of a daemon message); afterwards the manifest is fetched
over the registry HTTP API (``mlship.image.registry``) and its ``Docker-Content-Digest`` must
equal the digest the push reported. Credentials: ``mlship.image.credentials``; the engine gets
the same one (a username and password, or an identity token). Transient failures are retried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlship.config.quantities import parse_image_ref
from mlship.errors import BadInputError, DockerError, RegistryError
from mlship.image import registry as api
from mlship.image.credentials import RegistryCredential, credentials
from mlship.image.engine import docker_errors

if TYPE_CHECKING:
    import docker

_TRANSIENT = re.compile(r"connection refused|timeout|timed out|temporar|reset by peer|EOF|"
                        r"\b50[234]\b|\b429\b|too many requests", re.IGNORECASE)


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
                            hint="set image.registry in mlship.yaml (e.g. 127.0.0.1:5000, or "
                                 "docker.io/ORG for Docker Hub)")
    return Target(ref.registry, ref.path, ref.tag or "latest")


def push_image(client: docker.DockerClient, image: str, *,
               login: RegistryCredential | None = None) -> str:
    """Push ``image`` (registry/repo:tag) and return its verified digest."""
    target = parse_target(image)
    _require_local(client, target)
    credential = credentials(target.registry, login)
    registry = api.RegistryClient(target.registry, credential)
    auth_config = credential.auth_config() if credential else None
    try:
        api.retrying(registry.check)()
        pushed = api.retrying(_push_once)(client, target, auth_config)
        verified = api.retrying(registry.manifest_digest)(target.repository, target.tag)
    except api.TransientRegistryError as err:
        # Retries are spent: report it as the plain registry failure it now is.
        raise RegistryError(f"{err.message} (after {api.ATTEMPTS} attempts)",
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
                kind = api.TransientRegistryError if _TRANSIENT.search(str(message)) \
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
