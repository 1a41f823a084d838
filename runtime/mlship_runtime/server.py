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
import errno
import functools
import logging
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Generator
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from mlship_runtime import logs
from mlship_runtime.app import App
from mlship_runtime.audit import audited
from mlship_runtime.connection import connection_class
from mlship_runtime.loading import (
    EXIT_MODEL,
    EXIT_SETTINGS,
    LoadError,
    describe_load,
    load_model,
    new_metrics,
)
from mlship_runtime.protocol import Limits
from mlship_runtime.router import Router
from mlship_runtime.settings import RuntimeSettings
from mlship_runtime.workers import Peers, Supervisor

if TYPE_CHECKING:
    from mlship_runtime.repository import Repository

log = logging.getLogger("mlship_runtime")
EXIT_OK, EXIT_BIND = 0, 1
FILES_BESIDE_CONNECTIONS = 64  # the model, its data, logs, the listener, worker files


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


def _serve(settings: RuntimeSettings, sock: socket.socket | None,
           repository: Repository | None = None, peers: Peers | None = None) -> int:
    # The inference thread needs the GIL back to hand results over; with the default 5 ms
    # switch interval it idles that long behind the event loop after every batch.
    sys.setswitchinterval(0.0002)
    if sock is None:  # bind before anything loads: a port in use is one line and exit 1
        sock = _listen(settings)
        if sock is None:
            return EXIT_BIND
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
        app = Router(settings, repository, peers=peers)
        load = app.load
    limits = connection_limits(settings)
    config = uvicorn.Config(
        audited(app, settings, _versions(app)), host=settings.host, port=settings.port,
        loop=_loop_name(),
        http=connection_class(limits),
        lifespan="on", access_log=False, log_config=None, server_header=False,
        proxy_headers=False,  # X-Forwarded-* rewriting costs every request, and the audit
        # line records the TCP peer, which a client cannot forge
        # uvicorn takes a float here although its annotation says int.
        timeout_graceful_shutdown=settings.drain_grace_s,  # type: ignore[arg-type]
        timeout_keep_alive=30)
    server = _Server(config, app)
    outcome = {"code": EXIT_OK}

    def load_in_thread(loop: asyncio.AbstractEventLoop) -> None:
        try:
            attach = load()
        except LoadError as exc:
            outcome["code"] = exc.code
            loop.call_soon_threadsafe(server.stop)
            return
        except BaseException as exc:  # a load thread that dies must end the process
            log.error("cannot serve model %s: %s", settings.model or settings.models,
                      logs.one_line(exc))
            outcome["code"] = EXIT_MODEL
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
    finally:
        if app.audit is not None:  # the last lines, before a worker's os._exit
            app.audit.flush()
    if outcome["code"] == EXIT_OK and not server.started:
        return EXIT_BIND
    return outcome["code"]


def connection_limits(settings: RuntimeSettings) -> Limits:
    """What every connection is held to (mlship_runtime.protocol), from the settings."""
    return Limits(settings.max_header_bytes, settings.header_timeout_s,
                  settings.request_timeout_s, connection_cap(settings.max_connections))


def connection_cap(wanted: int) -> int:
    """``max_connections``, within what the open-file limit allows (raised to its hard limit
    first: a container's soft default of 1024 would otherwise fail accept() before the cap)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = wanted + FILES_BESIDE_CONNECTIONS if hard == resource.RLIM_INFINITY \
            else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
            soft = max(soft, target)
    cap = max(1, min(wanted, soft - FILES_BESIDE_CONNECTIONS))
    if cap < wanted:
        log.warning("max_connections %d lowered to %d: the open-file limit is %d", wanted, cap,
                    soft)
    return cap


def _versions(app: App | Router) -> dict[str, str | None]:
    """Model name -> version, for the audit line of a request that names no version."""
    if isinstance(app, App):
        return {app.settings.model_name: app.settings.model_version}
    return {name: unit.settings.model_version for name, unit in app.models.items()}


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


def _listen(settings: RuntimeSettings) -> socket.socket | None:
    """The listening socket, or None after one error line saying why and what to do."""
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        advice = "; pass another --port" if exc.errno == errno.EADDRINUSE else ""
        log.error("cannot listen on %s:%d: %s%s", settings.host, settings.port,
                  exc.strerror or exc, advice)
        return None
    sock.listen(2048)
    return sock


def _supervise(settings: RuntimeSettings, repository: Repository | None) -> int:
    """Fork ``workers`` single-process servers sharing one listening socket."""
    sock = _listen(settings)
    if sock is None:
        return EXIT_BIND
    sock.set_inheritable(True)
    shared_dir = tempfile.mkdtemp(prefix="mlship-workers-")
    try:
        return _fork_workers(settings, sock, repository, shared_dir)
    finally:
        shutil.rmtree(shared_dir, ignore_errors=True)


def _fork_workers(settings: RuntimeSettings, sock: socket.socket,
                  repository: Repository | None, shared_dir: str) -> int:
    def serve(index: int) -> int:
        return _serve(settings, sock, repository, Peers(shared_dir, index, settings.workers))

    return Supervisor(shared_dir, serve, EXIT_MODEL).run(settings.workers)
