"""Process lifecycle: uvicorn on uvloop + httptools, model loading, signals, drain and exit codes.

The HTTP listener starts first so ``/v2/health/live`` answers while the model loads; the model
is loaded and warmed up in a thread and handed to the app on the event loop, which is when it
turns ready. SIGTERM/SIGINT handlers are installed explicitly (PID 1 in a container has no
default handlers): they flip readiness first, then uvicorn stops accepting connections and lets
in-flight requests finish for up to ``drain_grace_s``. Exit codes: 0 clean shutdown, 1 the port
cannot be bound, 2 a drift baseline or a model repository file (``--models``) that is invalid or
does not fit the models, 3 the model cannot be loaded or its warm-up fails, 11 a remote model
cannot be downloaded or a file's sha256 differs from its manifest (mlship_runtime.fetch): the
server is live meanwhile but never ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from mlship_runtime import fetch, logs
from mlship_runtime.app import App
from mlship_runtime.drift import BaselineError, DriftMonitor
from mlship_runtime.metrics import Metrics
from mlship_runtime.s3 import S3Error
from mlship_runtime.session import ModelSession
from mlship_runtime.settings import RuntimeSettings
from mlship_runtime.workers import Peers

if TYPE_CHECKING:
    from mlship_runtime.repository import Repository
    from mlship_runtime.router import Router

log = logging.getLogger("mlship_runtime")
EXIT_OK, EXIT_BIND, EXIT_MODEL, EXIT_STORAGE = 0, 1, 3, 11
EXIT_SETTINGS = 2  # as for invalid options; here: a drift baseline that does not fit


class LoadError(Exception):
    """A model that cannot be served: the reason is logged already, ``code`` is the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Loaded:
    session: ModelSession
    seconds: float  # fetch, session creation and warm-up
    batch1: float  # median batch-1 run at warm-up


