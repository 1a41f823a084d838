"""Bearer-token registries (ghcr.io, Docker Hub, Harbor) over real HTTP on loopback.

The Debian registry in CI speaks basic auth only; a registry that issues tokens needs a token
service, so this file serves the distribution spec's token flow itself: /v2/ answers 401 with
``WWW-Authenticate: Bearer realm=...,service=...`` and the realm hands out a pull token,
anonymously for public repositories and with basic credentials for private ones.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from mlship.cluster.checks import check_images
from mlship.errors import RegistryError

DIGEST = "sha256:" + "d" * 64
USER, PASSWORD = "robot", "s3cret"


class _TokenRegistry(BaseHTTPRequestHandler):
    tokens: ClassVar[dict[str, str]] = {}  # token -> the repository it may pull
    token_requests: ClassVar[list[dict[str, list[str]]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, headers: dict[str, str] | None = None,
               body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/token":
            query = parse_qs(url.query)
            self.token_requests.append(query)
            scope = query.get("scope", [""])[0]
            repository = scope.split(":")[1] if scope.count(":") == 2 else ""
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if repository.startswith("private/") and \
                    self.headers.get("Authorization") != expected:
                self._reply(401)
                return
            token = f"t{len(self.tokens)}"
            self.tokens[token] = repository
            self._reply(200, {"Content-Type": "application/json"},
                        json.dumps({"token": token}).encode())
            return
        repository, _, _ = url.path.removeprefix("/v2/").partition("/manifests/")
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.tokens.get(token) != repository:
            realm = f"http://127.0.0.1:{self.server.server_port}/token"
            self._reply(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="loopback",'
                                                  f'scope="repository:{repository}:pull"'})
            return
        if repository.endswith("/missing"):
            self._reply(404)
            return
        self._reply(200, {"Docker-Content-Digest": DIGEST})

    do_HEAD = do_GET


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for variable in ("MLSHIP_REGISTRY_USERNAME", "MLSHIP_REGISTRY_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent")  # no docker login on this machine
    _TokenRegistry.tokens = {}
    _TokenRegistry.token_requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _deployment(image: str) -> list[dict]:
    return [{"kind": "Deployment", "metadata": {"name": "iris"},
             "spec": {"template": {"spec": {"containers": [{"name": "model", "image": image}]}}}}]


def test_a_public_image_is_found_with_an_anonymous_token(registry: str) -> None:
    check = check_images(_deployment(f"{registry}/public/iris:v1"))
    assert check.status == "passed"
    assert DIGEST in check.detail
    (query,) = _TokenRegistry.token_requests
    assert query["service"] == ["loopback"]
    assert query["scope"] == ["repository:public/iris:pull"]


def test_a_private_image_needs_credentials_and_says_how_to_give_them(registry: str) -> None:
    with pytest.raises(RegistryError) as caught:
        check_images(_deployment(f"{registry}/private/iris:v1"))
    assert "failed anonymously: token endpoint answered 401" in caught.value.message
    assert "--registry-auth" in (caught.value.hint or "")
    check = check_images(_deployment(f"{registry}/private/iris:v1"),
                         registry_auth=f"{USER}:{PASSWORD}")
    assert check.status == "passed"


def test_an_image_missing_behind_a_token_is_reported_as_missing(registry: str) -> None:
    with pytest.raises(RegistryError) as caught:
        check_images(_deployment(f"{registry}/public/missing:v1"))
    assert "not in the registry (HTTP 404" in caught.value.message
