"""Prediction cache: the outputs of recent requests, keyed by a hash of their input tensors.

Off unless ``prediction_cache_entries`` > 0. It is safe only for deterministic models (the same
inputs always give the same outputs: no random ops, nothing time-dependent), and it keeps
outputs in memory for up to ``prediction_cache_ttl_s`` (docs/runtime-api.md).

Bounded twice: at most ``max_entries`` entries and ``max_bytes`` of output tensors, least
recently used evicted first; an entry older than its TTL is never served. The key is a SHA-256
digest of the model's identity, the requested outputs and every input's name, datatype, shape
and bytes in sorted name order, so JSON and binary requests of the same tensors share an entry.
Values are read-only copies of the output arrays, so a hit encodes exactly the bytes a miss did.

No locks: the app calls it only on the event loop thread (inference threads hand results back
to the loop through futures before they reach the cache).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mlship_runtime.codec import encode_bytes_tensor
from mlship_runtime.metrics import _labels

_Entry = tuple[float, list[np.ndarray], int]  # (expires at, outputs, bytes)


class PredictionCache:
    """An LRU of output tensors with entry, byte and age bounds, and hit/miss counters."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float,
                 labels: Sequence[tuple[str, str]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self.bytes = 0
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._identity = b""
        self._labels = _labels(labels)

    def reset(self, identity: str) -> None:
        """Forget everything: a new model (or version) is being served."""
        self._entries.clear()
        self.bytes = 0
        self._identity = identity.encode()

    def key(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> bytes:
        # SHA-256 over BLAKE2b: with the CPU's SHA extensions it hashed a 600 KB image input
        # in 0.35 ms against 0.71 ms, and inputs are hashed on every request.
        digest = hashlib.sha256(self._identity)
        digest.update(b"\0".join(name.encode() for name in outputs) + b"\1")
        for name in sorted(inputs):
            array = inputs[name]
            # Lengths are in the header, so no two different requests hash the same stream.
            header = f"\1{len(name)}:{name}:{array.dtype.str}:{array.shape}\1".encode()
            digest.update(header)
            if array.dtype == object:  # BYTES: str and bytes elements hash alike
                digest.update(encode_bytes_tensor(array))
            else:
                digest.update(np.ascontiguousarray(array).data)
        return digest.digest()

    def get(self, key: bytes) -> list[np.ndarray] | None:
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > self.clock():
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            self._drop(key)
        self.misses += 1
        return None

    def put(self, key: bytes, outputs: Sequence[np.ndarray]) -> None:
        stored = []
        size = 0
        for output in outputs:
            # Rows of a merged batch are views that would keep the whole batch result alive.
            copy = output if output.flags.owndata else np.array(output, copy=True)
            copy.flags.writeable = False  # nothing may change what later hits will send
            size += _nbytes(copy)
            stored.append(copy)
        if size > self.max_bytes:
            return  # larger than the whole cache: caching it would evict everything for nothing
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self.clock() + self.ttl_s, stored, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key)[2]

    def __len__(self) -> int:
        return len(self._entries)

    def render(self) -> list[str]:
        labels = self._labels
        return ["# HELP mlship_cache_hits_total Requests answered from the prediction cache.",
                "# TYPE mlship_cache_hits_total counter",
                f"mlship_cache_hits_total{labels} {self.hits}",
                "# HELP mlship_cache_misses_total Cacheable requests the model had to run.",
                "# TYPE mlship_cache_misses_total counter",
                f"mlship_cache_misses_total{labels} {self.misses}",
                "# HELP mlship_cache_entries Entries in the prediction cache.",
                "# TYPE mlship_cache_entries gauge",
                f"mlship_cache_entries{labels} {len(self._entries)}",
                "# HELP mlship_cache_bytes Bytes of output tensors in the prediction cache.",
                "# TYPE mlship_cache_bytes gauge",
                f"mlship_cache_bytes{labels} {self.bytes}"]


def _nbytes(array: np.ndarray) -> int:
    """Memory held: tensor bytes; for BYTES the pointers plus each element object's own size
    (a Python str or bytes costs 33-80 bytes over its length, so its length alone undercounts
    short strings several times)."""
    if array.dtype != object:
        return int(array.nbytes)
    return int(array.nbytes) + sum(sys.getsizeof(item) for item in array.flat)
