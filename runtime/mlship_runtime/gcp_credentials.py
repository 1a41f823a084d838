"""Google OAuth2 access tokens for Cloud Storage, found the way Google's client libraries find
them (``google.auth.default``), on the standard library:

1. ``GOOGLE_APPLICATION_CREDENTIALS``: a service-account key file (a JWT signed RS256 with its
   key, exchanged at its ``token_uri``) or an ``authorized_user`` file (a refresh token);
2. the gcloud application-default file (``gcloud auth application-default login`` on a laptop:
   ``$CLOUDSDK_CONFIG/application_default_credentials.json``, else
   ``~/.config/gcloud/application_default_credentials.json``);
3. the GCE/GKE metadata server (GKE Workload Identity), at ``GCE_METADATA_HOST`` (as google-auth
   honours it) or 169.254.169.254.

``STORAGE_EMULATOR_HOST`` is handled by the caller (mlship_runtime.gcs): no credentials then.
Errors are ``CredentialError``: one line naming the file or endpoint and what to do, never a
secret.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlship_runtime import rs256

DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
METADATA_IP = "169.254.169.254"
METADATA_TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"
READ_WRITE = "https://www.googleapis.com/auth/devstorage.read_write"
TOKEN_TIMEOUT_S = 30.0
METADATA_TIMEOUT_S = 3.0  # google-auth's: off GCE the address does not answer at all
JWT_LIFETIME_S = 3600
MAX_TOKEN_RESPONSE = 1 << 20
HINT = ("set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run `gcloud auth "
        "application-default login`, or run on GKE with Workload Identity")


class CredentialError(Exception):
    """No usable Google credentials, or a link of the chain failed."""


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)
    expires: float  # time.time() seconds
    source: str  # the file or endpoint it came from, for error messages
    account: str = ""  # the service account's e-mail, when known
    quota_project: str = ""


def adc_file(environ: Mapping[str, str]) -> Path:
    """Where ``gcloud auth application-default login`` writes its credentials."""
    config = environ.get("CLOUDSDK_CONFIG") or str(
        Path(environ.get("HOME") or "~").expanduser() / ".config" / "gcloud")
    return Path(config) / "application_default_credentials.json"


def metadata_host(environ: Mapping[str, str]) -> str:
    host = environ.get("GCE_METADATA_HOST") or environ.get("GCE_METADATA_ROOT") or METADATA_IP
    return host.removeprefix("http://").rstrip("/")


def resolve_token(environ: Mapping[str, str], scope: str = READ_ONLY) -> Token:
    """A fresh access token from the first link of the chain that has credentials."""
    explicit = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise CredentialError(f"GOOGLE_APPLICATION_CREDENTIALS={explicit}: no such file; "
                                  "point it at a service-account key file")
        return from_file(path, scope, "GOOGLE_APPLICATION_CREDENTIALS")
    adc = adc_file(environ)
    if adc.is_file():
        return from_file(adc, scope, "gcloud application-default credentials")
    return from_metadata(metadata_host(environ))


def from_file(path: Path, scope: str, what: str) -> Token:
    try:
        info = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CredentialError(f"{path} ({what}): not a readable JSON key file: {exc}") from None
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        return _service_account(info, path, scope)
    if kind == "authorized_user":
        return _authorized_user(info, path)
    raise CredentialError(f"{path} ({what}): credentials of type {kind!r} are not supported; "
                          "use a service_account key file or authorized_user credentials")


def _fields(info: dict[str, Any], path: Path, names: tuple[str, ...]) -> list[str]:
    missing = [name for name in names if not isinstance(info.get(name), str) or not info[name]]
    if missing:
        raise CredentialError(f"{path}: the key file lacks {', '.join(missing)}")
    return [info[name] for name in names]


def service_account_jwt(info: dict[str, Any], path: Path, scope: str, now: float) -> str:
    """The signed assertion a service account exchanges for an access token (RFC 7523)."""
    email, pem = _fields(info, path, ("client_email", "private_key"))
    token_uri = info.get("token_uri") or DEFAULT_TOKEN_URI
    try:
        key = rs256.load_pem(pem)
    except rs256.KeyFormatError as exc:
        raise CredentialError(f"{path}: private_key is not usable: {exc}") from None
    header = {"alg": "RS256", "typ": "JWT"}
    if isinstance(info.get("private_key_id"), str):
        header["kid"] = info["private_key_id"]
    claims = {"iss": email, "scope": scope, "aud": token_uri, "iat": int(now),
              "exp": int(now) + JWT_LIFETIME_S}
    signing_input = ".".join(rs256.b64url(json.dumps(part, separators=(",", ":")).encode())
                             for part in (header, claims))
    return f"{signing_input}.{rs256.b64url(rs256.sign(key, signing_input.encode()))}"


def _service_account(info: dict[str, Any], path: Path, scope: str) -> Token:
    now = time.time()
    assertion = service_account_jwt(info, path, scope, now)
    token_uri = info.get("token_uri") or DEFAULT_TOKEN_URI
    answer = _token_request(token_uri, {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
        f"{path} (service account {info['client_email']})")
    return _token(answer, token_uri, now, f"{path}", info["client_email"], "")


def _authorized_user(info: dict[str, Any], path: Path) -> Token:
    now = time.time()
    client_id, secret, refresh = _fields(info, path, ("client_id", "client_secret",
                                                      "refresh_token"))
    token_uri = info.get("token_uri") or DEFAULT_TOKEN_URI
    answer = _token_request(token_uri, {"grant_type": "refresh_token", "client_id": client_id,
                                        "client_secret": secret, "refresh_token": refresh},
                            f"{path} (user credentials)")
    quota = info.get("quota_project_id") if isinstance(info.get("quota_project_id"), str) else ""
    return _token(answer, token_uri, now, f"{path}", "", quota or "")


def _token_request(uri: str, form: dict[str, str], who: str) -> dict[str, Any]:
    request = urllib.request.Request(uri, data=urllib.parse.urlencode(form).encode(),
                                     headers={"Content-Type":
                                              "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=TOKEN_TIMEOUT_S) as response:
            return _json(response.read(MAX_TOKEN_RESPONSE + 1), uri)
    except urllib.error.HTTPError as exc:
        detail = _json_or_empty(exc.read(MAX_TOKEN_RESPONSE))
        reason = detail.get("error_description") or detail.get("error") or exc.reason
        raise CredentialError(f"{who}: the token endpoint {uri} refused: HTTP {exc.code} "
                              f"{reason}; the key may be deleted or disabled, or the clock "
                              "off") from None
    except (OSError, ValueError) as exc:
        raise CredentialError(f"{who}: cannot reach the token endpoint {uri}: {exc}") from None


def from_metadata(host: str) -> Token:
    uri = f"http://{host}{METADATA_TOKEN_PATH}"
    now = time.time()
    request = urllib.request.Request(uri, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=METADATA_TIMEOUT_S) as response:
            if response.headers.get("Metadata-Flavor") != "Google":
                raise CredentialError(f"{uri}: not a GCE metadata server (no Metadata-Flavor: "
                                      f"Google answer); {HINT}")
            answer = _json(response.read(MAX_TOKEN_RESPONSE + 1), uri)
    except urllib.error.HTTPError as exc:
        raise CredentialError(f"no Google credentials: the metadata server {host} answered "
                              f"HTTP {exc.code} for the pod's service account (is Workload "
                              f"Identity bound to it?); {HINT}") from None
    except (OSError, ValueError) as exc:
        raise CredentialError(f"no Google credentials found (no GOOGLE_APPLICATION_CREDENTIALS, "
                              f"no gcloud application-default file, no metadata server at "
                              f"{host}: {getattr(exc, 'reason', exc)}); {HINT}") from None
    return _token(answer, uri, now, f"the metadata server {host}", "", "")


def _json(body: bytes, uri: str) -> dict[str, Any]:
    if len(body) > MAX_TOKEN_RESPONSE:
        raise CredentialError(f"{uri}: the token response is larger than "
                              f"{MAX_TOKEN_RESPONSE} bytes")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("the token response is not a JSON object")
    return document


def _json_or_empty(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _token(answer: dict[str, Any], uri: str, now: float, source: str, account: str,
           quota: str) -> Token:
    value, lifetime = answer.get("access_token"), answer.get("expires_in", 3600)
    if not isinstance(value, str) or not value or not isinstance(lifetime, (int, float)):
        raise CredentialError(f"{uri}: the token response has no access_token/expires_in")
    return Token(value, now + float(lifetime), source, account, quota)
