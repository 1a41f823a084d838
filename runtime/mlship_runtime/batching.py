"""Dynamic batching on the event loop, with a bounded queue and a greedy dispatcher.

Two modes, chosen per model at warm-up (``ModelSession.on_loop``). Fast models (a full batch
runs in under a few milliseconds) run on the event loop: a thread hop costs more than they do,
and requests that arrive in the same loop iteration are merged into one run. Slower models run
in an inference thread, greedily: when the model is idle a request runs at once; while a batch
runs the next one accumulates, up to ``max_batch_size`` rows. There a queued request waits at
most ``max_queue_delay_ms`` for a busy model before a second batch may start alongside the first,
so the delay bounds the extra queueing latency, and ``request_timeout_s`` bounds the wait (504).
Requests are merged only when their inputs share every dimension but the first and they ask for
the same outputs; results are split back by rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mlship_runtime.errors import HTTPError, InferenceFailed, Overloaded, Timeout
from mlship_runtime.metrics import Metrics
from mlship_runtime.session import ModelSession
from mlship_runtime.settings import RuntimeSettings

MAX_CONCURRENT_BATCHES = 2


class _Pending:
    __slots__ = ("enqueued", "feed", "future", "key", "names", "rows")

    def __init__(self, feed: Mapping[str, np.ndarray], rows: int, names: list[str],
                 key: list[Any], future: asyncio.Future[list[np.ndarray]]) -> None:
        self.feed = feed
        self.rows = rows
        self.names = names
        self.key = key
        self.future = future
        self.enqueued = time.perf_counter()


class Batcher:
    """Queues requests for one ``ModelSession`` and runs them, merged when possible."""

    def __init__(self, session: ModelSession, settings: RuntimeSettings, metrics: Metrics) -> None:
        self.session = session
        self.metrics = metrics
        self.batching = settings.batching and session.batchable
        self.max_rows = settings.max_batch_size if self.batching else 1
        self.max_delay = settings.max_queue_delay_ms / 1000
        self.max_queue = settings.max_queue_size
        self.retry_after = [(b"retry-after", b"1")]
        self._queue: deque[_Pending] = deque()
        self._inflight = 0
        self._executor = ThreadPoolExecutor(MAX_CONCURRENT_BATCHES, "mlship-infer")
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._dispatcher())
        self._scheduled = False
        self.on_loop = session.on_loop
        self.run_immediately = session.run_immediately
        self.loop_max_elements = session.loop_max_elements

    async def infer(self, feed: Mapping[str, np.ndarray], rows: int, names: list[str],
                    timeout: float) -> list[np.ndarray]:
        """Outputs ``names`` for ``feed``; raises Overloaded (503), Timeout (504) or 4xx."""
        # One pass for the merge key and the size: this runs for every request.
        key: list[Any] = [names]
        size = 0
        for name, array in feed.items():
            key.append(name)
            key.append(array.shape[1:])
            key.append(array.dtype)
            size += array.size
        if self.on_loop and size > self.loop_max_elements:
            # Larger than anything timed at warm-up: it could stall the loop, so use a thread.
            return await self._in_thread(feed, rows, names, timeout)
        if self.on_loop and (self.run_immediately or not self.batching):
            return self._run_now(feed, rows, names)
        if len(self._queue) >= self.max_queue:
            self.metrics.rejected += 1
            raise Overloaded(f"queue full ({self.max_queue} requests waiting); retry later",
                             headers=self.retry_after)
        future: asyncio.Future[list[np.ndarray]] = self._loop.create_future()
        self._queue.append(_Pending(feed, rows, names, key, future))
        if self.on_loop:
            if not self._scheduled:
                # call_soon runs after every request task already made runnable by this loop
                # iteration's reads, so those join the batch at no extra latency.
                self._scheduled = True
                self._loop.call_soon(self._loop_batch)
            return await future
        self.metrics.queue_depth = len(self._queue)
        self._wake.set()
        if timeout <= 0:
            future.cancel()
            raise Timeout("request timed out before it could be queued")
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise Timeout(f"no result within the request timeout ({timeout:.3g} s left)") from None

    async def _in_thread(self, feed: Mapping[str, np.ndarray], rows: int, names: list[str],
                         timeout: float) -> list[np.ndarray]:
        pending = _Pending(feed, rows, names, [], self._loop.create_future())
        work = self._loop.run_in_executor(self._executor, self._run, [pending], rows)
        try:
            outputs, seconds = await asyncio.wait_for(work, timeout)
        except TimeoutError:
            raise Timeout(f"no result within the request timeout ({timeout:.3g} s left)") from None
        self._deliver([pending], rows, outputs, seconds, None)
        return await pending.future

    def _run_now(self, feed: Mapping[str, np.ndarray], rows: int,
                 names: list[str]) -> list[np.ndarray]:
        started = time.perf_counter()
        outputs = self.session.run(feed, names)
        self.metrics.inference.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(rows)
        return outputs

    def _loop_batch(self) -> None:
        self._scheduled = False
        batch, rows = self._take()
        if batch:
            try:
                outputs, seconds = self._run(batch, rows)
            except Exception as exc:  # delivered to every request of the batch
                self._deliver(batch, rows, None, 0.0, exc)
            else:
                self._deliver(batch, rows, outputs, seconds, None)
        if self._queue:
            self._scheduled = True
            self._loop.call_soon(self._loop_batch)

    async def _dispatcher(self) -> None:
        wake = self._wake
        while True:
            if not self._queue or self._inflight >= MAX_CONCURRENT_BATCHES:
                wake.clear()
                await wake.wait()
                continue
            now = time.perf_counter()
            deadline = self._queue[0].enqueued + self.max_delay
            queued_rows = sum(p.rows for p in self._queue) if self._inflight else 0
            if not self._inflight or queued_rows >= self.max_rows or now >= deadline:
                self._dispatch()
                continue
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), deadline - now)

    def _take(self) -> tuple[list[_Pending], int]:
        batch: list[_Pending] = []
        rows = 0
        queue = self._queue
        while queue:
            pending = queue[0]
            if pending.future.done():  # timed out or cancelled while queued
                queue.popleft()
                continue
            if batch and (rows + pending.rows > self.max_rows or pending.key != batch[0].key):
                break
            queue.popleft()
            batch.append(pending)
            rows += pending.rows
            if not self.batching:
                break
        self.metrics.queue_depth = len(queue)
        return batch, rows

    def _dispatch(self) -> None:
        batch, rows = self._take()
        if not batch:
            return
        self._inflight += 1
        future = self._loop.run_in_executor(self._executor, self._run, batch, rows)
        future.add_done_callback(lambda done: self._finished(batch, rows, done))

    def _run(self, batch: Sequence[_Pending], rows: int) -> tuple[list[np.ndarray], float]:
        if len(batch) == 1:
            feed = batch[0].feed
        else:
            feed = {name: np.concatenate([p.feed[name] for p in batch])
                    for name in batch[0].feed}
        started = time.perf_counter()
        outputs = self.session.run(feed, batch[0].names)
        return outputs, time.perf_counter() - started

    def _finished(self, batch: Sequence[_Pending], rows: int,
                  done: asyncio.Future[tuple[list[np.ndarray], float]]) -> None:
        self._inflight -= 1
        self._wake.set()
        error = done.exception()
        if error is None:
            outputs, seconds = done.result()
            self._deliver(batch, rows, outputs, seconds, None)
        else:
            self._deliver(batch, rows, None, 0.0, error)

    def _deliver(self, batch: Sequence[_Pending], rows: int, outputs: list[np.ndarray] | None,
                 seconds: float, error: BaseException | None) -> None:
        if outputs is not None:
            self.metrics.inference.observe(seconds)
            self.metrics.batch_size.observe(rows)
            if len(batch) > 1 and any(len(out) != rows for out in outputs):
                error = InferenceFailed("the model's outputs are not row-aligned with its "
                                        "inputs; serve it with batching off")
        if error is not None and not isinstance(error, HTTPError):
            error = InferenceFailed(f"onnxruntime could not run the model: {error}")
        start = 0
        for pending in batch:
            end = start + pending.rows
            if not pending.future.done():
                if error is not None:
                    pending.future.set_exception(error)
                elif len(batch) == 1 or outputs is None:
                    pending.future.set_result(outputs or [])
                else:
                    pending.future.set_result([out[start:end] for out in outputs])
            start = end

    @property
    def idle(self) -> bool:
        return not self._queue and not self._inflight

    async def close(self) -> None:
        self._task.cancel()
        self._executor.shutdown(wait=True)
