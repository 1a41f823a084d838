"""The audit trail: one JSON line per request, and the optional sampled payload log.

``audited`` hooks it into the server's app once (``server._serve``); everything per request
happens in ``Audit.answered``, which the app calls once per request with its answer (status
and headers) just before sending it. Lines go to stderr within 10 ms,
together in writes of at most ``PIPE_BUF`` bytes (so several workers' lines never
interleave; the path and identity are cut to keep a line well under it), in the same
``{"time", "level", "logger", "message"}`` shape as the JSON logs (``logs.JsonFormatter``), plus:

``request_id`` (the client's ``x-request-id`` when it is 1..128 visible ASCII characters, else
generated; echoed in the response), ``client`` / ``client_port`` (the TCP peer: behind a mesh
sidecar, the sidecar), ``identity`` (the caller's SPIFFE ID from ``x-forwarded-client-cert``,
only under ``trust_forwarded_client_cert``), ``method``, ``path``, ``model``, ``version``,
``status``, ``latency_ms`` (to the response's headers). Never a body, never a query string
(pre-signed URLs carry credentials there). Every value a client controls is JSON-escaped by
the encoder, so no value can end a line or start a forged one.

The payload log (``payload_log``, off by default) writes sampled request and response bodies
for monitoring, bounded three ways: a share of requests (``payload_log_sample``), a rate
(``payload_log_rate`` records per second, a token bucket), and a size (``payload_log_max_bytes``
per body, a file moved aside past ``payload_log_file_bytes``). A request not sampled costs one
random draw: only a sampled one has its body copied.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import itertools
import os
import random
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from mlship_runtime.asgi import Message, Receive, Scope, Send
from mlship_runtime.settings import RuntimeSettings

LOGGER = "mlship_runtime.audit"
MAX_REQUEST_ID = 128
MAX_PATH = 1024  # with the other bounds, keeps a line well under PIPE_BUF
MAX_XFCC = 16 * 1024
MAX_IDENTITY = 512
FLUSH_S = 0.01  # how long a line may wait for companions before it is written
PIPE_BUF = 4096  # POSIX: a pipe write up to this size is never interleaved with another
_MODELS = "/v2/models/"
_REQUEST_ID = b"x-request-id"
_LINE = "mlship.audit"  # the scope key of a request's line, begun by the payload wrapper
_XFCC = b"x-forwarded-client-cert"
# KEY=VALUE, the value bare or double-quoted (then it may hold , ; and \" escapes); pairs are
# separated by ; and elements (one per proxy hop) by ,
_XFCC_PAIR = re.compile(r'\s*([^=,;\s]+)=("(?:[^"\\]|\\.)*"|[^,;"]*)\s*([,;]?)')
_ESCAPED = re.compile(r"\\(.)")
_VISIBLE = re.compile(rb"[!-~]{1,%d}" % MAX_REQUEST_ID)  # visible ASCII: no space, no control
IDENTITY_CACHE = ROUTE_CACHE = 256  # callers repeat their header: parsed once per distinct value


def forwarded_identity(header: bytes) -> str | None:
    """The SPIFFE ID (``URI=spiffe://...``) of the last element of an
    ``x-forwarded-client-cert`` header: the one the pod's own sidecar appended for the peer
    it terminated mTLS with (elements before it came from further hops). Quoted values may
    hold ``,`` ``;`` and ``\\"``; a malformed or oversized header gives None."""
    if len(header) > MAX_XFCC:
        return None
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError:
        return None
    elements: list[list[tuple[str, str]]] = [[]]
    position = 0
    while position < len(text):
        pair = _XFCC_PAIR.match(text, position)
        if pair is None or pair.end() == position:
            return None
        key, value, separator = pair.groups()
        if value.startswith('"'):
            value = _ESCAPED.sub(r"\1", value[1:-1])
        elements[-1].append((key, value))
        position = pair.end()
        if separator == ",":
            elements.append([])
        elif not separator and position < len(text):
            return None
    last = next((element for element in reversed(elements) if element), [])
    for name, uri in last:
        if name.lower() == "uri" and uri.startswith("spiffe://"):
            return uri[:MAX_IDENTITY]
    return None


def _request_id(value: bytes) -> str | None:
    """A client's id, when it is one a header and a log can carry as it is."""
    return value.decode("ascii") if _VISIBLE.fullmatch(value) else None


class _Clock:
    """``2026-12-07T12:00:00.123Z``: the second's text made once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.text}.{int(now % 1 * 1000):03d}Z"


class PayloadLog:
    """Sampled bodies, bounded in share, rate and size (see the module's doc)."""

    def __init__(self, settings: RuntimeSettings, clock: _Clock) -> None:
        self.sample = settings.payload_log_sample
        self.rate = settings.payload_log_rate
        self.max_bytes = settings.payload_log_max_bytes
        self.file_bytes = settings.payload_log_file_bytes
        self.clock = clock
        self.tokens = max(1.0, self.rate)
        self.refilled = time.monotonic()
        self.path = None if settings.payload_log == "-" else Path(str(settings.payload_log))
        self.fd = 1 if self.path is None else self._open()
        self.written = 0 if self.path is None else os.fstat(self.fd).st_size

    def _open(self) -> int:
        assert self.path is not None
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def take(self) -> bool:
        """Whether this request's bodies are logged: sampled, and a token left."""
        if self.sample <= 0 or random.random() >= self.sample:
            return False
        now = time.monotonic()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def body(self, chunks: list[bytes], size: int) -> dict[str, Any]:
        kept = b"".join(chunks)[:self.max_bytes]
        entry: dict[str, Any] = {"bytes": size, "truncated": size > len(kept)}
        for cut in range(4):  # a UTF-8 character cut at the end is dropped, not mangled
            try:
                entry["text"] = kept[:len(kept) - cut].decode("utf-8")
                return entry
            except UnicodeDecodeError:
                continue
        entry["base64"] = base64.b64encode(kept).decode("ascii")
        return entry

    def write(self, line: dict[str, Any], request: dict[str, Any],
              response: dict[str, Any]) -> None:
        record = {"time": self.clock.now(), "logger": "mlship_runtime.payload",
                  **{key: line[key] for key in ("request_id", "model", "version", "status")},
                  "request": request, "response": response}
        data = orjson.dumps(record) + b"\n"
        if self.path is not None and self.written + len(data) > self.file_bytes \
                and self.written:
            os.close(self.fd)
            self.path.replace(f"{self.path}.1")
            self.fd, self.written = self._open(), 0
        os.write(self.fd, data)
        self.written += len(data)


class Audit:
    """The ASGI wrapper writing the audit line (and sampled payloads) of every request."""

    def __init__(self, app: Any, settings: RuntimeSettings,
                 versions: Mapping[str, str | None], *, fd: int = 2) -> None:
        self.app = app
        self.fd = fd
        self.lines = settings.access_log  # off: only the payload log is on
        self.trust_xfcc = settings.trust_forwarded_client_cert
        self.default_model = settings.model_name or None
        self.versions = dict(versions)
        self.clock = _Clock()
        self.payloads = PayloadLog(settings, self.clock) if settings.payload_log else None
        self.identities: dict[bytes, str | None] = {}
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        atexit.register(self.flush)
        self.routes: dict[str, tuple[str, str | None, str | None]] = {}
        self._reseed()
        # A worker forked after this was made makes ids of its own.
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self.prefix = os.urandom(6).hex()
        self.ids = itertools.count()

    def _identity(self, header: bytes) -> str | None:
        cache = self.identities
        if header not in cache:
            if len(cache) >= IDENTITY_CACHE:
                cache.clear()
            cache[header] = forwarded_identity(header)
        return cache[header]

    def _new_id(self) -> str:
        return f"{self.prefix}-{next(self.ids)}"

    def answered(self, scope: Scope, status: int, headers: list[tuple[bytes, bytes]],
                 started: float) -> None:
        """THE hook: the apps call it once per request, with the answer about to be sent. It
        writes the audit line and adds ``x-request-id`` to the answer's ``headers``."""
        line = scope.get(_LINE) or self._begin(scope)  # the payload wrapper began it
        headers.append((_REQUEST_ID, line["request_id"].encode()))
        self._write(line, status, started)

    def _begin(self, scope: Scope) -> dict[str, Any]:
        request_id = identity = None
        for key, value in scope["headers"]:
            if key == _REQUEST_ID:
                request_id = _request_id(value)
            elif key == _XFCC and self.trust_xfcc:
                identity = self._identity(value)
        return self._line(scope, request_id or self._new_id(), identity)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The payload log's ASGI wrapper (only when it is on): copies the bodies of sampled
        requests, up to the bound, and writes them once the answer is sent."""
        payloads = self.payloads
        # Bodies only of requests that carry one (inference), never of probes and scrapes.
        if scope["type"] != "http" or payloads is None or scope["method"] != "POST" \
                or not payloads.take():
            await self.app(scope, receive, send)
            return
        line = scope[_LINE] = self._begin(scope)
        limit = payloads.max_bytes
        sent: list[bytes] = []
        received: list[bytes] = []
        sizes = [0, 0]  # request, response bytes

        async def send_copied(message: Message) -> None:
            if message["type"] == "http.response.body":
                _keep(sent, sizes, 1, message.get("body", b""), limit)
                if not message.get("more_body"):
                    payloads.write(line, payloads.body(received, sizes[0]),
                                   payloads.body(sent, sizes[1]))
            await send(message)

        async def receive_copied() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                _keep(received, sizes, 0, message.get("body", b""), limit)
            return message

        await self.app(scope, receive_copied, send_copied)

    def _write(self, line: dict[str, Any], status: int, started: float) -> None:
        line["status"] = status
        line["latency_ms"] = int((time.perf_counter() - started) * 1e6) / 1000
        line["message"] = f"{line['method']} {line['path']} {status}"
        if self.lines:
            self._emit(orjson.dumps(line) + b"\n")

    def _emit(self, data: bytes) -> None:
        """Lines go out within ``FLUSH_S``, together, in writes of at most PIPE_BUF bytes
        (atomic on a pipe, so workers' lines never interleave): a write costs several
        microseconds, as much as the rest of a line, so one per line would double the cost."""
        if self.pending_bytes + len(data) > PIPE_BUF:
            self.flush()
        if not self.pending:
            try:
                asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
            except RuntimeError:  # no loop: at once
                os.write(self.fd, data)
                return
        self.pending.append(data)
        self.pending_bytes += len(data)

    def flush(self) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            self.pending_bytes = 0
            os.write(self.fd, data)

    def _line(self, scope: Scope, rid: str, identity: str | None) -> dict[str, Any]:
        path: str = scope["path"]
        route = self.routes.get(path)
        if route is None:
            route = self._route(path)
            if len(self.routes) >= ROUTE_CACHE:  # paths vary freely: bounded
                self.routes.clear()
            self.routes[path] = route
        client = scope.get("client") or (None, None)
        return {"time": self.clock.now(), "level": "info", "logger": LOGGER, "message": "",
                "request_id": rid, "client": client[0], "client_port": client[1],
                "identity": identity, "method": scope["method"], "path": route[0],
                "model": route[1], "version": route[2], "status": None, "latency_ms": None}

    def _route(self, path: str) -> tuple[str, str | None, str | None]:
        """(path as logged, model, version) of a request path."""
        model = version = None
        if path.startswith(_MODELS):
            parts = path[len(_MODELS):].split("/", 3)
            model = parts[0][:256]
            version = parts[2][:256] if len(parts) > 2 and parts[1] == "versions" \
                else self.versions.get(model)
        elif path == "/predict":
            model = self.default_model
            version = self.versions.get(model or "")
        return path[:MAX_PATH], model, version


def _keep(chunks: list[bytes], sizes: list[int], index: int, body: bytes, limit: int) -> None:
    """Count every byte of a body, keep only its first ``limit``."""
    kept = sizes[index]
    sizes[index] += len(body)
    if kept < limit:
        chunks.append(body[:limit - kept])


def audited(app: Any, settings: RuntimeSettings,
            versions: Mapping[str, str | None]) -> Any:
    """Hook the audit trail into ``app`` (an ``App`` or a ``Router`` and its models; not
    imported here, which they import) when ``access_log`` or the
    payload log is on; the ASGI app to serve: ``app``, or the payload log's wrapper of it."""
    if not settings.access_log and not settings.payload_log:
        return app
    audit = Audit(app, settings, versions)
    for unit in (app, *getattr(app, "units", {}).values()):
        unit.audit = audit
    return audit if audit.payloads is not None else app
