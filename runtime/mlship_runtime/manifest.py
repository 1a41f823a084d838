"""The model manifest: ``mlship-manifest.json`` beside a pushed model, and the sha256 code.

``mlship model push`` writes it (from ``mlship``, which imports this module) and the runtime
reads it before it loads anything, so both sides share one definition of the format. Every
file of the model (the .onnx and its external data) is listed with its size and sha256; the
runtime refuses a download whose digest differs.

``Manifest.digest`` names the whole model: the sha256 of the model file when it is the only
file, else the sha256 of a canonical listing of every file's path and sha256 (``DIGEST_FORMAT``).
It is what ``model_sha256`` pins and what keys the runtime's download cache, so a pin covers the
external data too. A manifest comes from storage and is parsed as hostile input: bounded in
size and file count, every field of the expected JSON type, paths relative, without control
characters, inside the model's directory.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_NAME = "mlship-manifest.json"
FORMAT = "mlship.model-manifest/v1"
DIGEST_FORMAT = "mlship.model-digest/v1"
CHUNK_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_FILES = 10_000
MAX_PATH_CHARS = 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ManifestError(ValueError):
    """A manifest that cannot be trusted: unreadable, wrong format, or unsafe paths."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (models are larger than memory allows)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ManifestFile:
    path: str  # relative, POSIX, inside the model's directory
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    model: str  # the .onnx file among ``files``
    files: tuple[ManifestFile, ...]
    mlship_version: str = ""
    created: str = ""
    signature: dict[str, Any] = field(default_factory=dict)

    @property
    def model_file(self) -> ManifestFile:
        return next(entry for entry in self.files if entry.path == self.model)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self.files)

    @property
    def digest(self) -> str:
        """The whole model's sha256: the model file's alone, or over every file's."""
        return model_digest(self.model, self.files)

    def to_json(self) -> str:
        document = {"format": FORMAT, "model": self.model,
                    "files": [asdict(entry) for entry in self.files],
                    "total_bytes": self.total_bytes, "signature": self.signature,
                    "mlship_version": self.mlship_version, "created": self.created}
        return json.dumps(document, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: bytes | str, origin: str) -> Manifest:
        """Parse and check a manifest; ``origin`` (its URI) names it in every error."""
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{origin}: larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ManifestError(f"{origin}: not valid JSON ({str(exc)[:200]})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ManifestError(f"{origin}: not an mlship model manifest (format must be "
                                f"{FORMAT!r})")
        items = document.get("files")
        if not isinstance(items, list) or not 0 < len(items) <= MAX_FILES:
            raise ManifestError(f"{origin}: 'files' must be a list of 1 to {MAX_FILES} entries")
        files = tuple(_file(item, origin) for item in items)
        model = document.get("model")
        if not isinstance(model, str) or model not in {entry.path for entry in files}:
            raise ManifestError(f"{origin}: the model file {_short(model)} is not among its "
                                "files")
        if len({entry.path for entry in files}) != len(files):
            raise ManifestError(f"{origin}: a file is listed twice")
        signature = document.get("signature") or {}
        extra = {key: document.get(key, "") for key in ("mlship_version", "created")}
        if not isinstance(signature, dict):
            raise ManifestError(f"{origin}: not a valid mlship model manifest: signature must "
                                f"be an object, not {type(signature).__name__}")
        if not all(isinstance(value, str) for value in extra.values()):
            raise ManifestError(f"{origin}: not a valid mlship model manifest: mlship_version "
                                "and created must be strings")
        return cls(model=model, files=files, signature=signature, **extra)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _file(item: object, origin: str) -> ManifestFile:
    if not isinstance(item, dict):
        raise ManifestError(f"{origin}: each of 'files' must be an object, got {_short(item)}")
    path, size, sha256 = item.get("path"), item.get("size_bytes"), item.get("sha256")
    if not isinstance(path, str):
        raise ManifestError(f"{origin}: a file's 'path' must be a string, got {_short(path)}")
    check_relative_path(path, origin)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or \
            not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ManifestError(f"{origin}: {path}: sha256 must be 64 lowercase hex digits and "
                            "size_bytes an integer >= 0")
    return ManifestFile(path, size, sha256)


def model_digest(model: str, files: tuple[ManifestFile, ...]) -> str:
    """``Manifest.digest`` of a model file among ``files``."""
    if len(files) == 1:
        return files[0].sha256
    listing = "".join(f"{entry.sha256}  {entry.path}\n"
                      for entry in sorted(files, key=lambda entry: entry.path))
    text = f"{DIGEST_FORMAT}\nmodel {model}\n{listing}"
    return hashlib.sha256(text.encode()).hexdigest()


def check_relative_path(path: str, origin: str) -> None:
    """A manifest must never make a reader write outside the model's directory."""
    pure = PurePosixPath(path)
    try:
        path.encode()  # a lone surrogate from JSON's \udXXX names no file and no object key
    except UnicodeEncodeError:
        raise ManifestError(f"{origin}: unsafe or reserved file path {_short(path)}") from None
    if not path or len(path) > MAX_PATH_CHARS or pure.is_absolute() or ".." in pure.parts \
            or "\\" in path or _CONTROL.search(path) or path == MANIFEST_NAME \
            or str(pure) != path:
        raise ManifestError(f"{origin}: unsafe or reserved file path {_short(path)}")
