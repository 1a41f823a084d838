"""Shadow mirroring: a sample of the V2 infer requests this runtime answers is sent again to a
shadow runtime (``shadow_url``), and the shadow's answer is compared with this one's, output by
output, with mlship_runtime.compare (the comparison `mlship compare` makes offline).

Never on the request path: ``offer`` (called once the live answer is computed) only samples
(``shadow_sample_rate``), takes a token of the per-second cap (``shadow_max_per_second``) and
appends to a bounded queue, dropping (and counting) when it is full; a few sender tasks on the
event loop send and compare, each send bounded by a deadline. A dead, slow or wrong shadow can
only make the counters move. Exported on this (the stable) side:

- ``mlship_shadow_mirrored_total``: requests sent to the shadow;
- ``mlship_shadow_dropped_total{reason}``: not mirrored: ``queue_full``, ``rate_cap``,
  ``backoff`` (within BACKOFF_S of a refused connection or a timeout);
- ``mlship_shadow_errors_total{reason}``: no comparable answer: ``connect``, ``timeout``,
  ``status`` (not 200), ``answer`` (not a V2 infer answer);
- ``mlship_shadow_compared_total{output}``, ``mlship_shadow_disagreed_total{output}`` and the
  histogram ``mlship_shadow_deviation{output}`` (compare.DEVIATION_BUCKETS).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import numpy as np

from mlship_runtime import codec
from mlship_runtime.compare import DEVIATION_BUCKETS, Tally, Tolerances, compare_outputs
from mlship_runtime.metrics import _labels, _number
from mlship_runtime.settings import RuntimeSettings

QUEUE_SIZE = 64  # mirrored requests waiting to be sent; beyond, dropped (bounded memory)
SENDERS = 4  # concurrent sends: a slow shadow holds at most this many connections
TIMEOUT_S = 10.0  # per send: connect, request and answer
# After a refused connection or a send past its deadline, nothing is mirrored for this long:
# a dead or hung shadow costs the stable one attempt per BACKOFF_S, not one per request.
BACKOFF_S = 1.0
MAX_ANSWER_BYTES = 64 * 1024 * 1024
ERROR_REASONS = ("connect", "timeout", "status", "answer")


@dataclass(frozen=True)
class _Item:
    model: str
    body: bytes
    header_length: int | None
    outputs: dict[str, np.ndarray]


class Mirror:
    """The mirroring of one served model, and its counters."""

    def __init__(self, settings: RuntimeSettings, labels: Sequence[tuple[str, str]]) -> None:
        url = urlsplit(str(settings.shadow_url))
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        self.rate = settings.shadow_sample_rate
        self.cap = settings.shadow_max_per_second
        self.timeout_s = min(TIMEOUT_S, settings.request_timeout_s)
        self.tolerances = Tolerances.from_json(settings.shadow_tolerances) \
            if settings.shadow_tolerances else Tolerances()
        self.labels = list(labels)
        self.queue: deque[_Item] = deque()
        self.tokens = self.cap
        self.refilled = time.monotonic()
        self.mirrored = 0
        self.dropped = {"queue_full": 0, "rate_cap": 0, "backoff": 0}
        self.paused_until = 0.0
        self.errors = dict.fromkeys(ERROR_REASONS, 0)
        self.tallies: dict[str, Tally] = {}
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def offer(self, model: str, body: bytes, header_length: int | None, names: Sequence[str],
              outputs: Sequence[np.ndarray]) -> None:
        """A live request and its answer; returns at once (nothing here waits or raises)."""
        if self.rate < 1.0 and random.random() >= self.rate:
            return
        now = time.monotonic()
        if now < self.paused_until:
            self.dropped["backoff"] += 1
            return
        self.tokens = min(self.cap, self.tokens + (now - self.refilled) * self.cap)
        self.refilled = now
        if self.tokens < 1.0:
            self.dropped["rate_cap"] += 1
            return
        if len(self.queue) >= QUEUE_SIZE:
            self.dropped["queue_full"] += 1
            return
        self.tokens -= 1.0
        self.queue.append(_Item(model, body, header_length, dict(zip(names, outputs,
                                                                     strict=True))))
        if self._wake is None:
            self._start()
        assert self._wake is not None
        self._wake.set()

    def _start(self) -> None:
        self._wake = asyncio.Event()
        self._tasks = [asyncio.get_running_loop().create_task(self._sender())
                       for _ in range(SENDERS)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _sender(self) -> None:
        assert self._wake is not None
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self.queue.popleft()
            self.mirrored += 1
            try:
                answer = await asyncio.wait_for(self._send(item), self.timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                self.errors["timeout"] += 1
                self._back_off()
                continue
            except OSError:
                self.errors["connect"] += 1
                self._back_off()
                continue
            except _ShadowError as error:
                self.errors[error.reason] += 1
                continue
            for name, result in compare_outputs(item.outputs, answer, self.tolerances).items():
                tally = self.tallies.get(name)
                if tally is None:
                    tally = self.tallies[name] = Tally()
                tally.add(result)

    def _back_off(self) -> None:
        """Stop mirroring for BACKOFF_S; what is queued is dropped (it would fail alike)."""
        self.paused_until = time.monotonic() + BACKOFF_S
        self.dropped["backoff"] += len(self.queue)
        self.queue.clear()

    async def _send(self, item: _Item) -> dict[str, np.ndarray]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            head = [f"POST /v2/models/{quote(item.model, safe='')}/infer HTTP/1.1",
                    f"host: {self.host}:{self.port}", "connection: close",
                    f"content-length: {len(item.body)}"]
            if item.header_length is None:
                head.append("content-type: application/json")
            else:
                head += ["content-type: application/octet-stream",
                         f"{codec.HEADER_LENGTH}: {item.header_length}"]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + item.body)
            await writer.drain()
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            parts = status_line.split()
            if len(parts) < 2 or parts[1] != b"200":
                raise _ShadowError("status")
            try:
                length = int(headers.get("content-length", "-1"))
            except ValueError:
                raise _ShadowError("answer") from None
            if length > MAX_ANSWER_BYTES:
                raise _ShadowError("answer")
            body = await (reader.readexactly(length) if length >= 0 else
                          reader.read(MAX_ANSWER_BYTES))
        except asyncio.IncompleteReadError:
            raise _ShadowError("answer") from None
        finally:
            writer.close()
        try:
            return codec.decode_response(body, headers)
        except Exception:  # anything the shadow says that is not a V2 answer
            raise _ShadowError("answer") from None

    def render(self) -> list[str]:
        labels = self.labels
        out = ["# HELP mlship_shadow_mirrored_total Requests mirrored to the shadow.",
               "# TYPE mlship_shadow_mirrored_total counter",
               f"mlship_shadow_mirrored_total{_labels(labels)} {self.mirrored}",
               "# HELP mlship_shadow_dropped_total Sampled requests not mirrored: queue full, "
               "over the per-second cap, or backing off from a failing shadow.",
               "# TYPE mlship_shadow_dropped_total counter"]
        out += [f"mlship_shadow_dropped_total{_labels([*labels, ('reason', reason)])} {count}"
                for reason, count in self.dropped.items()]
        out += ["# HELP mlship_shadow_errors_total Mirrored requests without a comparable "
                "answer from the shadow.", "# TYPE mlship_shadow_errors_total counter"]
        out += [f"mlship_shadow_errors_total{_labels([*labels, ('reason', reason)])} {count}"
                for reason, count in self.errors.items()]
        compared = ["# HELP mlship_shadow_compared_total Answers compared, by output.",
                    "# TYPE mlship_shadow_compared_total counter"]
        disagreed = ["# HELP mlship_shadow_disagreed_total Answers of the shadow beyond "
                     "tolerance, by output.", "# TYPE mlship_shadow_disagreed_total counter"]
        deviation = ["# HELP mlship_shadow_deviation Deviation of the shadow's answer: "
                     "relative (numeric) or share of elements or rows differing.",
                     "# TYPE mlship_shadow_deviation histogram"]
        for name, tally in sorted(self.tallies.items()):
            output = [*labels, ("output", name)]
            compared.append(f"mlship_shadow_compared_total{_labels(output)} {tally.compared}")
            disagreed.append(f"mlship_shadow_disagreed_total{_labels(output)} "
                             f"{tally.disagreed}")
            running = 0
            for bound, count in zip((*DEVIATION_BUCKETS, float("inf")), tally.buckets,
                                    strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                deviation.append(f"mlship_shadow_deviation_bucket{_labels([*output, ('le', le)])}"
                                 f" {running}")
            deviation += [f"mlship_shadow_deviation_sum{_labels(output)} "
                          f"{tally.deviation_sum!r}",
                          f"mlship_shadow_deviation_count{_labels(output)} {running}"]
        return out + compared + disagreed + deviation


class _ShadowError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
