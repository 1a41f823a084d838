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

Bounds that hold in every mode: at most ``max_queue_size`` requests wait (queued, or waiting for
an inference thread), beyond that 503. A run in a thread is cut short (onnxruntime's terminate
flag) once every request in it is past its deadline, so a model whose run time depends on its
input cannot keep a thread past ``request_timeout_s``. A run on the event loop is watched from
a thread: past ``LOOP_BUDGET_S`` on a CPU (``LOOP_WALL_S`` of wall time) it is cut short,
the model is moved to the inference thread for good and the request runs again there, so the
loop (and the health endpoints) is never blocked for long by a run the warm-up did not foresee.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mlship_runtime.errors import HTTPError, InferenceFailed, Overloaded, RunCut, Timeout
from mlship_runtime.metrics import Metrics
from mlship_runtime.session import ModelSession
from mlship_runtime.settings import RuntimeSettings

log = logging.getLogger("mlship_runtime")
MAX_CONCURRENT_BATCHES = 2
# A run on the event loop longer than this is cut short and the model moves to a thread: health
# probes must answer within a second, whatever a request makes the model do.
LOOP_BUDGET_S = 0.2
# ...while the loop thread ran: one merely descheduled (a busy node, a CFS quota throttling the
# pod) blocked nothing by itself, and moving the model to a thread for good would cost every
# later request. Past LOOP_WALL_S of wall time a run is cut whatever the CPU did, so the loop
# stays within the health endpoints' second.
LOOP_WALL_S = 0.8
WATCH_INTERVAL_S = 0.05


class LoopWatch:
    """A thread that ends an event-loop run once it overruns ``LOOP_BUDGET_S`` while the loop
    thread was on a CPU.

    The loop thread sets ``current`` (its deadline and run options) around each run: two
    attribute writes, all the hot path pays. The watch reads the loop thread's CPU clock itself,
    from when it first sees a run: a run is cut once past its deadline if the loop thread ran
    for at least half the time since (or past LOOP_WALL_S whatever it did)."""

    def __init__(self) -> None:
        self.current: tuple[float, Any] | None = None
        self._stop = threading.Event()
        try:  # the loop thread's CPU clock (made on the loop thread), read from the watch
            self._clock: int | None = time.pthread_getcpuclockid(threading.get_ident())
        except (AttributeError, OSError):  # not on this platform: wall time alone
            self._clock = None
        threading.Thread(target=self._watch, name="mlship-loop-watch", daemon=True).start()

    def _watch(self) -> None:
        seen: tuple[Any, float, float] = (None, 0.0, 0.0)  # a run, and CPU and wall time then
        while not self._stop.wait(WATCH_INTERVAL_S):
            current = self.current
            if current is None:
                continue
            now = time.perf_counter()
            cpu = time.clock_gettime(self._clock) if self._clock is not None else now
            if seen[0] is not current:
                seen = (current, cpu, now)
            deadline, options = current
            watched = now - seen[2]  # 0 when first seen: no evidence yet
            if now > deadline and (now > deadline - LOOP_BUDGET_S + LOOP_WALL_S or (
                    watched > 0 and cpu - seen[1] >= watched / 2)):
                options.terminate = True

    def close(self) -> None:
        self._stop.set()


