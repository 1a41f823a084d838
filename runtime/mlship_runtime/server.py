"""Process lifecycle: uvicorn on uvloop + httptools, model loading, signals, drain and exit codes.

The HTTP listener starts first so ``/v2/health/live`` answers while the model loads; the model
is loaded and warmed up in a thread and handed to the app on the event loop, which is when it
turns ready. SIGTERM/SIGINT handlers are installed explicitly (PID 1 in a container has no
default handlers): they flip readiness first, then uvicorn stops accepting connections and lets
in-flight requests finish for up to ``drain_grace_s``. Exit codes: 0 clean shutdown, 1 the port
cannot be bound, 3 the model cannot be loaded or its warm-up fails, 11 a remote model cannot be
downloaded or a file's sha256 differs from its manifest (mlship_runtime.fetch): the server is
live meanwhile but never ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Generator
from types import FrameType

import uvicorn

from mlship_runtime import fetch, logs
from mlship_runtime.app import App
from mlship_runtime.drift import BaselineError, DriftMonitor
from mlship_runtime.metrics import Metrics
from mlship_runtime.s3 import S3Error
from mlship_runtime.session import ModelSession
from mlship_runtime.settings import RuntimeSettings

log = logging.getLogger("mlship_runtime")
EXIT_OK, EXIT_BIND, EXIT_MODEL, EXIT_STORAGE = 0, 1, 3, 11
EXIT_SETTINGS = 2  # as for invalid options; here: a drift baseline that does not fit


def run(settings: RuntimeSettings) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code."""
    logs.configure(settings)
    if settings.workers > 1:
        return _supervise(settings)
    return _serve(settings, None)


def _serve(settings: RuntimeSettings, sock: socket.socket | None) -> int:
    # The inference thread needs the GIL back to hand results over; with the default 5 ms
    # switch interval it idles that long behind the event loop after every batch.
    sys.setswitchinterval(0.0002)
    metrics = Metrics(settings.model_name, track=settings.track, revision=settings.revision)
    metrics.version = settings.model_version or ""
    app = App(settings, metrics)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, loop=_loop_name(), http="httptools",
        lifespan="on", access_log=False, log_config=None, server_header=False,
        proxy_headers=False,  # X-Forwarded-* rewriting costs every request; the runtime never
        # uses the client address
        timeout_graceful_shutdown=settings.drain_grace_s, timeout_keep_alive=30)
    server = _Server(config, app)
    outcome = {"code": EXIT_OK}

    def load(loop: asyncio.AbstractEventLoop) -> None:
        started = time.perf_counter()
        try:
            local = fetch.resolve(settings)
        except (fetch.FetchError, S3Error, OSError) as exc:
            log.error("cannot fetch model %s: %s", settings.model, exc)
            outcome["code"] = EXIT_STORAGE
            loop.call_soon_threadsafe(server.stop)
            return
        try:
            session = ModelSession(local)
            batch1 = session.warm_up(settings.max_batch_size)
        except Exception as exc:  # any load or warm-up failure ends the process with code 3
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            log.error("cannot serve model %s: %s", settings.model, message)
            outcome["code"] = EXIT_MODEL
            loop.call_soon_threadsafe(server.stop)
            return
        if settings.baseline:  # drift accounting: only with a baseline, nothing otherwise
            try:
                drift = DriftMonitor.from_file(
                    settings.baseline, [("model", metrics.model), *metrics.constant],
                    session.inputs)
            except BaselineError as exc:
                log.error("invalid drift baseline: %s", exc)
                outcome["code"] = EXIT_SETTINGS
                loop.call_soon_threadsafe(server.stop)
                return
            app.drift = drift  # read by requests only after attach, which comes next
            metrics.collectors.append(drift.render)
            log.info("drift: %d input(s) tracked against %s (%d series)",
                     len(drift.tracked), settings.baseline, drift.series)
        seconds = time.perf_counter() - started
        metrics.load_seconds = seconds
        metrics.provider = session.provider
        loop.call_soon_threadsafe(app.attach, session)
        log.info("model %s ready in %.3f s (provider %s, intra-op threads %d, batch-1 run "
                 "%.3f ms, batching %s)", settings.model_name, seconds, session.provider,
                 session.intra_op_threads, batch1 * 1000,
                 _batching_mode(settings, session))

    def on_startup() -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=load, args=(loop,), name="mlship-load", daemon=True).start()

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

    def __init__(self, config: uvicorn.Config, app: App) -> None:
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


def _supervise(settings: RuntimeSettings) -> int:
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
    children: list[int] = []
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:  # child: serve, never return into the parent's code
            code = EXIT_MODEL
            try:
                code = _serve(settings, sock)
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