def run(settings: RuntimeSettings, repository: Repository | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code.

    With ``settings.models`` the repository file is read here, before anything listens;
    ``mlship serve`` passes the ``repository`` it read itself (it also reads YAML).
    """
    logs.configure(settings)
    if settings.models and repository is None:
        from mlship_runtime.repository import RepositoryError, read

        try:
            repository = read(settings.models, settings)
        except RepositoryError as exc:
            log.error("invalid model repository %s", exc)
            return EXIT_SETTINGS
    if settings.workers > 1:
        return _supervise(settings, repository)
    return _serve(settings, None, repository)


def new_metrics(settings: RuntimeSettings, worker: str = "") -> Metrics:
    metrics = Metrics(settings.model_name, track=settings.track, revision=settings.revision,
                      worker=worker)
    metrics.version = settings.model_version or ""
    return metrics


def load_model(settings: RuntimeSettings, metrics: Metrics, app: App) -> Loaded:
    """Fetch, load and warm up ``settings.model`` in the load thread; the caller attaches it
    on the event loop. When it cannot be served: one error line, then ``LoadError``."""
    started = time.perf_counter()
    try:
        local = fetch.resolve(settings)
    except (fetch.FetchError, S3Error, OSError) as exc:
        log.error("cannot fetch model %s: %s", settings.model, exc)
        raise LoadError(EXIT_STORAGE) from None
    try:
        session = ModelSession(local)
        batch1 = session.warm_up(settings.max_batch_size)
    except Exception as exc:  # any load or warm-up failure ends the process with code 3
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        log.error("cannot serve model %s: %s", settings.model, message)
        raise LoadError(EXIT_MODEL) from None
    if settings.baseline:  # drift accounting: only with a baseline, nothing otherwise
        try:
            drift = DriftMonitor.from_file(
                settings.baseline, [("model", metrics.model), *metrics.constant],
                session.inputs)
        except BaselineError as exc:
            log.error("invalid drift baseline: %s", exc)
            raise LoadError(EXIT_SETTINGS) from None
        app.drift = drift  # read by requests only after attach, which comes next
        metrics.collectors.append(drift.render)
        log.info("drift: %d input(s) tracked against %s (%d series)",
                 len(drift.tracked), settings.baseline, drift.series)
    seconds = time.perf_counter() - started
    metrics.load_seconds = seconds
    metrics.provider = session.provider
    return Loaded(session, seconds, batch1)


def describe_load(settings: RuntimeSettings, loaded: Loaded) -> str:
    session = loaded.session
    return (f"in {loaded.seconds:.3f} s (provider {session.provider}, intra-op threads "
            f"{session.intra_op_threads}, batch-1 run {loaded.batch1 * 1000:.3f} ms, "
            f"batching {_batching_mode(settings, session)})")


def _serve(settings: RuntimeSettings, sock: socket.socket | None,
           repository: Repository | None = None, peers: Peers | None = None) -> int:
    # The inference thread needs the GIL back to hand results over; with the default 5 ms
    # switch interval it idles that long behind the event loop after every batch.
    sys.setswitchinterval(0.0002)
    app: App | Router
    if repository is None:
        metrics = new_metrics(settings, peers.label if peers is not None else "")
        app = single = App(settings, metrics)
        app.peers = peers

        def load() -> Callable[[], None]:
            loaded = load_model(settings, metrics, single)
            log.info("model %s ready %s", settings.model_name, describe_load(settings, loaded))
            return functools.partial(single.attach, loaded.session)
    else:
        from mlship_runtime.router import Router  # it imports this module

        app = Router(settings, repository, peers=peers)
        load = app.load
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, loop=_loop_name(), http="httptools",
        lifespan="on", access_log=False, log_config=None, server_header=False,
        proxy_headers=False,  # X-Forwarded-* rewriting costs every request; the runtime never
        # uses the client address
        timeout_graceful_shutdown=settings.drain_grace_s, timeout_keep_alive=30)
    server = _Server(config, app)
    outcome = {"code": EXIT_OK}

    def load_in_thread(loop: asyncio.AbstractEventLoop) -> None:
        try:
            attach = load()
        except LoadError as exc:
            outcome["code"] = exc.code
            loop.call_soon_threadsafe(server.stop)
            return
        loop.call_soon_threadsafe(attach)

    background: list[asyncio.Task[None]] = []  # referenced here so it is not collected

    def on_startup() -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=load_in_thread, args=(loop,), name="mlship-load",
                         daemon=True).start()
        if peers is not None:
            background.append(loop.create_task(
                peers.keep_published(app.exposition, lambda: app.ready)))

    app.on_startup = on_startup
    try:
        server.run(sockets=[sock] if sock is not None else None)
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind
        return int(exc.code or 0) if outcome["code"] == EXIT_OK else outcome["code"]
    if outcome["code"] == EXIT_OK and not server.started:
        return EXIT_BIND
    return outcome["code"]


def _batching_mode(settings: RuntimeSettings, session: ModelSession) -> str:
    if not (settings.batching and session.batchable):
        return "off"
    if session.run_immediately:
        return "on, but runs start at once (a batch-1 run is cheaper than merging requests)"
    return f"on, {'event loop' if session.on_loop else 'inference thread'}"


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class _Server(uvicorn.Server):
    """uvicorn's server with drain-aware signal handling and no signal re-raise on exit."""

    def __init__(self, config: uvicorn.Config, app: App | Router) -> None:
        super().__init__(config)
        self.mlship_app = app

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises the signal after shutdown, which would make the exit status
        # "killed by SIGTERM" instead of 0; readiness must also flip before the listener closes.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            return
        if not self.should_exit:
            log.info("received %s: not ready, draining in-flight requests (up to %.0f s)",
                     signal.Signals(sig).name, self.config.timeout_graceful_shutdown or 0)
        self.stop()

    def stop(self) -> None:
        self.mlship_app.drain()
        self.should_exit = True


def _supervise(settings: RuntimeSettings, repository: Repository | None) -> int:
    """Fork ``workers`` single-process servers sharing one listening socket."""
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return EXIT_BIND
    sock.listen(2048)
    sock.set_inheritable(True)
    shared_dir = tempfile.mkdtemp(prefix="mlship-workers-")
    try:
        return _fork_workers(settings, sock, repository, shared_dir)
    finally:
        shutil.rmtree(shared_dir, ignore_errors=True)


def _fork_workers(settings: RuntimeSettings, sock: socket.socket,
                  repository: Repository | None, shared_dir: str) -> int:
    children: list[int] = []
    for index in range(settings.workers):
        pid = os.fork()
        if pid == 0:  # child: serve, never return into the parent's code
            code = EXIT_MODEL
            try:
                code = _serve(settings, sock, repository,
                              Peers(shared_dir, index, settings.workers))
            finally:
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)

    def forward(sig: int, frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    codes = []
    for child in children:
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        codes.append(code)
        if code != EXIT_OK:
            forward(signal.SIGTERM, None)  # one worker failing (e.g. model) stops the others
    return EXIT_MODEL if EXIT_MODEL in codes else max(codes, key=abs)
