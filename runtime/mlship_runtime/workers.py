"""``workers > 1``: a scrape and a readiness probe answer for every worker.

The workers share one listening socket, so a Prometheus scrape or a kubelet probe reaches
whichever worker accepts it. Were each to answer for itself, one metric series would jump
between workers (every ``rate()`` over it wrong), and a pod would turn ready as soon as its
first worker had loaded while the others still answered 503. Instead each worker publishes,
into a directory the supervisor made, its exposition (its series labelled ``worker="N"``) and
a marker while it is ready: every ``PUBLISH_INTERVAL_S`` and whenever it answers a scrape or a
probe. A scrape returns every worker's latest series, merged family by family (queries that
``sum`` add the workers up); a probe is 200 only when every worker is ready. A worker that dies
has its files removed by the supervisor (``forget``) before it is replaced, and files not
refreshed for ``STALE_S`` (a worker stopped or wedged) count as absent: its series are not
exported and the pod is not ready until the worker, or its replacement, publishes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from mlship_runtime.metrics import merge_expositions

log = logging.getLogger("mlship_runtime")
PUBLISH_INTERVAL_S = 1.0
RESTARTS_MAX, RESTARTS_WINDOW_S = 5, 60.0
STALE_S = 5 * PUBLISH_INTERVAL_S


def _fresh(path: Path, now: float) -> bool:
    try:
        return now - path.stat().st_mtime < STALE_S
    except OSError:
        return False


class Peers:
    """One worker's side of the directory it shares with the other ``count - 1`` workers."""

    def __init__(self, directory: str, index: int, count: int) -> None:
        self.directory = Path(directory)
        self.label = str(index)
        self.count = count
        self._exposition = self.directory / f"worker-{index}.prom"
        self._ready_marker = self.directory / f"worker-{index}.ready"

    def publish(self, exposition: bytes, ready: bool) -> None:
        self._write(exposition)
        self._mark(ready)

    def gather(self, own: bytes) -> bytes:
        """This worker's fresh exposition plus every other worker's latest one."""
        self._write(own)
        parts = []
        now = time.time()
        for path in sorted(self.directory.glob("worker-*.prom")):
            if path == self._exposition:
                parts.append(own)
                continue
            if _fresh(path, now):
                with contextlib.suppress(OSError):
                    parts.append(path.read_bytes())
        return merge_expositions([(text, frozenset()) for text in parts])

    def all_ready(self, own: bool) -> bool:
        """``own`` and every other worker ready (as of its last publication)."""
        self._mark(own)
        now = time.time()
        return own and all(_fresh(self.directory / f"worker-{index}.ready", now)
                           for index in range(self.count))

    @staticmethod
    def forget(directory: str, index: int) -> None:
        """The supervisor's part: a dead worker's series and readiness are gone with it."""
        for suffix in (".ready", ".prom", ".partial"):
            (Path(directory) / f"worker-{index}{suffix}").unlink(missing_ok=True)

    def _write(self, exposition: bytes) -> None:
        # Written aside and renamed: a reader never sees half an exposition.
        partial = self._exposition.with_suffix(".partial")
        partial.write_bytes(exposition)
        partial.replace(self._exposition)

    def _mark(self, ready: bool) -> None:
        if ready:
            self._ready_marker.touch()
        else:
            self._ready_marker.unlink(missing_ok=True)

    async def keep_published(self, render: Callable[[], bytes],
                             ready: Callable[[], bool]) -> None:
        """Until cancelled: publish this worker's series and readiness every interval."""
        while True:
            with contextlib.suppress(OSError):  # a full /tmp must not stop serving
                self.publish(render(), ready())
            await asyncio.sleep(PUBLISH_INTERVAL_S)


class Supervisor:
    """The parent of the workers. One killed (SIGKILL, the OOM killer) is replaced, its series
    and ready marker removed first so the pod turns unready until the replacement has loaded;
    one that exits on its own (its model cannot be served) stops the others with its code, as
    do more than ``RESTARTS_MAX`` replacements within ``RESTARTS_WINDOW_S``. SIGTERM and SIGINT
    are forwarded; the exit code is then 0 if every worker exited cleanly."""

    def __init__(self, directory: str, serve: Callable[[int], int], crash_code: int) -> None:
        self.directory = directory
        self.serve = serve  # in the forked child: serve as worker N, return its exit code
        self.crash_code = crash_code
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self.code = 0
        self._restarts: deque[float] = deque()

    def run(self, count: int) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        for index in range(count):
            self._spawn(index)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index = self.children.pop(pid, -1)
            if index >= 0:
                Peers.forget(self.directory, index)
                self._ended(index, pid, os.waitstatus_to_exitcode(status))
        return self.code

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # child: serve, never return into the parent's code
            for sig in (signal.SIGTERM, signal.SIGINT):  # not the supervisor's forwarding
                signal.signal(sig, signal.SIG_DFL)
            code = self.crash_code
            try:
                code = self.serve(index)
            finally:
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = index

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        self.stopping = True
        for child in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)

    def _stop(self, code: int) -> None:
        if self.code == 0:
            self.code = code
        self._forward(signal.SIGTERM, None)

    def _ended(self, index: int, pid: int, code: int) -> None:
        if self.stopping:
            if code not in (0, -signal.SIGTERM, -signal.SIGINT) and self.code == 0:
                self.code = code if code > 0 else self.crash_code
            return
        if code > 0:  # the worker's own verdict (e.g. 3: the model cannot be served)
            self._stop(code)
            return
        now = time.monotonic()
        self._restarts.append(now)
        while now - self._restarts[0] > RESTARTS_WINDOW_S:
            self._restarts.popleft()
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else "exited"
        if len(self._restarts) > RESTARTS_MAX:
            log.error("worker %d (pid %d) %s, the %d. time in %.0f s: stopping", index, pid,
                      how, len(self._restarts), RESTARTS_WINDOW_S)
            self._stop(self.crash_code)
            return
        log.warning("worker %d (pid %d) %s; the pod is not ready until its replacement has "
                    "loaded", index, pid, how)
        self._spawn(index)
