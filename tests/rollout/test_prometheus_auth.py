"""Canary analysis against a real Prometheus that wants credentials: behind a loopback proxy
that demands a bearer token and a tenant header (as Mimir/Cortex/Thanos gateways do), behind
Prometheus' own TLS and basic auth (its --web.config.file, a private CA), and behind a proxy
that verifies AWS SigV4 signatures (Amazon Managed Prometheus), each computed independently
with the runtime's stdlib signer."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from mlship_prometheus import PrometheusServer

from mlship.config.load import validate_config
from mlship.config.prometheus import PrometheusAccess
from mlship.config.rollout import AnalysisSettings
from mlship.errors import ConfigError, RolloutError
from mlship.rollout.analysis import analyse
from mlship.rollout.prometheus import Access, Prometheus

pytestmark = pytest.mark.prometheus
Check = Callable[[BaseHTTPRequestHandler], tuple[int, str] | None]


class Proxy:
    """A loopback reverse proxy to ``upstream``: ``check`` refuses a request (status, message)
    or lets it through (None); ``strip`` is a path prefix the upstream does not have."""

    def __init__(self, upstream: str, check: Check, strip: str = "") -> None:
        self.seen: list[dict[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.seen.append({k.lower(): v for k, v in self.headers.items()})
                refused = check(self)
                if refused is None:
                    target = upstream + self.path.removeprefix(strip)
                    with urllib.request.urlopen(target, timeout=10) as response:
                        status, body = response.status, response.read()
                else:
                    status, body = refused[0], refused[1].encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{strip}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def proxied(upstream: str, check: Check, strip: str = "") -> Iterator[Proxy]:
    proxy = Proxy(upstream, check, strip)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


def _client(settings: PrometheusAccess, url: str, **environ: str) -> Prometheus:
    return Prometheus(url, access=Access.from_settings(settings, url, environ=environ),
                      timeout_s=5)


def test_bearer_token_file_and_tenant_header(prometheus, tmp_path: Path) -> None:
    """A Mimir-style gateway: the token and the tenant's X-Scope-OrgID, on every query; the
    token file is read again for each, so a rotated token keeps working."""
    expected = {"token": "tok-1"}

    def gateway(handler: BaseHTTPRequestHandler) -> tuple[int, str] | None:
        if handler.headers.get("X-Scope-OrgID") != "team-a":
            return 401, "no org id"
        if handler.headers.get("Authorization") != f"Bearer {expected['token']}":
            return 401, "invalid token"
        return None

    token = tmp_path / "token"
    token.write_text("tok-1\n")
    settings = PrometheusAccess(bearer_token_file=str(token), headers={"X-Scope-OrgID": "team-a"})
    with proxied(prometheus.url, gateway) as proxy:
        client = _client(settings, proxy.url)
        assert client.query("vector(1)")[0] == 1.0
        verdict = analyse(client, "iris", "rev-1", AnalysisSettings())
        assert verdict.status == "inconclusive"
        assert verdict.reason.startswith("too few requests to judge: no canary requests")
        assert len(verdict.query_ms) == 5  # every query was answered, through the gateway
        token.write_text("tok-2")
        expected["token"] = "tok-2"
        assert client.query("vector(2)")[0] == 2.0
        expected["token"] = "tok-3"
        with pytest.raises(RolloutError) as caught:
            client.check()
        no_tenant = _client(PrometheusAccess(bearer_token_file=str(token)), proxy.url)
        with pytest.raises(RolloutError, match=r"\(HTTP 401\): no org id"):
            no_tenant.check()
        from_env = _client(PrometheusAccess(headers={"X-Scope-OrgID": "team-a"}), proxy.url,
                           MLSHIP_PROMETHEUS_TOKEN="tok-3")
        assert from_env.query("vector(3)")[0] == 3.0
    assert caught.value.message == (f"Prometheus at {proxy.url} refused the query with the "
                                    f"bearer token in {token} (HTTP 401): invalid token")
    assert "bearer_token_file" in (caught.value.hint or "")
    assert all(seen["x-scope-orgid"] == "team-a" for seen in proxy.seen[:-2])


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 (the openssl CLI)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=mlship test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


def test_basic_auth_and_a_private_ca_against_prometheus_itself(tmp_path: Path) -> None:
    """Prometheus serving https with a private CA and basic auth (its own --web.config.file)."""
    ca, cert, key = _certificates(tmp_path)
    hashed = subprocess.run(["htpasswd", "-nbBC", "10", "analyst", "s3cret"], check=True,
                            capture_output=True, text=True).stdout.strip().split(":", 1)[1]
    web = {"tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
           "basic_auth_users": {"analyst": hashed}}
    probe = (ssl.create_default_context(cafile=str(ca)),
             {"Authorization": "Basic " + base64.b64encode(b"analyst:s3cret").decode()})
    password = tmp_path / "password"
    password.write_text("s3cret")
    settings = PrometheusAccess(basic_auth={"username": "analyst",
                                            "password_file": str(password)}, ca_file=str(ca))
    with PrometheusServer(tmp_path / "prom", web_config=web, ready=probe) as server:
        assert server.url.startswith("https://127.0.0.1:")
        assert _client(settings, server.url).query("vector(1)")[0] == 1.0
        untrusted = _client(settings.model_copy(update={"ca_file": None}), server.url)
        with pytest.raises(RolloutError, match="certificate verify failed"):
            untrusted.check()
        password.write_text("wrong")
        with pytest.raises(RolloutError, match=r"refused the query as 'analyst' \(HTTP 401\)"):
            _client(settings, server.url).check()
        from_env = PrometheusAccess(basic_auth={"username": "analyst"}, ca_file=str(ca))
        assert _client(from_env, server.url, MLSHIP_PROMETHEUS_PASSWORD="s3cret").query(
            "vector(4)")[0] == 4.0


KEY, SECRET, SESSION = "AKIDMLSHIPTEST", "mlship/secret+key", "session-token/=="
REGION = "eu-west-1"


def _verify_sigv4(handler: BaseHTTPRequestHandler) -> tuple[int, str] | None:
    """Amazon Managed Prometheus' check, recomputed with mlship_runtime.s3.sign (a stdlib
    SigV4, not botocore's) over the request as it arrived."""
    from mlship_runtime.s3 import Credentials, sign

    authorization = handler.headers.get("Authorization", "")
    fields = dict(part.strip().split("=", 1) for part in
                  authorization.removeprefix("AWS4-HMAC-SHA256 ").split(","))
    scope = fields.get("Credential", "").split("/")
    if scope[:1] != [KEY] or scope[2:4] != [REGION, "aps"]:
        return 403, f"wrong credential scope: {fields.get('Credential')}"
    if handler.headers.get("X-Amz-Security-Token") != SESSION:
        return 403, "missing security token"
    parts = urlsplit(handler.path)
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                     for k, v in sorted(parse_qsl(parts.query, keep_blank_values=True)))
    names = fields["SignedHeaders"].split(";")
    headers = {name: handler.headers[name] for name in names}
    when = datetime.strptime(handler.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=timezone.utc)
    ours = sign("GET", parts.path, query, headers, hashlib.sha256(b"").hexdigest(),
                Credentials(KEY, SECRET, SESSION), REGION, when, service="aps")
    if ours.split("Signature=")[1] != fields["Signature"]:
        return 403, "The request signature we calculated does not match the signature you " \
                    "provided."
    return None


