"""Several models and pipelines in one process: a thin router over one serving unit each.

Each model of a repository file (``--models``, mlship_runtime.repository) gets the serving unit
a single-model process has, an ``App`` with its own session, batcher, prediction cache, drift
monitor and ``Metrics``; each pipeline gets a ``PipelineApp`` over those units.
``/v2/models/{name}/...`` is handed to that unit as it came, so per-model routes, errors,
readiness and metrics are exactly a single-model process's. The router answers the
process-wide endpoints itself: server metadata, liveness, readiness (every model and pipeline
ready), the repository index, ``/metrics`` (every unit's series, one HELP/TYPE per family) and
``/predict`` (``?model=NAME`` when there are several). A single-model process (``--model``)
never goes through here, so its hot path is unchanged.

All models are loaded and every pipeline is checked before any of them is attached: the
process is either entirely ready or not at all, and a bad pipeline never serves a request.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from mlship_runtime.app import SERVER_METADATA, App
from mlship_runtime.asgi import (
    JSON,
    TEXT_METRICS,
    Receive,
    Scope,
    Send,
    error_response,
    lifespan,
    respond,
)
from mlship_runtime.errors import BadRequest, MethodNotAllowed, NotFound
from mlship_runtime.loading import EXIT_SETTINGS, LoadError, describe_load, load_model, new_metrics
from mlship_runtime.metrics import merge_expositions
from mlship_runtime.pipeline import PipelineApp, PipelinePlan, plan_pipeline
from mlship_runtime.repository import Repository, RepositoryError
from mlship_runtime.session import ModelSession
from mlship_runtime.settings import RuntimeSettings
from mlship_runtime.workers import Peers

if TYPE_CHECKING:
    from mlship_runtime.audit import Audit

log = logging.getLogger("mlship_runtime")
access_log = logging.getLogger("mlship_runtime.access")
_MODELS = "/v2/models/"
# A pipeline's own series count its requests; its runs are counted under each step's model.
_RUN_FAMILIES = frozenset({"mlship_inference_duration_seconds", "mlship_batch_size",
                           "mlship_queue_depth", "mlship_queue_rejected_total"})
_Handler = Callable[[Scope, Receive], Any]


class Router:
    """The ASGI app of a multi-model process."""

    def __init__(self, settings: RuntimeSettings, repository: Repository, *,
                 peers: Peers | None = None) -> None:
        self.settings = settings
        self.repository = repository
        self.on_startup: Callable[[], None] | None = None
        self.peers = peers  # workers > 1: scrapes and probes answer for every worker
        self.audit: Audit | None = None  # the audit trail (mlship_runtime.audit), when on
        worker = peers.label if peers is not None else ""
        self.models: dict[str, App] = {}
        for entry in repository.models:
            self.models[entry.name] = App(entry.settings, new_metrics(entry.settings, worker))
        self.pipelines: dict[str, PipelineApp] = {}
        for spec in repository.pipelines:
            own = settings.replace(model_name=spec.name, prediction_cache_entries=0)
            self.pipelines[spec.name] = PipelineApp(spec, own, new_metrics(own, worker),
                                                    self.models)
        self.units: dict[str, App] = {**self.models, **self.pipelines}
        self._only = next(iter(self.units.values())) if len(self.units) == 1 else None

    # ---- start and stop ----------------------------------------------------------------------

    def load(self) -> Callable[[], None]:
        """In the load thread: every model, then every pipeline's check; raises ``LoadError``.

        Returns what the event loop calls to start serving them all at once.
        """
        sessions: dict[str, ModelSession] = {}
        for entry in self.repository.models:
            unit = self.models[entry.name]
            loaded = load_model(entry.settings, unit.metrics, unit)
            log.info("model %s loaded %s", entry.name, describe_load(entry.settings, loaded))
            sessions[entry.name] = loaded.session
        plans: dict[str, PipelinePlan] = {}
        for spec in self.repository.pipelines:
            try:
                plans[spec.name] = plan_pipeline(spec, sessions, self.repository.source)
            except RepositoryError as exc:
                log.error("invalid model repository %s", exc)
                raise LoadError(EXIT_SETTINGS) from None
        return functools.partial(self._attach, sessions, plans)

    def _attach(self, sessions: dict[str, ModelSession], plans: dict[str, PipelinePlan]) -> None:
        for name, session in sessions.items():
            self.models[name].attach(session)
        for name, plan in plans.items():
            self.pipelines[name].attach_plan(plan)
        log.info("%d model(s) and %d pipeline(s) from %s ready", len(sessions), len(plans),
                 self.repository.source)

    def drain(self) -> None:
        for unit in self.units.values():
            unit.drain()

    @property
    def ready(self) -> bool:
        return all(unit.ready for unit in self.units.values())

    # ---- HTTP --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith(_MODELS):
                unit = self.units.get(path[len(_MODELS):].split("/", 1)[0])
                if unit is not None:  # the unit routes, answers and counts the request
                    await unit(scope, receive, send)
                    return
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await lifespan(receive, send, self.on_startup, self.close)

    async def close(self) -> None:
        for unit in self.models.values():
            await unit.close()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Process-wide endpoints; these are not in any model's request metrics."""
        started = time.perf_counter()
        try:
            forward = self._forward_predict(scope)
            if forward is not None:
                await forward(scope, receive, send)
                return
            status, body = await self._route(scope["method"], scope["path"])(scope, receive)
            headers = [(b"content-type", TEXT_METRICS if scope["path"] == "/metrics" else JSON)]
        except Exception as error:  # every failure gets its answer
            status, body, headers = error_response(error, scope)
        if self.audit is not None:  # the audit line, and x-request-id on the answer
            self.audit.answered(scope, status, headers, started)
        await respond(scope, send, status, body, headers)

    def _forward_predict(self, scope: Scope) -> App | None:
        """The unit that answers ``/predict`` (it checks the method itself), or None."""
        if scope["path"] != "/predict":
            return None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        name = (query.get("model") or [None])[0]
        if name is None:
            if self._only is not None:
                return self._only
            raise BadRequest(f"this server serves several models {sorted(self.units)}; name "
                             "one with /predict?model=NAME (or use /v2/models/NAME/infer)")
        unit = self.units.get(name)
        if unit is None:
            raise self._unknown(name)
        return unit

    def _unknown(self, name: str) -> NotFound:
        return NotFound(f"unknown model '{name}'; this server serves {sorted(self.units)}")

    def _route(self, method: str, path: str) -> _Handler:
        get = method in ("GET", "HEAD")
        if path.startswith(_MODELS) and path[len(_MODELS):].split("/", 1)[0]:
            raise self._unknown(path[len(_MODELS):].split("/", 1)[0])
        handlers: dict[str, tuple[bool, _Handler]] = {
            "/": (True, self._server_metadata),  # a browser or curl at the bare address
            "/v2": (True, self._server_metadata), "/v2/health/live": (True, self._live),
            "/v2/health/ready": (True, self._ready), "/health": (True, self._ready),
            "/metrics": (True, self._metrics), "/v2/repository/index": (False, self._index)}
        found = handlers.get(path.rstrip("/") or path)
        if found is None:
            raise NotFound(f"no route for {method} {path}")
        wants_get, handler = found
        if wants_get != get or (not wants_get and method != "POST"):
            raise MethodNotAllowed(f"{method} not allowed on {path}; use "
                                   f"{'GET' if wants_get else 'POST'}")
        return handler

    async def _server_metadata(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        return 200, SERVER_METADATA

    async def _live(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        return 200, b'{"live":true}'

    async def _ready(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        ready = self.ready if self.peers is None else self.peers.all_ready(self.ready)
        return (200, b'{"ready":true}') if ready else (503, b'{"ready":false}')

    async def _index(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        entries = []
        for name, unit in self.units.items():
            entry: dict[str, Any] = {"name": name, "state": "READY" if unit.ready else
                                     "UNAVAILABLE"}
            if unit.settings.model_version is not None and name in self.models:
                entry["version"] = unit.settings.model_version
            entries.append(entry)
        return 200, orjson.dumps(entries)

    def exposition(self) -> bytes:
        """Every model's and pipeline's series, one HELP/TYPE per family."""
        return merge_expositions(
            [(unit.metrics.render(), _RUN_FAMILIES if name in self.pipelines else frozenset())
             for name, unit in self.units.items()])

    async def _metrics(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        text = self.exposition()
        return 200, self.peers.gather(text) if self.peers is not None else text
