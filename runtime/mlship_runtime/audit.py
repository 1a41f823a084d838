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

The payload log (``payload_log``, off by default; ``mlship_runtime.payloads``) writes sampled
request and response bodies for monitoring; ``Audit.__call__`` copies them.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import time
from collections.abc import Mapping
from typing import Any

import orjson

from mlship_runtime.asgi import (
    ANSWER,
    CLIENT_CERT,
    CLIENT_REQUEST_ID,
    REQUEST_ID,
    Message,
    Receive,
    Scope,
    Send,
)
from mlship_runtime.payloads import PayloadLog, keep
from mlship_runtime.settings import RuntimeSettings
from mlship_runtime.xfcc import forwarded_identity

LOGGER = "mlship_runtime.audit"
MAX_PATH = 1024  # with the other bounds, keeps a line well under PIPE_BUF
FLUSH_S = 0.01  # how long a line may wait for companions before it is written
PIPE_BUF = 4096  # POSIX: a pipe write up to this size is never interleaved with another
_MODELS = "/v2/models/"
_REQUEST_ID = b"x-request-id"
_LINE = "mlship.audit"  # the scope key of a request's line, begun by the payload wrapper
_STATUS = "mlship.audit.status"  # and of its answer's status, for the payload record
# A line: its time, what its route and status fix, the request id, the caller (peer and
# identity) and the latency: the request id JSON-escaped between its quotes, the other %s JSON
# already (_Route.static, Audit._caller).
_FORMAT = b'{"time":"%s"%s"%s",%s,"latency_ms":%.3f}\n'
CALLER_CACHE = 1024
MAX_PENDING = 128  # lines kept before a flush, whatever the time
MAX_METHOD = 32
_XFCC = b"x-forwarded-client-cert"
IDENTITY_CACHE = ROUTE_CACHE = 256  # callers repeat their header: parsed once per distinct value


class _Clock:
    """``2026-12-07T12:00:00.123Z``: the second's text made once per second, the stamp once
    per millisecond (a busy server answers many requests in one)."""

    __slots__ = ("milli", "second", "stamp_text", "text")

    def __init__(self) -> None:
        self.second = self.milli = -1
        self.text = ""
        self.stamp_text = b""

    def stamp(self, now: float) -> bytes:
        milli = int(now * 1000)
        if milli != self.milli:
            self.milli = milli
            second = milli // 1000
            if second != self.second:
                self.second = second
                self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.stamp_text = f"{self.text}.{milli % 1000:03d}Z".encode()
        return self.stamp_text

    def now(self) -> str:
        return self.stamp(time.time()).decode()


