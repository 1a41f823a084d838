"""The sampled payload log: request and response bodies for monitoring, off by default.

Bounded three ways: a share of requests (``payload_log_sample``), a rate (``payload_log_rate``
records per second, a token bucket), and a size (``payload_log_max_bytes`` per body, a file
moved aside past ``payload_log_file_bytes``). A request not sampled costs one random draw:
only a sampled one has its body copied (``mlship_runtime.audit``'s wrapper does it).
"""

from __future__ import annotations

import base64
import os
import random
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from mlship_runtime.settings import RuntimeSettings


class Clock(Protocol):
    def now(self) -> str: ...


class PayloadLog:
    """Sampled bodies, bounded in share, rate and size (see the module's doc)."""

    def __init__(self, settings: RuntimeSettings, clock: Clock) -> None:
        self.sample = settings.payload_log_sample
        self.rate = settings.payload_log_rate
        self.max_bytes = settings.payload_log_max_bytes
        self.file_bytes = settings.payload_log_file_bytes
        self.clock = clock
        self.tokens = max(1.0, self.rate)
        self.refilled = time.monotonic()
        self.path = None if settings.payload_log == "-" else Path(str(settings.payload_log))
        self.fd = 1 if self.path is None else self._open()
        self.written = 0 if self.path is None else os.fstat(self.fd).st_size

    def _open(self) -> int:
        assert self.path is not None
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def take(self) -> bool:
        """Whether this request's bodies are logged: sampled, and a token left."""
        if self.sample <= 0 or random.random() >= self.sample:
            return False
        now = time.monotonic()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def body(self, chunks: list[bytes], size: int) -> dict[str, Any]:
        kept = b"".join(chunks)[:self.max_bytes]
        entry: dict[str, Any] = {"bytes": size, "truncated": size > len(kept)}
        for cut in range(4):  # a UTF-8 character cut at the end is dropped, not mangled
            try:
                entry["text"] = kept[:len(kept) - cut].decode("utf-8")
                return entry
            except UnicodeDecodeError:
                continue
        entry["base64"] = base64.b64encode(kept).decode("ascii")
        return entry

    def write(self, line: dict[str, Any], request: dict[str, Any],
              response: dict[str, Any]) -> None:
        record = {"time": self.clock.now(), "logger": "mlship_runtime.payload",
                  **{key: line[key] for key in ("request_id", "model", "version", "status")},
                  "request": request, "response": response}
        data = orjson.dumps(record) + b"\n"
        if self.path is not None and self.written + len(data) > self.file_bytes \
                and self.written:
            os.close(self.fd)
            self.path.replace(f"{self.path}.1")
            self.fd, self.written = self._open(), 0
        os.write(self.fd, data)
        self.written += len(data)


def keep(chunks: list[bytes], sizes: list[int], index: int, body: bytes, limit: int) -> None:
    """Count every byte of a body, keep only its first ``limit``."""
    kept = sizes[index]
    sizes[index] += len(body)
    if kept < limit:
        chunks.append(body[:limit - kept])
