"""The Prometheus HTTP API (instant queries), reached as ``rollout.analysis.prometheus`` says.

One GET per query, with the standard library's HTTP client: a bearer token (its file re-read
at every query, so a rotated token works), basic auth, extra headers (``X-Scope-OrgID``), a CA
bundle, or an AWS SigV4 signature (botocore's ``SigV4Auth`` and credential chain) for Amazon
Managed Prometheus. Credentials go over https, or to a loopback address; plain http elsewhere
only with ``allow_plain_http``. A refusal (401/403) is one line naming what was sent.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from mlship.config.prometheus import PASSWORD_ENV, TOKEN_ENV, PrometheusAccess
from mlship.errors import ConfigError, RolloutError

_HINT = ("set rollout.analysis.prometheus_url or --prometheus-url (a port-forward to Prometheus "
         "works)")
_AUTH_HINT = ("check rollout.analysis.prometheus (bearer_token_file or MLSHIP_PROMETHEUS_TOKEN, "
              "basic_auth, sigv4, headers such as X-Scope-OrgID)")


@dataclass(frozen=True)
class Access:
    """Resolved access: static headers, a per-query header source, TLS, a request signer."""

    headers: dict[str, str] = field(default_factory=dict)
    dynamic: Callable[[], dict[str, str]] | None = None  # a bearer token file, re-read
    signer: Callable[[str, dict[str, str]], dict[str, str]] | None = None  # SigV4
    context: ssl.SSLContext | None = None
    described: str = "anonymously"

    @classmethod
    def from_settings(cls, settings: PrometheusAccess, url: str, *, base: Path | None = None,
                      environ: Mapping[str, str] | None = None) -> Access:
        """ConfigError (exit 2) when a named file is missing or credentials would cross the
        network in clear text."""
        env = os.environ if environ is None else environ
        base = base or Path.cwd()
        headers = dict(settings.headers)
        dynamic = signer = None
        described = "anonymously"
        if env.get(TOKEN_ENV) and settings.basic_auth is None and settings.sigv4 is None:
            headers["Authorization"] = f"Bearer {_one_line(env[TOKEN_ENV], TOKEN_ENV)}"
            described = f"with the bearer token of {TOKEN_ENV}"
        elif settings.bearer_token_file:
            path = _path(base, settings.bearer_token_file)
            _readable(path, "rollout.analysis.prometheus.bearer_token_file")
            dynamic = lambda: {"Authorization": f"Bearer {_secret(path)}"}  # noqa: E731
            described = f"with the bearer token in {path}"
        elif settings.basic_auth is not None:
            auth = settings.basic_auth
            if auth.password_file:
                path = _path(base, auth.password_file)
                _readable(path, "rollout.analysis.prometheus.basic_auth.password_file")
                password = _secret(path)
            elif env.get(PASSWORD_ENV):
                password = env[PASSWORD_ENV]
            else:
                raise ConfigError(f"rollout.analysis.prometheus.basic_auth: user "
                                  f"{auth.username!r} has no password",
                                  hint=f"set basic_auth.password_file, or {PASSWORD_ENV}")
            token = base64.b64encode(f"{auth.username}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
            described = f"as {auth.username!r}"
        elif settings.sigv4 is not None:
            signer = _sigv4(settings, env)
            described = f"with AWS SigV4 ({settings.sigv4.service})"
        if described != "anonymously":
            _require_private_channel(url, settings.allow_plain_http)
        context = None
        if settings.ca_file:
            path = _path(base, settings.ca_file)
            _readable(path, "rollout.analysis.prometheus.ca_file")
            context = ssl.create_default_context(cafile=str(path))
        return cls(headers, dynamic, signer, context, described)


def _path(base: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


def _readable(path: Path, key: str) -> None:
    if not path.is_file():
        raise ConfigError(f"{key}: {path}: no such file")


def _secret(path: Path) -> str:
    try:
        return _one_line(path.read_text(encoding="utf-8").strip(), str(path))
    except OSError as err:
        raise RolloutError(f"{path}: cannot read it: {err.strerror}") from None


def _one_line(secret: str, where: str) -> str:
    if "\r" in secret or "\n" in secret:
        raise ConfigError(f"{where}: a credential cannot hold a line break")
    return secret.strip()


def _require_private_channel(url: str, allowed: bool) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme == "https" or loopback or allowed:
        return
    raise ConfigError(f"rollout.analysis.prometheus: credentials for {url} would go over plain "
                      f"http to {host}, unencrypted",
                      hint="use an https prometheus_url, a port-forward (loopback), or set "
                           "rollout.analysis.prometheus.allow_plain_http: true for a "
                           "cluster-internal Service")


def _sigv4(settings: PrometheusAccess, env: Mapping[str, str]) -> Callable[
        [str, dict[str, str]], dict[str, str]]:
    """A signer with botocore's SigV4 and its default credential chain (env, web identity,
    shared files, SSO, container and instance roles), credentials renewed as they expire."""
    import botocore.session
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    sigv4 = settings.sigv4
    assert sigv4 is not None
    session = botocore.session.Session(profile=sigv4.profile)
    region = sigv4.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or \
        session.get_config_variable("region")
    if not region:
        raise ConfigError("rollout.analysis.prometheus.sigv4: no region",
                          hint="set sigv4.region, or AWS_REGION")
    credentials = session.get_credentials()
    if credentials is None:
        raise ConfigError("rollout.analysis.prometheus.sigv4: no AWS credentials",
                          hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
                               "run with a role (IRSA, Pod Identity, instance profile)")

    def sign(url: str, headers: dict[str, str]) -> dict[str, str]:
        request = AWSRequest(method="GET", url=url, headers=headers)
        SigV4Auth(credentials.get_frozen_credentials(), sigv4.service, region).add_auth(request)
        return dict(request.headers.items())

    return sign


class Prometheus:
    """The Prometheus HTTP API at ``url`` (instant queries only)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, access: Access | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.access = access or Access()

    def _request(self, address: str) -> urllib.request.Request:
        headers = {"Accept": "application/json", **self.access.headers}
        if self.access.dynamic is not None:
            headers.update(self.access.dynamic())
        if self.access.signer is not None:
            headers = self.access.signer(address, headers)
        return urllib.request.Request(address, headers=headers)

    def query(self, promql: str) -> tuple[float | None, float]:
        """(the single value of ``promql`` or None when empty/NaN, milliseconds taken)."""
        started = time.perf_counter()
        data = self._data(promql)
        return _single_value(data), (time.perf_counter() - started) * 1000

    def label_values(self, promql: str, label: str) -> list[str]:
        """The values of ``label`` across the series ``promql`` returns."""
        result = self._data(promql).get("result") or []
        return sorted({str(item.get("metric", {}).get(label, "")) for item in result})

    def _data(self, promql: str) -> dict[str, Any]:
        # RFC 3986 encoding (%20, never '+'): what a SigV4 signature is computed over.
        address = f"{self.url}/api/v1/query?{urlencode({'query': promql}, quote_via=quote)}"
        try:
            with urllib.request.urlopen(self._request(address), timeout=self.timeout_s,
                                        context=self.access.context) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise self._refused(err, promql) from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise RolloutError(f"cannot query Prometheus at {self.url}: {reason}",
                               hint=_HINT) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", body) if isinstance(body, dict) else body
            raise RolloutError(f"Prometheus at {self.url} failed the query {promql!r}: {error}")
        return body.get("data") or {}

    def _refused(self, err: urllib.error.HTTPError, promql: str) -> RolloutError:
        text = err.read()[:300]
        body = _json_or_none(text)
        if err.code in (401, 403):
            detail = body.get("error") if isinstance(body, dict) else \
                text.decode(errors="replace").strip()
            return RolloutError(f"Prometheus at {self.url} refused the query "
                                f"{self.access.described} (HTTP {err.code})"
                                + (f": {detail}" if detail else ""), hint=_AUTH_HINT)
        detail = body.get("error") if isinstance(body, dict) else f"HTTP {err.code}"
        return RolloutError(f"Prometheus at {self.url} rejected the query {promql!r}: {detail}")

    def check(self) -> float:
        """Fail early, before anything changes, when Prometheus cannot answer; milliseconds."""
        _, elapsed = self.query("vector(1)")
        return elapsed


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _single_value(data: dict[str, Any]) -> float | None:
    result = data.get("result")
    if data.get("resultType") == "scalar":
        raw = result[1] if result else None
    elif result:
        raw = result[0]["value"][1]
    else:
        raw = None
    if raw is None:
        return None
    value = float(raw)
    return None if math.isnan(value) or math.isinf(value) else value