class _Route:
    """What a line says of one (method, path): the path as logged, its model and version."""

    __slots__ = ("method", "model", "path", "version")

    def __init__(self, method: str, path: str, model: str | None, version: str | None) -> None:
        self.method, self.path, self.model, self.version = method, path, model, version

    def static(self, status: int) -> bytes:
        """The line's fields this route and ``status`` fix, from level to request_id."""
        return (b',"level":"info","logger":"%s","message":%s,"method":%s,"path":%s,"model":%s,'
                b'"version":%s,"status":%d,"request_id":' % (
                    LOGGER.encode(), orjson.dumps(f"{self.method} {self.path} {status}"),
                    orjson.dumps(self.method), orjson.dumps(self.path),
                    orjson.dumps(self.model), orjson.dumps(self.version), status))


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
        self.identities: dict[bytes, bytes] = {}
        self.pending: list[tuple[Any, ...]] = []  # the lines not yet written
        self.statics: dict[tuple[str, str, int], bytes] = {}
        atexit.register(self.flush)
        self.routes: dict[tuple[str, str], _Route] = {}
        self.callers: dict[Any, bytes] = {}  # by peer, or (peer, identity header)

        self._reseed()
        # A worker forked after this was made makes ids of its own.
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        # Lines wait for companions on the running loop (the server's, found at the first
        # line); with none they are written at once.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.prefix = os.urandom(6).hex().encode()
        self.ids: list[bytes] = []  # made ahead, taken from the end
        self.made = 0

    def _identity(self, header: bytes) -> bytes:
        """The JSON of the caller's identity (``null`` when there is none)."""
        cache = self.identities
        found = cache.get(header)
        if found is None:
            if len(cache) >= IDENTITY_CACHE:
                cache.clear()
            found = cache[header] = orjson.dumps(forwarded_identity(header))
        return found

    def answered(self, scope: Scope, status: int, headers: list[tuple[bytes, bytes]],
                 started: float) -> None:
        """THE hook: the apps call it once per request, with the answer about to be sent. It
        adds ``x-request-id`` to the answer's ``headers`` and keeps what the line needs.

        Amid a request's work every object a step touches is a cache miss, so the request path
        takes an id and keeps five values; ``flush`` makes the lines, a batch in one tight loop
        and one format (measured in process, bench/audit_bench.py: making each line here cost
        more)."""
        rid = scope.get(_LINE) or self._request_id(scope)  # the payload wrapper took it
        headers.append((_REQUEST_ID, rid))
        if _LINE in scope:
            scope[_STATUS] = status
        if not self.lines:
            return
        pending = self.pending
        # Values that outlive the request anyway, not its scope: a kept scope holds the whole
        # request (its connection's cycle, body and arrays) until the flush (measured: costs
        # more than the line).
        static = self.statics.get((scope["method"], scope["path"], status)) or \
            self._static(scope, status)
        pending.append((static, rid, scope.get("client") if not self.trust_xfcc else
                        self._caller(scope), started, time.perf_counter()))
        if len(pending) == 1:
            loop = self.loop
            if loop is None:
                try:
                    loop = self.loop = asyncio.get_running_loop()
                except RuntimeError:
                    self.flush()  # no loop: at once
                    return
            loop.call_later(FLUSH_S, self.flush)
        elif len(pending) >= MAX_PENDING:
            self.flush()

    def _static(self, scope: Scope, status: int) -> bytes:
        """The line's fields its method, path and status fix, from level to request_id."""
        if len(self.statics) >= ROUTE_CACHE:
            self.statics.clear()
        static = self.statics[(scope["method"], scope["path"], status)] = \
            self._route(scope).static(status)
        return static

    def _request_id(self, scope: Scope) -> bytes:
        """The client's ``x-request-id`` when a header and a log can carry it as it is (1..128
        visible ASCII characters), else one made here. The runtime's connection hands a valid
        one over as ``scope[CLIENT_REQUEST_ID]``; when it has none, the headers are not read
        again."""
        given = scope.get(CLIENT_REQUEST_ID)
        if given is not None:
            return given  # type: ignore[no-any-return]
        if ANSWER not in scope:  # another server: look for it
            for key, value in scope["headers"]:
                if key == _REQUEST_ID:
                    if REQUEST_ID.fullmatch(value):
                        return value  # type: ignore[no-any-return]
                    break
        ids = self.ids
        if not ids:  # made 256 at a time, in one tight loop
            start = self.made
            self.made += 256
            ids += [b"%s-%d" % (self.prefix, n) for n in range(start + 255, start - 1, -1)]
        return ids.pop()

    def flush(self) -> None:
        """Writes the kept lines: within ``FLUSH_S``, or every MAX_PENDING lines, in writes of
        at most PIPE_BUF bytes (atomic on a pipe, so workers' lines never interleave; a write
        costs more than a line)."""
        if not self.pending:
            return
        lines, self.pending = self.pending, []
        offset = time.time() - time.perf_counter()  # the lines' times from their perf_counter
        callers, clock = self.callers, self.clock
        milli, stamp, client_was, caller = -1, b"", None, b""
        values: list[Any] = []
        extend = values.extend
        for static, rid, client, started, answered in lines:  # one tight loop, one format
            now = answered + offset
            if int(now * 1000) != milli:
                milli, stamp = int(now * 1000), clock.stamp(now)
            if client is not client_was:
                client_was = client
                caller = client if type(client) is bytes else \
                    callers.get(client) or self._peer(client)
            extend((stamp, static, rid if b'"' not in rid and b"\\" not in rid
                    else orjson.dumps(rid.decode("ascii"))[1:-1], caller,
                    (answered - started) * 1000))
        data = (_FORMAT * len(lines)) % tuple(values)
        start, end = 0, len(data)
        while start < end:
            stop = end if end - start <= PIPE_BUF else \
                data.rfind(b"\n", start, start + PIPE_BUF) + 1
            if stop <= start:  # one line over PIPE_BUF (a path of escaped controls): alone
                stop = data.index(b"\n", start) + 1
            os.write(self.fd, data[start:stop])
            start = stop

    def _caller(self, scope: Scope) -> bytes:
        """``client``, ``client_port`` and ``identity`` under ``trust_forwarded_client_cert``:
        once per peer and identity header."""
        client = scope.get("client")
        header = scope.get(CLIENT_CERT)
        if ANSWER not in scope:  # another server: look for it
            for key, value in scope["headers"]:
                if key == _XFCC:
                    header = value
        known = self.callers.get((client, header))
        if known is None:
            known = self._remember((client, header), client,
                                   b"null" if header is None else self._identity(header))
        return known

    def _peer(self, client: Any) -> bytes:
        """``client``, ``client_port`` and a null ``identity``: once per peer."""
        return self._remember(client, client, b"null")

    def _remember(self, key: Any, client: Any, identity: bytes) -> bytes:
        if len(self.callers) >= CALLER_CACHE:
            self.callers.clear()
        host, port = client or (None, None)
        known = self.callers[key] = b'"client":%s,"client_port":%s,"identity":%s' % (
            orjson.dumps(host), orjson.dumps(port), identity)
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The payload log's ASGI wrapper (only when it is on): copies the bodies of sampled
        requests, up to the bound, and writes them once the answer is sent."""
        payloads = self.payloads
        # Bodies only of requests that carry one (inference), never of probes and scrapes.
        if scope["type"] != "http" or payloads is None or scope["method"] != "POST" \
                or not payloads.take():
            await self.app(scope, receive, send)
            return
        rid = scope[_LINE] = self._request_id(scope)
        scope.pop(ANSWER, None)  # the answer must come through send_copied
        limit = payloads.max_bytes
        sent: list[bytes] = []
        received: list[bytes] = []
        sizes = [0, 0]  # request, response bytes

        async def send_copied(message: Message) -> None:
            if message["type"] == "http.response.body":
                keep(sent, sizes, 1, message.get("body", b""), limit)
                if not message.get("more_body"):
                    route = self._route(scope)
                    line = {"request_id": rid.decode("ascii"), "model": route.model,
                            "version": route.version, "status": scope.get(_STATUS)}
                    payloads.write(line, payloads.body(received, sizes[0]),
                                   payloads.body(sent, sizes[1]))
            await send(message)

        async def receive_copied() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                keep(received, sizes, 0, message.get("body", b""), limit)
            return message

        await self.app(scope, receive_copied, send_copied)

    def _route(self, scope: Scope) -> _Route:
        """A request's route (the path as logged, its model and version), made once per
        method and path."""
        method: str = scope["method"]
        path: str = scope["path"]
        route = self.routes.get((method, path))
        if route is not None:
            return route
        model = version = None
        if path.startswith(_MODELS):
            parts = path[len(_MODELS):].split("/", 3)
            model = parts[0][:256]
            version = parts[2][:256] if len(parts) > 2 and parts[1] == "versions" \
                else self.versions.get(model)
        elif path == "/predict":
            model = self.default_model
            version = self.versions.get(model or "")
        if len(self.routes) >= ROUTE_CACHE:  # paths vary freely: bounded
            self.routes.clear()
        route = self.routes[(method, path)] = _Route(method[:MAX_METHOD], path[:MAX_PATH],
                                                     model, version)
        return route


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
