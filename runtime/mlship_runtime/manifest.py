"""The model manifest: ``mlship-manifest.json`` beside a pushed model, and the sha256 code.

``mlship model push`` writes it (from ``mlship``, which imports this module) and the runtime
reads it before it loads anything, so both sides share one definition of the format. Every
file of the model (the .onnx and its external data) is listed with its size and sha256; the
runtime refuses a download whose digest differs.
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
CHUNK_BYTES = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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

    def to_json(self) -> str:
        document = {"format": FORMAT, "model": self.model,
                    "files": [asdict(entry) for entry in self.files],
                    "total_bytes": self.total_bytes, "signature": self.signature,
                    "mlship_version": self.mlship_version, "created": self.created}
        return json.dumps(document, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: bytes | str, origin: str) -> Manifest:
        """Parse and check a manifest; ``origin`` (its URI) names it in every error."""
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{origin}: not valid JSON ({exc})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ManifestError(f"{origin}: not an mlship model manifest (format must be "
                                f"{FORMAT!r})")
        try:
            files = tuple(ManifestFile(str(item["path"]), int(item["size_bytes"]),
                                       str(item["sha256"])) for item in document["files"])
            model = str(document["model"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{origin}: malformed entry ({exc!r})") from None
        for entry in files:
            check_relative_path(entry.path, origin)
            if not _SHA256.match(entry.sha256) or entry.size_bytes < 0:
                raise ManifestError(f"{origin}: {entry.path}: sha256 must be 64 lowercase hex "
                                    "digits and size_bytes >= 0")
        if model not in {entry.path for entry in files}:
            raise ManifestError(f"{origin}: the model file {model!r} is not among its files")
        return cls(model=model, files=files,
                   mlship_version=str(document.get("mlship_version", "")),
                   created=str(document.get("created", "")),
                   signature=dict(document.get("signature") or {}))


def check_relative_path(path: str, origin: str) -> None:
    """A manifest must never make a reader write outside the model's directory."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path \
            or path == MANIFEST_NAME:
        raise ManifestError(f"{origin}: unsafe or reserved file path {path!r}")
