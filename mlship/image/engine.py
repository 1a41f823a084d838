"""The Docker engine through docker-py: one client from the environment, and the one mapping
of docker-py and connection exceptions to ``MlshipError`` (exit 4), shared by build, push and
the smoke test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mlship.errors import DockerError, MlshipError

if TYPE_CHECKING:
    import docker


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
        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock (default)"
        raise DockerError(
            f"{action}: cannot reach the Docker engine at DOCKER_HOST={host}: {_short(err)}",
            hint="start the engine (`sudo systemctl start docker`, or `dockerd &`), or point "
                 "DOCKER_HOST at a running one") from None


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:200] if text else type(err).__name__


def docker_client() -> docker.DockerClient:
    """A client from the environment (DOCKER_HOST, DOCKER_TLS_VERIFY), checked with a ping."""
    import docker

    with docker_errors("connecting to Docker"):
        client = docker.from_env(timeout=600)
        client.ping()
    return client
