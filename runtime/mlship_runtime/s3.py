"""A small S3 client on the standard library: SigV4-signed GET, PUT and list over http.client.

Why not boto3 in the image: boto3 + botocore + s3transfer and their dependencies are ~24 MB,
and the CPU image has ~5 MB left under its 110 MB budget (docs/model-storage.md has the
figures). Fetching a model needs four requests, so they are done here: SigV4 with stdlib
hmac/hashlib, credentials from the AWS default chain in botocore's order
(``mlship_runtime.aws_credentials``: environment, web identity, shared files, the container
provider of EKS Pod Identity and ECS, IMDSv2).

Endpoints follow the AWS SDK variables: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO,
Ceph, moto), ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_CA_BUNDLE``. Addressing is
path-style for custom endpoints and virtual-hosted for AWS unless
``MLSHIP_RUNTIME_S3_ADDRESSING_STYLE`` says otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import re
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, urlsplit

from mlship_runtime import transfer
from mlship_runtime.aws_credentials import CredentialError, Credentials
from mlship_runtime.aws_credentials import resolve_credentials as _resolve

__all__ = ["Credentials", "S3Client", "S3Config", "S3Error", "parse_s3_uri",
           "resolve_credentials", "sign"]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
RETRIES = 3
TIMEOUT_S = 60.0
REFRESH_BEFORE_S = 300  # renew expiring credentials (STS, container, IMDS) this long before
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # a response read into memory (not a download)


class S3Error(Exception):
    """One line naming the bucket/key and what went wrong; ``code`` is S3's error code."""

    def __init__(self, message: str, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class S3Config:
    region: str = "us-east-1"
    endpoint_url: str | None = None
    addressing_style: str = "auto"  # auto | path | virtual
    ca_bundle: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Config:
        env = os.environ if environ is None else environ
        style = env.get("MLSHIP_RUNTIME_S3_ADDRESSING_STYLE", "auto").lower()
        if style not in ("auto", "path", "virtual"):
            raise S3Error(f"MLSHIP_RUNTIME_S3_ADDRESSING_STYLE: expected auto, path or virtual, "
                          f"got {style!r}")
        return cls(region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
                   endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
                   or None, addressing_style=style, ca_bundle=env.get("AWS_CA_BUNDLE") or None)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise S3Error(f"{uri}: not an s3://BUCKET/KEY URI")
    return bucket, key


# ---- credentials ------------------------------------------------------------------------


def resolve_credentials(environ: Mapping[str, str], config: S3Config) -> Credentials:
    """The AWS chain in botocore's order (``mlship_runtime.aws_credentials``); S3Error when no
    link has credentials or one fails."""
    try:
        return _resolve(environ, region=config.region, ca_bundle=config.ca_bundle)
    except CredentialError as err:
        raise S3Error(str(err), code=err.code, status=err.status) from None


# ---- SigV4 ------------------------------------------------------------------------------


def _canonical_query(params: Mapping[str, str]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                    for k, v in sorted(params.items()))


def sign(method: str, path: str, query: str, headers: Mapping[str, str], payload_sha256: str,
         credentials: Credentials, region: str, now: datetime, service: str = "s3") -> str:
    """The Authorization header value for a request; every header given is signed.

    ``path`` and ``query`` are already URI-encoded once (S3 does not double-encode), and
    ``headers`` must include ``host`` and ``x-amz-date``.
    """
    lowered = {key.lower().strip(): " ".join(str(value).split()) for key, value in headers.items()}
    names = sorted(lowered)
    canonical = "\n".join([method, path, query,
                           "".join(f"{name}:{lowered[name]}\n" for name in names),
                           ";".join(names), payload_sha256])
    day = now.strftime("%Y%m%d")
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", now.strftime("%Y%m%dT%H%M%SZ"), scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{credentials.secret_key}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}")


# ---- HTTP -------------------------------------------------------------------------------


def _connection(config: S3Config, scheme: str, netloc: str) -> http.client.HTTPConnection:
    if scheme == "https":
        context = ssl.create_default_context(cafile=config.ca_bundle)
        return http.client.HTTPSConnection(netloc, timeout=TIMEOUT_S, context=context)
    return http.client.HTTPConnection(netloc, timeout=TIMEOUT_S)


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", body[:200].decode(errors="replace").strip()
    code = root.findtext(".//Code") or ""
    message = root.findtext(".//Message") or ""
    return code, message


