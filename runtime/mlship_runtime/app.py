"""The ASGI application: raw routing on path segments, no framework on the hot path.

A framework's router, request objects and middleware cost more per request than a tiny model's
inference, so requests are dispatched by splitting the path once and answered with prebuilt
headers. Handlers raise ``HTTPError``; ``__call__`` turns it into ``{"error": "..."}``.

A request is refused by its cheapest check first: readiness and a full queue before its body is
buffered, the body size before it is read, its JSON's value count before it is parsed, each
input's signature before its data is decoded. Bodies and outputs over ``OFFLOAD_BYTES`` are
decoded and encoded in one codec thread (one at a time, so their memory is bounded too), never
on the event loop. A request refused before its body was read still has the body read and
discarded, up to ``DISCARD_BYTES``, so that clients which send the whole body before reading
(urllib, requests) get the answer instead of a reset connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from mlship_runtime import __version__, codec, fastpath, predict
from mlship_runtime.asgi import (
    HEADER_LENGTH,
    JSON,
    TEXT_METRICS,
    Receive,
    Response,
    Scope,
    Send,
    declared_length,
    error_response,
    infer_response,
    lifespan,
    respond,
)
from mlship_runtime.batching import Batcher
from mlship_runtime.cache import PredictionCache
from mlship_runtime.drift import DriftMonitor
from mlship_runtime.errors import (
    BadRequest,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
)
from mlship_runtime.metrics import Endpoint, Metrics
from mlship_runtime.session import ModelSession
from mlship_runtime.settings import RuntimeSettings
from mlship_runtime.shadow import Mirror
from mlship_runtime.workers import Peers

if TYPE_CHECKING:
    from mlship_runtime.audit import Audit

access_log = logging.getLogger("mlship_runtime.access")
SERVER_METADATA = orjson.dumps({"name": "mlship-runtime", "version": __version__,
                                "extensions": ["binary_tensor_data"]})
OFFLOAD_BYTES = 256 * 1024
DISCARD_BYTES = 64 * 1024 * 1024
_CLOSE = [(b"connection", b"close")]
_output_bytes = fastpath.output_bytes  # pipeline.py's too
DRAIN_CUT = (b'{"error":"the server is shutting down and this request outlived drain_grace_s; '
             b'retry"}')


class Offload:
    """The codec thread: large decodes and encodes, one at a time, at most ``limit`` waiting."""

    executor: ThreadPoolExecutor | None = None  # made on first use: after a worker's fork
    waiting = 0

    @classmethod
    async def run(cls, limit: int, fn: Callable[..., Any], *args: Any) -> Any:
        if cls.waiting >= limit:
            raise Overloaded(f"{cls.waiting} large requests are being decoded or encoded; "
                             "retry later", headers=[(b"retry-after", b"1")])
        if cls.executor is None:
            cls.executor = ThreadPoolExecutor(1, "mlship-codec")
        cls.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(cls.executor, fn, *args)
        finally:
            cls.waiting -= 1


class App:
    """Serves one model; ``attach`` hands it the loaded session once warm-up succeeded."""

    def __init__(self, settings: RuntimeSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.session: ModelSession | None = None
        self.batcher: Batcher | None = None
        self.fast: fastpath.Plan | None = None  # the common request's decode and encode (fastpath)
        self.ready = False
        self.draining = False
        self.on_startup: Callable[[], None] | None = None
        # workers > 1: /metrics and readiness answer for every worker (mlship_runtime.workers).
        self.peers: Peers | None = None
        self.audit: Audit | None = None  # the audit trail (mlship_runtime.audit), when on
        self.drift: DriftMonitor | None = None  # set with --baseline before the model attaches
        self._routes: dict[tuple[str, str], tuple[str, Any, Endpoint]] = {}
        self.cache: PredictionCache | None = None  # None (the default) costs one check per request
        if settings.prediction_cache_entries > 0:
            self.cache = PredictionCache(
                settings.prediction_cache_entries, settings.prediction_cache_bytes,
                settings.prediction_cache_ttl_s, [("model", metrics.model), *metrics.constant])
            metrics.collectors.append(self.cache.render)
        self.mirror: Mirror | None = None  # shadow_url: answers compared with a shadow's
        if settings.shadow_url:
            self.mirror = Mirror(settings, [("model", metrics.model), *metrics.constant])
            metrics.collectors.append(self.mirror.render)

    def attach(self, session: ModelSession) -> None:
        """Called on the event loop thread: from here on the model is served."""
        self.session = session
        self.batcher = Batcher(session, self.settings, self.metrics)
        self.fast = fastpath.Plan(session.name, session.version, session.inputs,
                                  session.outputs, OFFLOAD_BYTES)
        if self.cache is not None:  # never serve one model's outputs for another
            self.cache.reset(f"{session.name}\0{session.version or ''}")
        self.ready = not self.draining
        self.metrics.ready = self.ready

    def drain(self) -> None:
        self.draining = True
        self.ready = False
        self.metrics.ready = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await lifespan(receive, send, self.on_startup, self.close)

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.mirror is not None:
            await self.mirror.close()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        endpoint = "other"
        series = None
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            key = (scope["method"], scope["path"])
            route = self._routes.get(key)
            if route is None:
                name, found = self._route(*key)
                route = (name, found, metrics.endpoint(name))
                if len(self._routes) < 64:  # bounded: versions and names can vary freely
                    self._routes[key] = route
            endpoint, handler, series = route
            status, body, headers = await handler(scope, receive, started)
        except asyncio.CancelledError:
            if not self.draining:
                raise
            # uvicorn cancels what is still running at drain_grace_s: the client should retry
            # on another replica, so 503 (uvicorn's own answer would be a 500).
            status, body, headers = 503, DRAIN_CUT, [(b"content-type", JSON), *_CLOSE]
        except Exception as error:  # every failure gets its answer
            status, body, headers = error_response(error, scope)
        if self.audit is not None:  # the audit line, and x-request-id on the answer
            self.audit.answered(scope, status, headers, started)
        try:
            await respond(scope, send, status, body, headers)
        finally:
            metrics.in_flight -= 1
        elapsed = time.perf_counter() - started
        (series or metrics.endpoint(endpoint)).record(status, elapsed)

    def _route(self, method: str, path: str) -> tuple[str, Any]:  # noqa: PLR0911, PLR0912
        parts = path.strip("/").split("/")
        get = method in ("GET", "HEAD")
        if parts[0] == "v2":
            if len(parts) >= 3 and parts[1] == "models":
                rest = parts[3:]
                if len(rest) >= 2 and rest[0] == "versions":
                    self._check_model(parts[2], rest[1])
                    rest = rest[2:]
                else:
                    self._check_model(parts[2], None)
                if rest == ["infer"]:
                    if method != "POST":
                        raise MethodNotAllowed(f"{method} not allowed on {path}; use POST")
                    return "infer", self._infer
                if not rest and get:
                    return "metadata", self._model_metadata
                if rest == ["ready"] and get:
                    return "model_ready", self._ready
                if rest in ([], ["ready"]):
                    raise MethodNotAllowed(f"{method} not allowed on {path}; use GET")
            elif parts[1:] == ["repository", "index"]:
                # The V2 model repository extension's index: lets a client find the model name.
                if method != "POST":
                    raise MethodNotAllowed(f"{method} not allowed on {path}; use POST")
                return "repository_index", self._repository_index
            elif parts[1:] == ["health", "live"] or parts[1:] == ["health", "ready"] or \
                    len(parts) == 1:
                if not get:
                    raise MethodNotAllowed(f"{method} not allowed on {path}; use GET")
                if len(parts) == 1:
                    return "server_metadata", self._server_metadata
                return ("live", self._live) if parts[2] == "live" else ("ready", self._ready)
        elif path == "/predict":
            if method != "POST":
                raise MethodNotAllowed(f"{method} not allowed on {path}; use POST")
            return "predict", self._predict
        elif path == "/" and get:  # a browser or curl at the bare address: what serves here
            return "server_metadata", self._server_metadata
        elif path in ("/health", "/metrics"):
            if not get:
                raise MethodNotAllowed(f"{method} not allowed on {path}; use GET")
            return (("health", self._ready) if path == "/health" else ("metrics", self._metrics))
        raise NotFound(f"no route for {method} {path}")

    def _check_model(self, name: str, version: str | None) -> None:
        if name != self.settings.model_name:
            raise NotFound(f"unknown model '{name}'; this server serves "
                           f"'{self.settings.model_name}'")
        expected = self.settings.model_version
        if version is not None and expected is not None and version != expected:
            raise NotFound(f"unknown version '{version}' of model '{name}'; "
                           f"this server serves version '{expected}'")

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, int | None]:
        limit = self.settings.max_body_bytes
        header_length = None
        for key, value in scope["headers"]:
            if key == b"content-length" and int(value) > limit:
                await self._refuse_body(receive, PayloadTooLarge(
                    f"request body of {int(value)} bytes exceeds the limit of {limit} bytes"),
                    int(value))
            if key == HEADER_LENGTH:
                try:
                    header_length = int(value)
                except ValueError:
                    raise BadRequest(f"{codec.HEADER_LENGTH} must be an integer") from None
        message = await receive()
        body = message.get("body", b"")
        if message.get("more_body"):
            chunks = [body]
            size = len(body)
            while message.get("more_body"):
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await self._refuse_body(receive, PayloadTooLarge(
                        f"request body exceeds the limit of {limit} bytes"), 0)
                chunks.append(chunk)
            body = b"".join(chunks)
        if message["type"] == "http.disconnect":
            raise RequestTimeout("the request body did not arrive: the client closed the "
                                 "connection, or the body took longer than request_timeout_s")
        return body, header_length

    async def _refuse_body(self, receive: Receive, error: HTTPError, declared: int) -> None:
        """Raise ``error`` once the unread body is read and discarded (up to DISCARD_BYTES);
        a larger body is answered at once, and the connection closed."""
        if declared > DISCARD_BYTES:
            error.headers = [*error.headers, *_CLOSE]
            raise error
        discarded = 0
        message: Any = {"more_body": True}
        while message.get("more_body"):
            message = await receive()
            discarded += len(message.get("body", b""))
            if discarded > DISCARD_BYTES:
                error.headers = [*error.headers, *_CLOSE]
                break
        raise error

    async def _admit(self, scope: Scope, receive: Receive) -> tuple[ModelSession, Batcher]:
        """Serving and room in the queue, or the error (after the body is discarded)."""
        try:
            session, batcher = self._serving()
            batcher.admit()
        except HTTPError as error:
            await self._refuse_body(receive, error, declared_length(scope))
        return session, batcher

    async def offload(self, size: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` here when ``size`` is small, else in the codec thread."""
        if size <= OFFLOAD_BYTES:
            return fn(*args)
        try:
            return await Offload.run(self.settings.max_queue_size, fn, *args)
        except Overloaded:
            self.metrics.rejected += 1  # as good as a full queue: counted as one
            raise

    def _serving(self) -> tuple[ModelSession, Batcher]:
        if self.session is None or self.batcher is None:
            raise NotReady("model is not ready yet (loading or warming up)")
        return self.session, self.batcher

    async def _infer(self, scope: Scope, receive: Receive, started: float) -> Response:
        session, batcher = await self._admit(scope, receive)
        body, header_length = await self._read_body(scope, receive)
        plan = self.fast
        request = plan.read(body, header_length, self.settings.max_request_values) if plan \
            else None
        if request is None:
            request = await self.offload(len(body), codec.decode_request, body, header_length,
                                         session, self.settings.max_request_values)
        rows = session.rows(request.inputs)
        names = session.wanted(request.outputs)
        remaining = self.settings.request_timeout_s - (time.perf_counter() - started)
        outputs = await self.run(session, batcher, request.inputs, rows, names, remaining)
        if self.mirror is not None:
            self.mirror.offer(session.name, body, header_length, names, outputs)
        if plan and (answer := plan.answer(request, outputs)) is not None:
            return 200, answer, [(b"content-type", JSON)]
        datatypes = session.output_datatypes
        payload, length = await self.offload(
            _output_bytes(outputs), codec.encode_response, session.name, session.version,
            request.id,
            [(name, datatypes[name], out) for name, out in zip(names, outputs, strict=True)],
            request.binary_outputs)
        return infer_response(payload, length)

    async def _predict(self, scope: Scope, receive: Receive, started: float) -> Response:
        session, batcher = await self._admit(scope, receive)
        body, _ = await self._read_body(scope, receive)
        inputs, instances = await self.offload(len(body), predict.decode, body, session,
                                               self.settings.max_request_values)
        rows = session.check(inputs, {})
        remaining = self.settings.request_timeout_s - (time.perf_counter() - started)
        outputs = await self.run(session, batcher, inputs, rows, session.output_names, remaining)
        encoded = await self.offload(_output_bytes(outputs), predict.encode, session, outputs,
                                     instances)
        return 200, encoded, [(b"content-type", JSON)]

    async def run(self, session: ModelSession, batcher: Batcher, inputs: dict[str, np.ndarray],
                  rows: int, names: list[str], remaining: float) -> list[np.ndarray]:
        """Checked inputs -> outputs: the cache first (a hit skips the queue and the model),
        then the batcher; drift counts the inputs of answered requests. Direct requests and
        pipeline steps both come through here."""
        cache = self.cache
        if cache is None:
            outputs = await batcher.infer(session.feed(inputs), rows, names, remaining)
        else:
            key = cache.key(inputs, names)
            cached = cache.get(key)
            if cached is None:
                outputs = await batcher.infer(session.feed(inputs), rows, names, remaining)
                cache.put(key, outputs)
            else:
                outputs = cached
        if self.drift is not None:  # back on the event loop thread: no lock needed
            self.drift.observe(inputs)
        return outputs

    async def _server_metadata(self, scope: Scope, receive: Receive, started: float) -> Response:
        return 200, SERVER_METADATA, [(b"content-type", JSON)]

    async def _repository_index(self, scope: Scope, receive: Receive,
                                started: float) -> Response:
        entry: dict[str, Any] = {"name": self.settings.model_name,
                                 "state": "READY" if self.ready else "UNAVAILABLE"}
        if self.settings.model_version is not None:
            entry["version"] = self.settings.model_version
        return 200, orjson.dumps([entry]), [(b"content-type", JSON)]

    async def _model_metadata(self, scope: Scope, receive: Receive, started: float) -> Response:
        session, _ = self._serving()
        return 200, orjson.dumps(session.metadata), [(b"content-type", JSON)]

    async def _live(self, scope: Scope, receive: Receive, started: float) -> Response:
        return 200, b'{"live":true}', [(b"content-type", JSON)]

    async def _ready(self, scope: Scope, receive: Receive, started: float) -> Response:
        if self.ready if self.peers is None else self.peers.all_ready(self.ready):
            return 200, b'{"ready":true}', [(b"content-type", JSON)]
        return 503, b'{"ready":false}', [(b"content-type", JSON)]

    def exposition(self) -> bytes:
        return self.metrics.render()

    async def _metrics(self, scope: Scope, receive: Receive, started: float) -> Response:
        text = self.exposition()
        if self.peers is not None:
            text = self.peers.gather(text)
        return 200, text, [(b"content-type", TEXT_METRICS)]