def test_sigv4_signed_queries_as_amazon_managed_prometheus(prometheus, monkeypatch) -> None:
    for variable, value in (("AWS_ACCESS_KEY_ID", KEY), ("AWS_SECRET_ACCESS_KEY", SECRET),
                            ("AWS_SESSION_TOKEN", SESSION), ("AWS_CONFIG_FILE", "/dev/null"),
                            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")):
        monkeypatch.setenv(variable, value)
    settings = PrometheusAccess(sigv4={"region": REGION})
    with proxied(prometheus.url, _verify_sigv4, strip="/workspaces/ws-mlship") as amp:
        client = _client(settings, amp.url)
        # A query with characters SigV4 must encode exactly as sent: spaces, quotes, braces.
        value, _ = client.query('sum(up{job="nothing here"}) or vector(5)')
        assert value == 5.0
        assert analyse(client, ("iris", "resnet"), "rev-2", AnalysisSettings()).status == \
            "inconclusive"
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(RolloutError, match=r"refused the query with AWS SigV4 \(aps\) "
                                               r"\(HTTP 403\): The request signature"):
            _client(settings, amp.url).check()


def test_credentials_never_cross_plain_http_off_loopback_unless_allowed(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("tok")
    settings = PrometheusAccess(bearer_token_file=str(token))
    with pytest.raises(ConfigError, match=r"would go over plain http to prometheus\.monitoring"):
        Access.from_settings(settings, "http://prometheus.monitoring:9090")
    allowed = settings.model_copy(update={"allow_plain_http": True})
    assert Access.from_settings(allowed, "http://prometheus.monitoring:9090").dynamic is not None
    assert Access.from_settings(settings, "https://prometheus.example.com").dynamic is not None
    with pytest.raises(ConfigError, match=r"bearer_token_file: .*absent: no such file"):
        Access.from_settings(PrometheusAccess(bearer_token_file=str(tmp_path / "absent")),
                             "https://prometheus.example.com")


@pytest.mark.parametrize(("prometheus_settings", "message"), [
    ({"bearer_token_file": "t", "basic_auth": {"username": "u"}},
     "rollout.analysis.prometheus.basic_auth: '...' is invalid: choose one of "
     "bearer_token_file, basic_auth"),
    ({"headers": {"Authorization": "Bearer x"}},
     "is set by mlship from bearer_token_file, basic_auth or sigv4"),
    ({"headers": {"X-Scope-OrgID": "a\r\nX-Evil: 1"}}, "must be one line of printable text"),
])
def test_settings_mistakes_are_one_line(prometheus_settings: dict[str, Any],
                                        message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({"name": "iris", "model": {"source": "iris.onnx"},
                         "rollout": {"analysis": {"prometheus": prometheus_settings}}})
    assert message in caught.value.message
    assert "\n" not in caught.value.message

