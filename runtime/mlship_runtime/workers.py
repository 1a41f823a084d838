"""``workers > 1``: one scrape answers for every worker.

The workers share one listening socket, so a Prometheus scrape reaches whichever worker
accepts it. Were each to answer with its own counters, one series would jump between workers
and every ``rate()`` over it would be wrong. Instead each worker labels its series
``worker="N"`` and publishes its exposition into a directory the supervisor made, every second
and on every scrape it answers; a scrape returns every worker's latest exposition, merged
family by family. Queries that ``sum`` (the canary analysis, the drift and error alerts) add
the workers up; a series is at most ``PUBLISH_INTERVAL_S`` old.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from mlship_runtime.metrics import merge_expositions

PUBLISH_INTERVAL_S = 1.0


class SharedMetrics:
    """One worker's side of the shared exposition directory."""

    def __init__(self, directory: str, index: int) -> None:
        self.directory = Path(directory)
        self.label = str(index)
        self._own = self.directory / f"worker-{index}.prom"

    def publish(self, text: bytes) -> None:
        # Written aside and renamed: a reader never sees half an exposition.
        partial = self._own.with_suffix(".partial")
        partial.write_bytes(text)
        partial.replace(self._own)

    def gather(self, own: bytes) -> bytes:
        """This worker's fresh exposition plus every other worker's latest one."""
        self.publish(own)
        parts = []
        for path in sorted(self.directory.glob("worker-*.prom")):
            if path == self._own:
                parts.append(own)
                continue
            with contextlib.suppress(OSError):  # a worker that never published yet
                parts.append(path.read_bytes())
        return merge_expositions([(text, frozenset()) for text in parts])

    async def keep_published(self, render: Callable[[], bytes]) -> None:
        """Until cancelled: publish this worker's series every PUBLISH_INTERVAL_S."""
        while True:
            with contextlib.suppress(OSError):  # a full /tmp must not stop serving
                self.publish(render())
            await asyncio.sleep(PUBLISH_INTERVAL_S)