class _Pending:
    __slots__ = ("deadline", "enqueued", "feed", "future", "key", "names", "rows")

    def __init__(self, feed: Mapping[str, np.ndarray], rows: int, names: list[str],
                 key: list[Any], future: asyncio.Future[list[np.ndarray]],
                 deadline: float) -> None:
        self.feed = feed
        self.rows = rows
        self.names = names
        self.key = key
        self.future = future
        self.enqueued = time.perf_counter()
        self.deadline = deadline  # loop.time() past which nobody waits for the result


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
        self._thread_waiting = 0  # requests too large for the loop, waiting for a thread
        self._running: set[Any] = set()  # run options of the runs in threads, to end at close
        self._executor = ThreadPoolExecutor(MAX_CONCURRENT_BATCHES, "mlship-infer")
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._dispatcher())
        self._scheduled = False
        self.on_loop = session.on_loop
        self.run_immediately = session.run_immediately
        self.loop_max_elements = session.loop_max_elements
        self._watch: LoopWatch | None = None
        self._loop_options: Any = None
        if self.on_loop:
            self._watch = LoopWatch()
            self._loop_options = session.run_options()

    @property
    def waiting(self) -> int:
        return len(self._queue) + self._thread_waiting

    def admit(self) -> None:
        """Overloaded (503) when no request could be queued now: checked before the body is
        decoded, and again (``infer``) before it is queued."""
        if self._thread_waiting + len(self._queue) >= self.max_queue and not (
                self.on_loop and (self.run_immediately or not self.batching)):
            self.metrics.rejected += 1
            raise Overloaded(f"queue full ({self.max_queue} requests waiting); retry later",
                             headers=self.retry_after)

    async def infer(self, feed: Mapping[str, np.ndarray], rows: int, names: list[str],
                    timeout: float) -> list[np.ndarray]:
        """Outputs ``names`` for ``feed``; raises Overloaded (503), Timeout (504) or 4xx."""
        size = 0
        for array in feed.values():
            size += array.size
        if self.on_loop:
            if size > self.loop_max_elements:
                # Larger than anything timed at warm-up: it could stall the loop: a thread.
                return await self._in_thread(feed, rows, names, timeout)
            if self.run_immediately or not self.batching:
                try:
                    return self._run_now(feed, rows, names)
                except RunCut:
                    return await self._in_thread(feed, rows, names, self._moved(timeout, size))
        # The merge key: only requests that share it run in one batch.
        key: list[Any] = [names]
        for name, array in feed.items():
            key.append(name)
            key.append(array.shape[1:])
            key.append(array.dtype)
        if self.waiting >= self.max_queue:
            self.metrics.rejected += 1
            raise Overloaded(f"queue full ({self.max_queue} requests waiting); retry later",
                             headers=self.retry_after)
        future: asyncio.Future[list[np.ndarray]] = self._loop.create_future()
        self._queue.append(_Pending(feed, rows, names, key, future,
                                    self._loop.time() + timeout))
        if self.on_loop:
            if not self._scheduled:
                # call_soon runs after every request task already made runnable by this loop
                # iteration's reads, so those join the batch at no extra latency.
                self._scheduled = True
                self._loop.call_soon(self._loop_batch)
            try:
                return await future
            except RunCut:
                return await self._in_thread(feed, rows, names, self._moved(timeout, size))
        self.metrics.queue_depth = self.waiting
        self._wake.set()
        if timeout <= 0:
            future.cancel()
            raise Timeout("request timed out before it could be queued")
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise Timeout(f"no result within the request timeout ({timeout:.3g} s left)") from None

    def _moved(self, timeout: float, size: int) -> float:
        """A loop run overran LOOP_BUDGET_S: from now on the model runs in a thread."""
        if self.on_loop:
            self.on_loop = self.run_immediately = False
            self.session.metadata["parameters"]["execution"] = "thread"
            if self._watch is not None:
                self._watch.close()
            log.warning("model %s: a run of a %d-element request took over %.1f s on the event "
                        "loop (its run time depends on the input): cut short and run again in "
                        "the inference thread, where the model runs from now on",
                        self.session.name, size, LOOP_BUDGET_S)
        return timeout - LOOP_BUDGET_S

    async def _in_thread(self, feed: Mapping[str, np.ndarray], rows: int, names: list[str],
                         timeout: float) -> list[np.ndarray]:
        if self.waiting >= self.max_queue:  # the executor's own queue is unbounded
            self.metrics.rejected += 1
            raise Overloaded(f"queue full ({self.max_queue} requests waiting); retry later",
                             headers=self.retry_after)
        if timeout <= 0:
            raise Timeout("request timed out before it could run")
        pending = _Pending(feed, rows, names, [], self._loop.create_future(),
                           self._loop.time() + timeout)
        options = self.session.run_options()
        cut = self._loop.call_at(pending.deadline, _cut, options)
        self._thread_waiting += 1
        self.metrics.queue_depth = self.waiting
        work = self._loop.run_in_executor(self._executor, self._run, [pending], rows, options)
        try:
            outputs, seconds = await asyncio.wait_for(work, timeout)
        except TimeoutError:
            options.terminate = True  # nobody waits for this run any more
            raise Timeout(f"no result within the request timeout ({timeout:.3g} s left)") from None
        finally:
            cut.cancel()
            self._thread_waiting -= 1
            self.metrics.queue_depth = self.waiting
        self._deliver([pending], rows, outputs, seconds, None)
        return await pending.future

    def _run_now(self, feed: Mapping[str, np.ndarray], rows: int,
                 names: list[str]) -> list[np.ndarray]:
        started = time.perf_counter()
        outputs = self._on_loop(feed, names, started)
        self.metrics.inference.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(rows)
        return outputs

    def _loop_batch(self) -> None:
        self._scheduled = False
        batch, rows = self._take()
        if batch:
            try:
                outputs, seconds = self._run(batch, rows, None)
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
        self.metrics.queue_depth = len(queue) + self._thread_waiting
        return batch, rows

    def _dispatch(self) -> None:
        batch, rows = self._take()
        if not batch:
            return
        self._inflight += 1
        options = self.session.run_options()
        # Cut short once nobody waits for it any more: every request of the batch is past due.
        cut = self._loop.call_at(max(p.deadline for p in batch), _cut, options)
        future = self._loop.run_in_executor(self._executor, self._run, batch, rows, options)
        future.add_done_callback(lambda done: self._finished(batch, rows, done, cut))

    def _run(self, batch: Sequence[_Pending], rows: int,
             options: Any) -> tuple[list[np.ndarray], float]:
        """One run; ``options`` None means on the event loop (watched, see LoopWatch)."""
        if len(batch) == 1:
            feed = batch[0].feed
        else:
            feed = {name: np.concatenate([p.feed[name] for p in batch])
                    for name in batch[0].feed}
        started = time.perf_counter()
        if options is None:
            outputs = self._on_loop(feed, batch[0].names, started)
        else:
            self._running.add(options)
            try:
                outputs = self.session.run(feed, batch[0].names, options)
            finally:
                self._running.discard(options)
        return outputs, time.perf_counter() - started

    def _on_loop(self, feed: Mapping[str, np.ndarray], names: list[str],
                 started: float) -> list[np.ndarray]:
        watch, options = self._watch, self._loop_options
        if watch is None:  # queued before the model moved to a thread: run it there
            raise RunCut("the model moved to the inference thread")
        watch.current = (started + LOOP_BUDGET_S, options)
        try:
            return self.session.run(feed, names, options)
        except RunCut:
            self._loop_options = self.session.run_options()  # this one stays terminated
            raise
        finally:
            watch.current = None

    def _finished(self, batch: Sequence[_Pending], rows: int,
                  done: asyncio.Future[tuple[list[np.ndarray], float]],
                  cut: asyncio.TimerHandle) -> None:
        cut.cancel()
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
        """Shutdown, past drain_grace_s: runs still going are cut short, not waited for."""
        self._task.cancel()
        if self._watch is not None:
            self._watch.close()
        for options in list(self._running):
            options.terminate = True
        self._executor.shutdown(wait=True)


def _cut(options: Any) -> None:
    options.terminate = True