class S3Client:
    """Just what fetching a model and batch inference need: get, put, list."""

    def __init__(self, config: S3Config | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.config = config or S3Config.from_env(self.environ)
        self._credentials: Credentials | None = None
        self._lock = threading.Lock()
        endpoint = self.config.endpoint_url or f"https://s3.{self.config.region}.amazonaws.com"
        parts = urlsplit(endpoint)
        self.endpoint = endpoint.rstrip("/")
        self._scheme, self._netloc = parts.scheme or "https", parts.netloc

    def credentials(self) -> Credentials:
        with self._lock:
            creds = self._credentials
            if creds is None or (creds.expires is not None
                                 and creds.expires - time.time() < REFRESH_BEFORE_S):
                creds = self._credentials = resolve_credentials(self.environ, self.config)
            return creds

    def _location(self, bucket: str, key: str) -> tuple[str, str]:
        """(host, path) for path-style or virtual-hosted addressing."""
        style = self.config.addressing_style
        if style == "auto":
            virtual = self.config.endpoint_url is None and _DNS_BUCKET.match(bucket)
            style = "virtual" if virtual else "path"
        encoded = quote(key, safe="/~")
        if style == "virtual":
            return f"{bucket}.{self._netloc}", f"/{encoded}"
        return self._netloc, f"/{bucket}/{encoded}" if key else f"/{bucket}"

    def request(self, method: str, bucket: str, key: str, *,
                params: Mapping[str, str] | None = None, body: bytes | None = None,
                stream_to: Callable[[http.client.HTTPResponse], None] | None = None,
                max_bytes: int = MAX_RESPONSE_BYTES, deadline: float | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        """One signed request, retried on connection errors and 5xx; raises S3Error on 4xx.
        A body read into memory is bounded by ``max_bytes``; everything by ``deadline``
        (``time.monotonic()``), S3Error code ``TooLarge`` / ``Deadline`` beyond."""
        host, path = self._location(bucket, key)
        query = _canonical_query(params or {})
        payload = hashlib.sha256(body).hexdigest() if body is not None else EMPTY_SHA256
        attempt = 0
        while True:
            attempt += 1
            if deadline is not None and time.monotonic() >= deadline:
                raise S3Error(f"s3://{bucket}/{key}: not done within the download deadline "
                              f"(fetch_timeout_s)", code="Deadline")
            creds = self.credentials()
            now = datetime.now(timezone.utc)
            headers = {"host": host, "x-amz-date": now.strftime("%Y%m%dT%H%M%SZ"),
                       "x-amz-content-sha256": payload}
            if creds.token:
                headers["x-amz-security-token"] = creds.token
            headers["Authorization"] = sign(method, path, query, headers, payload, creds,
                                            self.config.region, now)
            conn = _connection(self.config, self._scheme, host)
            try:
                conn.request(method, f"{path}?{query}" if query else path, body=body,
                             headers=headers)
                response = conn.getresponse()
                status = response.status
                if status < 300 and stream_to is not None:
                    stream_to(response)
                    return status, {k.lower(): v for k, v in response.getheaders()}, b""
                data = transfer.read(response, max_bytes, deadline)
            except transfer.TooLarge as exc:
                raise S3Error(f"s3://{bucket}/{key}: the response is too large: {exc}",
                              code="TooLarge") from None
            except transfer.DeadlineExceeded as exc:
                raise S3Error(f"s3://{bucket}/{key}: not done within the download deadline "
                              f"(fetch_timeout_s): {exc}", code="Deadline") from None
            except (OSError, http.client.HTTPException) as exc:
                if attempt < RETRIES:
                    time.sleep(0.2 * 2 ** attempt)
                    continue
                raise S3Error(f"s3://{bucket}/{key}: cannot reach {self.endpoint}: {exc}",
                              code="Unreachable") from None
            finally:
                conn.close()
            if status >= 500 and attempt < RETRIES:
                time.sleep(0.2 * 2 ** attempt)
                continue
            if status >= 300:
                raise self._error(status, data, bucket, key, creds)
            return status, {k.lower(): v for k, v in response.getheaders()}, data

    def _error(self, status: int, body: bytes, bucket: str, key: str,
               creds: Credentials) -> S3Error:
        code, message = _error_fields(body)
        where = f"s3://{bucket}/{key}"
        text = {
            "NoSuchBucket": f"s3://{bucket}: the bucket does not exist at {self.endpoint}",
            "NoSuchKey": f"{where}: no such object",
            "InvalidAccessKeyId": f"{where}: access key {creds.access_key} is not known to "
                                  f"{self.endpoint} (credentials from {creds.source})",
            "SignatureDoesNotMatch": f"{where}: the secret key does not match access key "
                                     f"{creds.access_key} (credentials from {creds.source})",
            "AccessDenied": f"{where}: access denied for access key {creds.access_key} "
                            f"(credentials from {creds.source})",
            "ExpiredToken": f"{where}: the session token from {creds.source} has expired",
        }.get(code) or f"{where}: {status} {code} {message}".strip()
        return S3Error(text, code=code or str(status), status=status)

    def get(self, bucket: str, key: str, *, max_bytes: int = MAX_RESPONSE_BYTES,
            deadline: float | None = None) -> bytes:
        return self.request("GET", bucket, key, max_bytes=max_bytes, deadline=deadline)[2]

    def download(self, bucket: str, key: str, dest: Path, *,
                 on_progress: Callable[[int], None] | None = None,
                 max_bytes: int | None = None, deadline: float | None = None,
                 ) -> tuple[int, str]:
        """Stream an object into ``dest``; its size and sha256, computed while writing. At
        most ``max_bytes`` are read (S3Error ``TooLarge`` beyond), before ``deadline``.

        A retried attempt reopens the file and restarts the hash, so a connection dropped
        mid-body never leaves a spliced file behind."""
        result: list[tuple[int, str]] = []

        def copy(response: http.client.HTTPResponse) -> None:
            result[:] = [transfer.to_file(response, dest, max_bytes, deadline, on_progress,
                                          lambda message: S3Error(message, code="LocalWrite"))]

        self.request("GET", bucket, key, stream_to=copy)
        return result[0]

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.request("PUT", bucket, key, body=data)

    def list(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under ``prefix`` (ListObjectsV2, all pages)."""
        token = ""
        while True:
            params = {"list-type": "2", "prefix": prefix}
            if token:
                params["continuation-token"] = token
            root = ET.fromstring(self.request("GET", bucket, "", params=params)[2])
            for item in root.iter(f"{_NS}Contents"):
                yield item.findtext(f"{_NS}Key") or "", int(item.findtext(f"{_NS}Size") or 0)
            token = root.findtext(f"{_NS}NextContinuationToken") or ""
            if root.findtext(f"{_NS}IsTruncated") != "true" or not token:
                return
