"""The Docker engine through docker-py: one client from the environment, and the one mapping
of docker-py and connection exceptions to ``MlshipError`` (exit 4), shared by build, push and
the smoke test.

The engine is found as the docker CLI finds it: ``DOCKER_HOST`` (with ``DOCKER_TLS_VERIFY`` and
``DOCKER_CERT_PATH``), else the active Docker context (``DOCKER_CONTEXT``, else
``currentContext`` in docker's config.json: Docker Desktop, colima, a remote engine over ssh or
TLS), else the default socket. docker-py honours contexts in ``from_env`` since 7.2.0 (earlier
releases read DOCKER_HOST only), hence ``docker>=7.2``. Messages name the endpoint and where it
came from, so "cannot reach the engine" says which engine.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlship.errors import DockerError, MlshipError

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class Endpoint:
    """Where the engine is expected, and why there."""

    host: str  # unix:///var/run/docker.sock, tcp://..., ssh://...
    origin: str  # DOCKER_HOST, or the context and what selected it
    context: str | None = None  # the Docker context, None when DOCKER_HOST decides

    def describe(self) -> str:
        if self.context is None:
            return f"DOCKER_HOST={self.host}"
        return f"{self.host} ({self.origin})"


def _selected_context() -> tuple[str, str]:
    """(context name, what selected it), as the docker CLI decides."""
    name = os.environ.get("DOCKER_CONTEXT")
    if name:
        return name, "DOCKER_CONTEXT"
    directory = os.environ.get("DOCKER_CONFIG")
    config = Path(directory) / "config.json" if directory else \
        Path.home() / ".docker" / "config.json"
    try:
        current = json.loads(config.read_text(encoding="utf-8")).get("currentContext")
    except (OSError, ValueError, AttributeError):
        current = None
    if current:
        return str(current), f"currentContext in {config}"
    return "default", "the default context"


def engine_endpoint(*, strict: bool = True) -> Endpoint:
    """The engine ``docker.from_env`` will talk to; with ``strict``, DockerError for a context
    that does not exist (docker-py would silently fall back to the default socket)."""
    from docker.constants import DEFAULT_NPIPE, DEFAULT_UNIX_SOCKET, IS_WINDOWS_PLATFORM

    host = os.environ.get("DOCKER_HOST")
    if host:
        return Endpoint(host, "DOCKER_HOST")
    name, origin = _selected_context()
    if name == "default":
        socket = DEFAULT_NPIPE if IS_WINDOWS_PLATFORM else \
            DEFAULT_UNIX_SOCKET.removeprefix("http+")
        return Endpoint(socket, origin, "default")
    from docker.context import ContextAPI

    try:
        context = ContextAPI.get_context(name)
    except Exception:  # a broken meta.json: reported like a missing one
        context = None
    if context is None or not context.Host:
        if strict:
            raise DockerError(f"Docker context {name!r} ({origin}) does not exist",
                              hint=_missing_context_hint(name))
        return Endpoint(f"context {name!r}", origin, name)
    return Endpoint(str(context.Host), f"Docker context {name!r}, {origin}", name)


def _missing_context_hint(name: str) -> str:
    hint = ("`docker context ls` lists the contexts; `docker context use default`, unset "
            "DOCKER_CONTEXT, or set DOCKER_HOST")
    directory = os.environ.get("DOCKER_CONFIG")
    if directory and not (Path(directory) / "config.json").is_file():
        import hashlib

        meta = (Path(directory) / "contexts" / "meta" / hashlib.sha256(name.encode())
                .hexdigest() / "meta.json")
        if meta.is_file():  # docker-py looks for contexts beside config.json only
            hint = (f"{meta} exists, but docker-py finds contexts only beside a config.json "
                    f"and {directory} has none: `docker context use {name}` writes it")
    return hint


@contextlib.contextmanager
def docker_errors(action: str) -> Iterator[None]:
    """The one place docker-py and connection exceptions become MlshipErrors (exit 4)."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except MlshipError:
        raise
    except docker.errors.ImageNotFound as err:
        raise DockerError(f"{action}: image not found: {err.explanation or err}") from None
    except docker.errors.APIError as err:
        raise DockerError(f"{action}: the Docker engine refused: "
                          f"{err.explanation or err}") from None
    except (docker.errors.DockerException, requests.exceptions.ConnectionError,
            ConnectionError) as err:
        endpoint = engine_endpoint(strict=False)
        hint = ("start the engine (`sudo systemctl start docker`, or `dockerd &`), or point "
                "DOCKER_HOST at a running one")
        if endpoint.context not in (None, "default"):
            hint = (f"start the engine of context {endpoint.context!r}, switch context "
                    "(`docker context use default`, or DOCKER_CONTEXT), or set DOCKER_HOST")
        raise DockerError(f"{action}: cannot reach the Docker engine at "
                          f"{endpoint.describe()}: {_short(err)}", hint=hint) from None


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:200] if text else type(err).__name__


def docker_client() -> docker.DockerClient:
    """A client for the engine ``engine_endpoint`` names, checked with a ping."""
    import docker

    engine_endpoint()  # an unknown context fails here, naming it
    with docker_errors("connecting to Docker"):
        client = docker.from_env(timeout=600)
        client.ping()
    return client
