"""The external-data files an .onnx names, found and checked before onnxruntime opens it.

An ONNX tensor may keep its bytes in another file (``external_data`` ``location``). Some
onnxruntime versions follow any location, so a model could serve the bytes of any file the
process can read (``/etc/passwd``, a mounted secret). The runtime checks every location itself,
whatever onnxruntime does: relative, no ``..``, no control characters, resolving (symlinks
included) inside the model's directory and, for a downloaded model, one of the files its
manifest lists (so its sha256 was verified).

The .onnx is read as protobuf wire format, without the onnx package (not in the image): only
the fields that can hold a tensor are walked (graph initializers and sparse initializers, node
attributes and their subgraphs, functions); everything else, raw tensor bytes included, is
skipped by its length, over a memory map of the file.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from mlship_runtime.manifest import ManifestError, check_relative_path

MAX_DEPTH = 64  # nested graphs (If/Loop bodies) deeper than this are refused
# field numbers of onnx.proto3
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_NODE_ATTRIBUTE, _FUNCTION_NODE = 5, 7
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_TENSOR_EXTERNAL, _SPARSE_VALUES, _SPARSE_INDICES = 13, 1, 2


class ModelFileError(ValueError):
    """An .onnx that is not valid protobuf, or names an external file it may not."""


def _fields(data: memoryview, origin: str) -> Iterator[tuple[int, memoryview | None]]:
    """(field number, bytes of a length-delimited field or None) of one message."""
    offset, end = 0, len(data)
    while offset < end:
        key, offset = _varint(data, offset, origin)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, offset = _varint(data, offset, origin)
            yield number, None
        elif wire == 1:
            offset += 8
        elif wire == 5:
            offset += 4
        elif wire == 2:
            length, offset = _varint(data, offset, origin)
            if offset + length > end:
                raise ModelFileError(f"{origin}: not a valid ONNX model (a field overruns)")
            yield number, data[offset:offset + length]
            offset += length
        else:
            raise ModelFileError(f"{origin}: not a valid ONNX model (wire type {wire})")
    if offset != end:
        raise ModelFileError(f"{origin}: not a valid ONNX model (truncated)")


def _varint(data: memoryview, offset: int, origin: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise ModelFileError(f"{origin}: not a valid ONNX model (bad varint)")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def _tensor(data: memoryview, origin: str) -> Iterator[str]:
    for number, value in _fields(data, origin):
        if number == _TENSOR_EXTERNAL and value is not None:
            entry = dict(_fields(value, origin))
            key, text = entry.get(1), entry.get(2)
            if key is not None and bytes(key) == b"location" and text is not None:
                try:
                    yield bytes(text).decode()
                except UnicodeDecodeError:
                    raise ModelFileError(f"{origin}: an external data location is not "
                                         "UTF-8") from None


def _sparse(data: memoryview, origin: str) -> Iterator[str]:
    for number, value in _fields(data, origin):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES) and value is not None:
            yield from _tensor(value, origin)


def _graph(data: memoryview, origin: str, depth: int) -> Iterator[str]:
    if depth > MAX_DEPTH:
        raise ModelFileError(f"{origin}: graphs nested deeper than {MAX_DEPTH}")
    for number, value in _fields(data, origin):
        if value is None:
            continue
        if number == _GRAPH_INITIALIZER:
            yield from _tensor(value, origin)
        elif number == _GRAPH_SPARSE:
            yield from _sparse(value, origin)
        elif number == _GRAPH_NODE:
            yield from _node(value, origin, depth)


def _node(data: memoryview, origin: str, depth: int) -> Iterator[str]:
    for number, value in _fields(data, origin):
        if number != _NODE_ATTRIBUTE or value is None:
            continue
        for field, item in _fields(value, origin):
            if item is None:
                continue
            if field in (_ATTR_T, _ATTR_TENSORS):
                yield from _tensor(item, origin)
            elif field in (_ATTR_SPARSE, _ATTR_SPARSES):
                yield from _sparse(item, origin)
            elif field in (_ATTR_G, _ATTR_GRAPHS):
                yield from _graph(item, origin, depth + 1)


def external_locations(path: Path) -> set[str]:
    """Every external-data location the model at ``path`` names."""
    origin = str(path)
    if path.stat().st_size == 0:
        raise ModelFileError(f"{origin}: empty file")
    error = None
    with path.open("rb") as handle, \
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        data = memoryview(mapped)
        try:
            found = _model(data, origin)
        except ModelFileError as exc:  # its traceback holds views of the map: keep the text
            error = str(exc)
        data.release()  # every view of the map is gone now: it can be closed
    if error is not None:
        raise ModelFileError(error)
    return found


def _model(data: memoryview, origin: str) -> set[str]:
    found: set[str] = set()
    for number, value in _fields(data, origin):
        if value is None:
            continue
        if number == _MODEL_GRAPH:
            found.update(_graph(value, origin, 0))
        elif number == _MODEL_FUNCTIONS:
            for field, node in _fields(value, origin):
                if field == _FUNCTION_NODE and node is not None:
                    found.update(_node(node, origin, 0))
    return found


def check_external_data(path: Path, allowed: set[str] | None = None) -> set[str]:
    """The external files of the model at ``path``, each checked to be safe to open: inside
    the model's directory (symlinks resolved) and, when ``allowed`` is given, listed in it."""
    root = path.parent.resolve()
    locations = external_locations(path)
    for location in sorted(locations):
        try:
            check_relative_path(str(PurePosixPath(location)), str(path))
        except (ManifestError, ValueError):
            raise ModelFileError(f"{path}: external data location {location[:200]!r} is not a "
                                 "relative path inside the model's directory; refusing to "
                                 "load it") from None
        if not (root / location).resolve().is_relative_to(root):
            raise ModelFileError(f"{path}: external data location {location!r} resolves "
                                 "outside the model's directory; refusing to load it")
        if allowed is not None and str(PurePosixPath(location)) not in allowed:
            raise ModelFileError(f"{path}: external data file {location!r} is not in the "
                                 "model's manifest, so its sha256 was never checked; refusing "
                                 "to load it")
    return locations
