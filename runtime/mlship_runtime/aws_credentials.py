"""AWS credentials on the standard library, in botocore's order, for the runtime's S3 client.

The links a pod (or a laptop) uses, tried in the order botocore's default chain tries them:

1. the environment: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``);
2. web identity (EKS IRSA): ``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``, exchanged at STS
   with AssumeRoleWithWebIdentity;
3. the shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``, ``~/.aws/credentials``), then
   the keys of the profile in the config file (``AWS_CONFIG_FILE``, ``~/.aws/config``);
4. the container provider (EKS Pod Identity, ECS task roles): ``AWS_CONTAINER_CREDENTIALS_
   RELATIVE_URI`` (on the ECS agent, 169.254.170.2) or ``..._FULL_URI``, with the
   ``Authorization`` header from ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` (read at every fetch:
   the agent rotates it) or ``AWS_CONTAINER_AUTHORIZATION_TOKEN``. As botocore, a full URI must
   be https, a loopback address, or the ECS/EKS agent's own address;
5. instance metadata, IMDSv2 only (a session token first, then the role's credentials), unless
   ``AWS_EC2_METADATA_DISABLED=true``; ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` moves it.

Credentials that expire (STS, container, IMDS) carry ``expires``; the S3 client renews them
five minutes before. Everything raises ``CredentialError``, one line saying which link failed.
"""

from __future__ import annotations

import configparser
import http.client
import ipaddress
import json
import os
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

_STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"
ECS_AGENT = "169.254.170.2"
# Where the ECS and EKS Pod Identity agents listen (botocore's ContainerMetadataFetcher).
CONTAINER_HOSTS = (ECS_AGENT, "169.254.170.23", "fd00:ec2::23", "localhost")
IMDS_ENDPOINT = "http://169.254.169.254"
CONTAINER_TIMEOUT_S, CONTAINER_ATTEMPTS = 2.0, 3
IMDS_TIMEOUT_S = 1.0  # botocore's metadata_service_timeout: off EC2 this must fail fast
IMDS_TOKEN_TTL_S = "21600"


