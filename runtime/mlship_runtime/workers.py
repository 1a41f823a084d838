"""``workers > 1``: a scrape and a readiness probe answer for every worker.

The workers share one listening socket, so a Prometheus scrape or a kubelet probe reaches
whichever worker accepts it. Were each to answer for itself, one metric series would jump
between workers (every ``rate()`` over it wrong), and a pod would turn ready as soon as its
first worker had loaded while the others still answered 503. Instead each worker publishes,
into a directory the supervisor made, its exposition (its series labelled ``worker="N"``) and
a marker while it is ready: every ``PUBLISH_INTERVAL_S`` and whenever it answers a scrape or a
probe. A scrape returns every worker's latest series, merged family by family (queries that
``sum`` add the workers up); a probe is 200 only when every worker is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from mlship_runtime.metrics import merge_expositions

PUBLISH_INTERVAL_S = 1.0


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
        for path in sorted(self.directory.glob("worker-*.prom")):
            if path == self._exposition:
                parts.append(own)
                continue
            with contextlib.suppress(OSError):
                parts.append(path.read_bytes())
        return merge_expositions([(text, frozenset()) for text in parts])

    def all_ready(self, own: bool) -> bool:
        """``own`` and every other worker ready (as of its last publication)."""
        self._mark(own)
        return own and all((self.directory / f"worker-{index}.ready").exists()
                           for index in range(self.count))

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
