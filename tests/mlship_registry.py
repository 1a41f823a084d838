"""Loopback registries with a token service, and real docker credential helpers, for the tests.

``TokenRegistry`` serves the distribution spec's token flow over real HTTP on 127.0.0.1: the API
answers 401 with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``; its realm hands
out pull tokens anonymously for ``public/`` repositories, and for ``private/`` ones only for the
right basic credentials (GET) or the right identity token (the OAuth2 refresh-token grant, a
POST). ``realm`` can be set to another URL (a realm the client must refuse to send secrets to).

``write_helper`` writes a ``docker-credential-NAME`` program speaking the credential-helper
protocol (``get``, the server URL on stdin, ``{"ServerURL","Username","Secret"}`` on stdout,
exit 1 with "credentials not found in native keychain" otherwise), as the real ones do.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

DIGEST = "sha256:" + "d" * 64
USER, PASSWORD = "robot", "s3cret"
IDENTITY_TOKEN = "refresh-0123456789abcdef"


class _Handler(BaseHTTPRequestHandler):
    registry: ClassVar[TokenRegistry]

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

    def _token(self, repository: str, allowed: bool) -> None:
        if repository.startswith("private/") and not allowed:
            self._reply(401)
            return
        token = f"t{len(self.registry.tokens)}"
        self.registry.tokens[token] = repository
        self._reply(200, {"Content-Type": "application/json"},
                    json.dumps({"token": token, "access_token": token}).encode())

    def do_POST(self) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        form = {key: values[0] for key, values in
                parse_qs(self.rfile.read(length).decode()).items()}
        self.registry.token_requests.append({"method": "POST", **form})
        if url.path != "/token" or form.get("grant_type") != "refresh_token":
            self._reply(400)
            return
        scope = form.get("scope", "")
        repository = scope.split(":")[1] if scope.count(":") == 2 else ""
        self._token(repository, form.get("refresh_token") == IDENTITY_TOKEN)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/token":
            query = {key: values[0] for key, values in parse_qs(url.query).items()}
            self.registry.token_requests.append(
                {"method": "GET", "authorization": self.headers.get("Authorization"), **query})
            scope = query.get("scope", "")
            repository = scope.split(":")[1] if scope.count(":") == 2 else ""
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            self._token(repository, self.headers.get("Authorization") == expected)
            return
        repository, _, _ = url.path.removeprefix("/v2/").partition("/manifests/")
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.registry.tokens.get(token) != repository:
            realm = self.registry.realm or f"{self.registry.url}/token"
            self._reply(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="loopback",'
                                                  f'scope="repository:{repository}:pull"'})
            return
        if repository.endswith("/missing"):
            self._reply(404)
            return
        self._reply(200, {"Docker-Content-Digest": DIGEST})

    do_HEAD = do_GET


class TokenRegistry:
    """``with TokenRegistry() as registry:`` ... ``registry.address`` is 127.0.0.1:PORT."""

    def __init__(self, realm: str | None = None) -> None:
        self.realm = realm
        self.tokens: dict[str, str] = {}  # token -> the repository it may pull
        self.token_requests: list[dict[str, Any]] = []
        handler = type("Handler", (_Handler,), {"registry": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.address = f"127.0.0.1:{self.server.server_port}"
        self.url = f"http://{self.address}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TokenRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_helper(bin_dir: Path, name: str, entries: dict[str, tuple[str, str]]) -> Path:
    """``docker-credential-NAME``: server URL -> (Username, Secret); ``<token>`` as the user
    means the secret is an identity token (what docker stores for OAuth registries)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    cases = "".join(
        f"  {json.dumps(server)}) printf '%s' {_sh(json.dumps({'ServerURL': server, 'Username': user, 'Secret': secret}))} ;;\n"  # noqa: E501
        for server, (user, secret) in entries.items())
    program = bin_dir / f"docker-credential-{name}"
    program.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || { echo "unsupported: $1" >&2; exit 1; }\n'
        'read -r server\n'
        f'echo "$server" >> "$0.log"\n'
        'case "$server" in\n'
        f"{cases}"
        '  *) echo "credentials not found in native keychain"; exit 1 ;;\n'
        "esac\n")
    program.chmod(0o755)
    return program


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def docker_config(directory: Path, document: dict[str, Any]) -> Path:
    """``$DOCKER_CONFIG/config.json`` as `docker login` writes it (mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(document, indent="\t"))
    path.chmod(0o600)
    return directory


def basic(user: str, password: str) -> str:
    """An ``auths`` entry's ``auth`` value."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()