class CredentialError(Exception):
    def __init__(self, message: str, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None
    expires: float | None = None  # epoch seconds; None never expires
    source: str = ""  # where they came from, for error messages


def resolve_credentials(environ: Mapping[str, str], *, region: str,
                        ca_bundle: str | None = None) -> Credentials:
    """The first link of the chain that has credentials; CredentialError when none has."""
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(environ["AWS_ACCESS_KEY_ID"], environ["AWS_SECRET_ACCESS_KEY"],
                           environ.get("AWS_SESSION_TOKEN") or None,
                           source="environment (AWS_ACCESS_KEY_ID)")
    token_file = environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
    if token_file and environ.get("AWS_ROLE_ARN"):
        return _web_identity(environ, region, ca_bundle, Path(token_file))
    home = Path(environ.get("HOME", "~")).expanduser()
    shared = Path(environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials")
    config = Path(environ.get("AWS_CONFIG_FILE") or home / ".aws" / "config")
    profile = environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE") or "default"
    for path, section in ((shared, profile), (config, _config_section(profile))):
        found = _from_profile_file(path, section, profile)
        if found is not None:
            return found
    if profile != "default":  # a profile asked for by name must exist, as botocore insists
        raise CredentialError(f"{shared}: profile [{profile}] has no aws_access_key_id and "
                              f"aws_secret_access_key (nor has {config})")
    if environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or \
            environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return container_credentials(environ, ca_bundle)
    metadata = _instance_metadata(environ)
    if isinstance(metadata, Credentials):
        return metadata
    raise CredentialError(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_ROLE_ARN with "
        "AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), AWS_CONTAINER_CREDENTIALS_FULL_URI (EKS Pod "
        f"Identity, ECS), or a shared credentials file ({shared}); instance metadata: {metadata}")


def _config_section(profile: str) -> str:
    return profile if profile == "default" else f"profile {profile}"


def _from_profile_file(path: Path, section: str, profile: str) -> Credentials | None:
    if not path.is_file():
        return None
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise CredentialError(f"{path}: not a valid AWS credentials or config file "
                              f"({exc})") from None
    if not (parser.has_option(section, "aws_access_key_id")
            and parser.has_option(section, "aws_secret_access_key")):
        return None
    return Credentials(parser.get(section, "aws_access_key_id").strip(),
                       parser.get(section, "aws_secret_access_key").strip(),
                       parser.get(section, "aws_session_token", fallback="").strip() or None,
                       source=f"{path} [{profile}]")


# ---- HTTP -----------------------------------------------------------------------------------


def _request(url: str, method: str, headers: Mapping[str, str], *, timeout: float,
             ca_bundle: str | None = None,
             body: bytes | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=ca_bundle)
        conn = http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _expiry(text: str) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


# ---- web identity (IRSA) ----------------------------------------------------------------------


def _web_identity(environ: Mapping[str, str], region: str, ca_bundle: str | None,
                  token_file: Path) -> Credentials:
    role = environ["AWS_ROLE_ARN"]
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise CredentialError(f"AWS_WEB_IDENTITY_TOKEN_FILE {token_file}: "
                              f"{exc.strerror}") from None
    endpoint = (environ.get("AWS_ENDPOINT_URL_STS") or environ.get("AWS_ENDPOINT_URL")
                or f"https://sts.{region}.amazonaws.com")
    form = urlencode({
        "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": role,
        "RoleSessionName": environ.get("AWS_ROLE_SESSION_NAME") or f"mlship-{os.getpid()}",
        "WebIdentityToken": token}, quote_via=quote)
    # The request is unsigned by design: the token is the credential.
    try:
        status, body = _request(endpoint.rstrip("/") + "/", "POST",
                                {"Content-Type": "application/x-www-form-urlencoded"},
                                timeout=60, ca_bundle=ca_bundle, body=form.encode())
    except (OSError, http.client.HTTPException) as exc:
        raise CredentialError(f"STS at {endpoint}: cannot reach it: {exc}",
                              code="Unreachable") from None
    if status != 200:
        code, message = _sts_error(body)
        raise CredentialError(f"STS AssumeRoleWithWebIdentity for {role} at {endpoint} "
                              f"failed: {code or status} {message}".strip(), code=code,
                              status=status)
    found = ET.fromstring(body).find(f".//{_STS_NS}Credentials")
    if found is None:
        raise CredentialError(f"STS at {endpoint} answered without credentials for {role}")

    def text(name: str) -> str:
        node = found.find(f"{_STS_NS}{name}")
        return (node.text or "").strip() if node is not None else ""

    return Credentials(text("AccessKeyId"), text("SecretAccessKey"), text("SessionToken") or None,
                       _expiry(text("Expiration")), source=f"web identity ({role})")


def _sts_error(body: bytes) -> tuple[str, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", body[:200].decode(errors="replace").strip()
    return (root.findtext(f".//{_STS_NS}Code") or root.findtext(".//Code") or "",
            root.findtext(f".//{_STS_NS}Message") or root.findtext(".//Message") or "")


# ---- container provider (EKS Pod Identity, ECS) ----------------------------------------------


def container_url(environ: Mapping[str, str]) -> str:
    """The credentials endpoint; a full URI must be https, loopback, or an agent address."""
    relative = environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    if relative:  # botocore's order: the ECS agent's relative URI first
        return f"http://{ECS_AGENT}{relative}"
    full = environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    parts = urlsplit(full)
    host = parts.hostname or ""
    if parts.scheme == "https" or (parts.scheme == "http" and (
            _loopback(host) or host in CONTAINER_HOSTS)):
        return full
    raise CredentialError(f"AWS_CONTAINER_CREDENTIALS_FULL_URI {full}: credentials are fetched "
                          "only over https, from a loopback address, or from the ECS/EKS agent "
                          f"({', '.join(CONTAINER_HOSTS)})")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _container_token(environ: Mapping[str, str]) -> str | None:
    token_file = environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    token: str | None
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialError(f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {token_file}: "
                                  f"{exc.strerror}") from None
    else:
        token = environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
    if token is not None and ("\r" in token or "\n" in token):
        raise CredentialError("the container authorization token holds a line break: it "
                              "cannot be an Authorization header")
    return token


def container_credentials(environ: Mapping[str, str],
                          ca_bundle: str | None = None) -> Credentials:
    url = container_url(environ)
    headers = {"Accept": "application/json"}
    token = _container_token(environ)
    if token:
        headers["Authorization"] = token
    problem = ""
    for attempt in range(CONTAINER_ATTEMPTS):
        if attempt:
            time.sleep(0.5 * attempt)
        try:
            status, body = _request(url, "GET", headers, timeout=CONTAINER_TIMEOUT_S,
                                    ca_bundle=ca_bundle)
        except (OSError, http.client.HTTPException) as exc:
            problem = f"cannot reach it: {exc}"
            continue
        if status != 200:
            detail = body[:200].decode(errors="replace").strip()
            raise CredentialError(f"container credentials at {url}: HTTP {status}"
                                  + (f": {detail}" if detail else "")
                                  + ("" if token else " (no authorization token was set)"),
                                  status=status)
        return _parse_credentials(body, url, "container credentials")
    raise CredentialError(f"container credentials at {url}: {problem}", code="Unreachable")


def _parse_credentials(body: bytes, url: str, what: str) -> Credentials:
    try:
        document = json.loads(body)
        return Credentials(str(document["AccessKeyId"]), str(document["SecretAccessKey"]),
                           document.get("Token") or None,
                           _expiry(str(document.get("Expiration") or "")),
                           source=f"{what} ({url})")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CredentialError(f"{what} at {url}: the answer is not AWS credentials") from None


# ---- instance metadata (IMDSv2) ---------------------------------------------------------------


def _instance_metadata(environ: Mapping[str, str]) -> Credentials | str:
    """Credentials of the instance's role, or why there are none (for the final message)."""
    if environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return "disabled (AWS_EC2_METADATA_DISABLED)"
    base = (environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_ENDPOINT).rstrip("/")
    try:
        return _imds_role_credentials(base)
    except CredentialError as err:
        return str(err)
    except (OSError, http.client.HTTPException) as exc:
        return f"{base} did not answer ({exc})"


def _imds_role_credentials(base: str) -> Credentials:
    """IMDSv2: a session token (PUT), the role's name, then its credentials."""
    path = "/latest/meta-data/iam/security-credentials/"
    status, token = _request(f"{base}/latest/api/token", "PUT",
                             {"X-aws-ec2-metadata-token-ttl-seconds": IMDS_TOKEN_TTL_S},
                             timeout=IMDS_TIMEOUT_S)
    if status != 200:
        raise CredentialError(f"{base} refused an IMDSv2 session token (HTTP {status})")
    session = {"X-aws-ec2-metadata-token": token.decode().strip()}
    status, roles = _request(base + path, "GET", session, timeout=IMDS_TIMEOUT_S)
    if status != 200 or not roles.strip():
        raise CredentialError(f"{base} has no instance role (HTTP {status})")
    role = roles.decode().split()[0]
    status, body = _request(base + path + role, "GET", session, timeout=IMDS_TIMEOUT_S)
    if status != 200:
        raise CredentialError(f"{base}: role {role}: HTTP {status}")
    return _parse_credentials(body, base, f"instance metadata role {role}")
