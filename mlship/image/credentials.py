"""Registry credentials, found where docker finds them.

First match wins: a login given on the command line (``--registry-username`` with the password
on stdin, ``--registry-password-stdin``), then ``MLSHIP_REGISTRY_USERNAME`` /
``MLSHIP_REGISTRY_PASSWORD``, then docker's ``config.json`` (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``) resolved by docker-py's own ``docker.auth``, as the docker CLI
resolves it: a ``credHelpers`` entry for the registry, else the ``credsStore`` (both run the
``docker-credential-*`` program), before a possibly stale ``auths`` entry; Docker Hub under its
historical key ``https://index.docker.io/v1/``; an ``identitytoken`` (what ``docker login``
keeps for ACR and OAuth registries, or a helper's ``<token>`` user) as an identity token, not
as a password. A password never comes from the command line itself, where ``ps`` and shell
history would show it.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlship.errors import BadInputError, RegistryError

# The registry hosts docker files under Docker Hub's one key.
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True)
class RegistryCredential:
    """A username and password, or an identity token (an OAuth2 refresh token)."""

    source: str  # where it came from, for messages: never the secret itself
    username: str = ""
    password: str = ""
    identity_token: str = ""

    def describe(self) -> str:
        """``as 'robot' (from MLSHIP_REGISTRY_USERNAME)`` or ``with the identity token from …``."""
        if self.identity_token:
            return f"with the identity token from {self.source}"
        return f"as {self.username!r} (from {self.source})"

    def auth_config(self) -> dict[str, str]:
        """The engine's AuthConfig (X-Registry-Auth) for a push by the Docker engine."""
        if self.identity_token:
            return {"identitytoken": self.identity_token}
        return {"username": self.username, "password": self.password}


def login(username: str | None, password: str | None, *, source: str) -> RegistryCredential:
    """A credential given to this run (the command line, the environment)."""
    if not username:
        raise BadInputError(f"{source}: a registry password needs its username",
                            hint="pass --registry-username USER, or set "
                                 "MLSHIP_REGISTRY_USERNAME")
    if not password:
        raise BadInputError(f"{source}: registry user {username!r} has no password",
                            hint="pipe it in with --registry-password-stdin, or set "
                                 "MLSHIP_REGISTRY_PASSWORD")
    return RegistryCredential(source, username=username, password=password)


def auth_key(registry: str) -> str:
    """The name docker keys a registry's credentials by: ``docker.io`` for every Docker Hub
    host (docker.auth maps it to ``https://index.docker.io/v1/``), else the host[:port]."""
    return "docker.io" if registry in DOCKER_HUB_HOSTS else registry


def docker_config_file() -> Path:
    """The docker CLI's rule: ``$DOCKER_CONFIG/config.json`` when DOCKER_CONFIG is set (and
    only then that one), else ``~/.docker/config.json``."""
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker" / \
        "config.json"


def credentials(registry: str,
                explicit: RegistryCredential | None = None) -> RegistryCredential | None:
    """The credential for ``registry``; None means anonymous."""
    if explicit is not None:
        return explicit
    env_user = os.environ.get("MLSHIP_REGISTRY_USERNAME")
    if env_user:
        return login(env_user, os.environ.get("MLSHIP_REGISTRY_PASSWORD", ""),
                     source="MLSHIP_REGISTRY_USERNAME/MLSHIP_REGISTRY_PASSWORD")
    return from_docker_config(registry)


def from_docker_config(registry: str, path: Path | None = None) -> RegistryCredential | None:
    """What ``docker login`` left for ``registry`` in docker's config.json, through docker-py."""
    import docker.auth
    import docker.errors

    path = path or docker_config_file()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise BadInputError(f"{path}: not a readable docker config file ({err})",
                            hint="fix or remove it (`docker login` writes it)") from None
    if not isinstance(document, dict):
        raise BadInputError(f"{path}: not a docker config file (a JSON object)")
    key = auth_key(registry)
    try:
        store = docker.auth.load_config(config_path=str(path), config_dict=document)
        with warnings.catch_warnings():  # docker-py warns of a missing helper; we raise below
            warnings.simplefilter("ignore")
            found = store.resolve_authconfig(key)
    except docker.errors.InvalidConfigFile as err:
        raise BadInputError(f"{path}: {err}", hint="fix the entry, or `docker login` "
                                                   "again") from None
    except docker.errors.DockerException as err:
        helper = store.get_credential_store(key)
        raise RegistryError(
            f"{path}: the credential helper docker-credential-{helper} failed for {registry}: "
            f"{_helper_reason(err)}",
            hint=f"install docker-credential-{helper} on PATH, or remove "
                 f"{'credsStore' if helper == store.creds_store else 'credHelpers'} from "
                 f"{path}") from None
    return _credential(found, store, key, path) if found else None


def _credential(found: dict[str, Any], store: Any, key: str,
                path: Path) -> RegistryCredential | None:
    # Entries from a helper carry ServerAddress; those from auths do not.
    helper = store.get_credential_store(key) if "ServerAddress" in found else None
    source = f"docker-credential-{helper}" if helper else f"{path} (auths)"
    token = found.get("IdentityToken") or found.get("identitytoken")
    if token:
        return RegistryCredential(source, identity_token=str(token))
    username = found.get("Username") or found.get("username") or ""
    password = found.get("Password") or found.get("password") or ""
    if not username:
        return None  # an empty entry (`{}`, as `docker login` with a store leaves): anonymous
    return RegistryCredential(source, username=str(username), password=str(password))


def _helper_reason(err: Exception) -> str:
    text = str(err)
    if "not installed or not available in PATH" in text:
        return "it is not installed or not on PATH"
    return text.removeprefix("Credentials store error: ").strip()[:200]
