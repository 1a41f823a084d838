"""A small Google Cloud Storage client on the standard library: the JSON API's media download,
media upload and object list over http.client, with OAuth2 tokens from
``mlship_runtime.gcp_credentials`` (the chain Google's libraries use).

Why not google-cloud-storage in the image: it brings google-auth, google-api-core, protobuf,
grpc status, requests and cryptography-sized dependencies (tens of MB) for what is four
requests here (docs/model-storage.md has the figures). Endpoints: ``STORAGE_EMULATOR_HOST``
(an emulator, as Google's client libraries honour it: no credentials), else
``MLSHIP_GCS_ENDPOINT_URL`` (a Private Service Connect or other authenticated endpoint), else
https://storage.googleapis.com. Errors are ``GCSError`` with a ``code`` the caller can test
(``NoSuchKey``, ``NoSuchBucket``, ``AccessDenied``, ``TooLarge``, ``Deadline``, ...).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

from mlship_runtime import transfer
from mlship_runtime.gcp_credentials import READ_ONLY, CredentialError, Token, resolve_token

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
RETRIES = 3
TIMEOUT_S = 60.0
REFRESH_BEFORE_S = 300
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # a response read into memory (not a download)


class GCSError(Exception):
    """One line naming the gs:// object and what went wrong."""

    def __init__(self, message: str, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class GCSConfig:
    endpoint_url: str = DEFAULT_ENDPOINT
    anonymous: bool = False  # an emulator: no Authorization header
    ca_bundle: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GCSConfig:
        env = os.environ if environ is None else environ
        ca = env.get("REQUESTS_CA_BUNDLE") or env.get("SSL_CERT_FILE") or None
        emulator = env.get("STORAGE_EMULATOR_HOST")
        if emulator:
            endpoint = emulator if "://" in emulator else f"http://{emulator}"
            return cls(endpoint.rstrip("/"), anonymous=True, ca_bundle=ca)
        endpoint = env.get("MLSHIP_GCS_ENDPOINT_URL") or DEFAULT_ENDPOINT
        return cls(endpoint.rstrip("/"), ca_bundle=ca)


def _headers(token: Token | None, body: bytes | Path | None,
             content_type: str) -> dict[str, str]:
    headers = {"User-Agent": "mlship-runtime"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token.value}"
        if token.quota_project:
            headers["x-goog-user-project"] = token.quota_project
    if body is not None:
        headers["Content-Type"] = content_type or "application/octet-stream"
        headers["Content-Length"] = str(body.stat().st_size if isinstance(body, Path)
                                        else len(body))
    return headers


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/some/key`` -> ``("bucket", "some/key")``."""
    bucket, _, key = uri.removeprefix("gs://").partition("/")
    if not uri.startswith("gs://") or not bucket:
        raise GCSError(f"{uri}: not a gs://BUCKET/KEY URI")
    return bucket, key


class GCSClient:
    """Just what fetching and pushing a model need: get, download, upload, list."""

    def __init__(self, config: GCSConfig | None = None,
                 environ: Mapping[str, str] | None = None, scope: str = READ_ONLY) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.config = config or GCSConfig.from_env(self.environ)
        self.scope = scope
        self.endpoint = self.config.endpoint_url
        parts = urlsplit(self.endpoint)
        self._scheme, self._netloc = parts.scheme or "https", parts.netloc
        self._base = parts.path.rstrip("/")
        self._token: Token | None = None
        self._lock = threading.Lock()

    def token(self) -> Token | None:
        if self.config.anonymous:
            return None
        with self._lock:
            token = self._token
            if token is None or token.expires - time.time() < REFRESH_BEFORE_S:
                try:
                    token = self._token = resolve_token(self.environ, self.scope)
                except CredentialError as exc:
                    raise GCSError(str(exc), code="NoCredentials") from None
            return token

    def _connection(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            context = ssl.create_default_context(cafile=self.config.ca_bundle)
            return http.client.HTTPSConnection(self._netloc, timeout=TIMEOUT_S, context=context)
        return http.client.HTTPConnection(self._netloc, timeout=TIMEOUT_S)

    def request(self, method: str, path: str, params: Mapping[str, str], where: str, *,
                body: bytes | Path | None = None, content_type: str = "",
                stream_to: Callable[[http.client.HTTPResponse], None] | None = None,
                max_bytes: int = MAX_RESPONSE_BYTES, deadline: float | None = None,
                probe: bool = False) -> bytes:
        """One request, retried on connection errors and 5xx; GCSError on 4xx. A body read
        into memory is bounded by ``max_bytes``; everything by ``deadline`` (monotonic)."""
        attempt = 0
        while True:
            attempt += 1
            if deadline is not None and time.monotonic() >= deadline:
                raise GCSError(f"{where}: not done within the download deadline "
                               "(fetch_timeout_s)", code="Deadline")
            token = self.token()
            headers = _headers(token, body, content_type)
            conn = self._connection()
            handle: IO[bytes] | None = None
            try:
                payload: bytes | IO[bytes] | None = body if not isinstance(body, Path) else \
                    (handle := body.open("rb"))
                target = f"{self._base}{path}?{urlencode(params)}" if params else \
                    f"{self._base}{path}"
                conn.request(method, target, body=payload, headers=headers)
                response = conn.getresponse()
                status = response.status
                if status < 300 and stream_to is not None:
                    stream_to(response)
                    return b""
                data = transfer.read(response, max_bytes, deadline)
            except transfer.TooLarge as exc:
                raise GCSError(f"{where}: the response is too large: {exc}",
                               code="TooLarge") from None
            except transfer.DeadlineExceeded as exc:
                raise GCSError(f"{where}: not done within the download deadline "
                               f"(fetch_timeout_s): {exc}", code="Deadline") from None
            except (OSError, http.client.HTTPException) as exc:
                if attempt < RETRIES:
                    time.sleep(0.2 * 2 ** attempt)
                    continue
                raise GCSError(f"{where}: cannot reach {self.endpoint}: {exc}",
                               code="Unreachable") from None
            finally:
                if handle is not None:
                    handle.close()
                conn.close()
            if (status >= 500 or status == 429) and attempt < RETRIES:
                time.sleep(0.2 * 2 ** attempt)
                continue
            if status == 401 and token is not None and attempt < RETRIES:
                with self._lock:  # a revoked or clock-skewed token: get a new one, once
                    self._token = None
                continue
            if status >= 300:
                raise GCSError(where, status=status) if probe else \
                    self._error(status, data, where, token, deadline)
            return data

    def _bucket_missing(self, bucket: str, deadline: float | None) -> bool:
        """Whether the bucket is absent: asked when an object call answers 404 without saying
        which (emulators never do). Without storage.buckets.get it cannot be told: False."""
        try:
            self.request("GET", f"/storage/v1/b/{quote(bucket, safe='')}", {"fields": "name"},
                         f"gs://{bucket}", deadline=deadline, probe=True)
        except GCSError as exc:
            return exc.status == 404
        return False

    def _error(self, status: int, body: bytes, where: str, token: Token | None,
               deadline: float | None) -> GCSError:
        try:
            message = str(json.loads(body).get("error", {}).get("message", ""))
        except (ValueError, AttributeError):
            message = body[:200].decode(errors="replace").strip()
        who = "anonymous (STORAGE_EMULATOR_HOST)" if token is None else \
            f"{token.account or 'the credentials'} from {token.source}"
        bucket = where.removeprefix("gs://").split("/", 1)[0]
        if status == 404 and ("bucket" in message.lower()
                              or self._bucket_missing(bucket, deadline)):
            return GCSError(f"gs://{bucket}: the bucket does not exist at {self.endpoint}",
                            code="NoSuchBucket", status=status)
        if status == 404:
            return GCSError(f"{where}: no such object", code="NoSuchKey", status=status)
        if status in (401, 403):
            return GCSError(f"{where}: access denied for {who}: {message}".rstrip(": "),
                            code="AccessDenied", status=status)
        return GCSError(f"{where}: HTTP {status} {message}".strip(), code=str(status),
                        status=status)

    @staticmethod
    def _object_path(bucket: str, key: str) -> str:
        return f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(key, safe='')}"

    def get(self, bucket: str, key: str, *, max_bytes: int = MAX_RESPONSE_BYTES,
            deadline: float | None = None) -> bytes:
        return self.request("GET", self._object_path(bucket, key), {"alt": "media"},
                            f"gs://{bucket}/{key}", max_bytes=max_bytes, deadline=deadline)

    def download(self, bucket: str, key: str, dest: Path, *,
                 on_progress: Callable[[int], None] | None = None,
                 max_bytes: int | None = None, deadline: float | None = None,
                 ) -> tuple[int, str]:
        """Stream an object into ``dest``: its (size, sha256), computed while writing; at most
        ``max_bytes`` read (GCSError ``TooLarge`` beyond). A retried attempt starts the file
        and the hash again, so a dropped connection never leaves a spliced file."""
        result: list[tuple[int, str]] = []

        def copy(response: http.client.HTTPResponse) -> None:
            result[:] = [transfer.to_file(response, dest, max_bytes, deadline, on_progress,
                                          lambda message: GCSError(message, code="LocalWrite"))]

        self.request("GET", self._object_path(bucket, key), {"alt": "media"},
                     f"gs://{bucket}/{key}", stream_to=copy, deadline=deadline)
        return result[0]

    def upload(self, bucket: str, key: str, data: bytes | Path,
               content_type: str = "application/octet-stream") -> dict[str, Any]:
        """One media upload (the object appears whole or not at all); its metadata."""
        body = self.request("POST", f"/upload/storage/v1/b/{quote(bucket, safe='')}/o",
                            {"uploadType": "media", "name": key}, f"gs://{bucket}/{key}",
                            body=data, content_type=content_type)
        document = json.loads(body or b"{}")
        return document if isinstance(document, dict) else {}

    def list(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        """(name, size) of every object under ``prefix``, all pages."""
        token = ""
        while True:
            params = {"prefix": prefix, "fields": "items(name,size),nextPageToken"}
            if token:
                params["pageToken"] = token
            page = json.loads(self.request("GET", f"/storage/v1/b/{quote(bucket, safe='')}/o",
                                           params, f"gs://{bucket}/{prefix}"))
            for item in page.get("items", []):
                yield str(item.get("name", "")), int(item.get("size") or 0)
            token = page.get("nextPageToken") or ""
            if not token:
                return
