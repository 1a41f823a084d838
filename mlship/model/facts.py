"""What is known about one ONNX model file: frozen facts, derived once by
``mlship.model.inspect`` and handed to every later stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Dim:
    """One dimension: a fixed size, a named symbol (``batch``), or unknown (both None)."""

    size: int | None = None
    symbol: str | None = None

    @property
    def is_dynamic(self) -> bool:
        return self.size is None

    def __str__(self) -> str:
        if self.size is not None:
            return str(self.size)
        return self.symbol or "?"


@dataclass(frozen=True)
class ValueType:
    """An ONNX type: tensor, sequence, map, optional or sparse tensor, possibly nested."""

    kind: str  # "tensor" | "sparse_tensor" | "sequence" | "map" | "optional" | "unknown"
    dtype: str | None = None  # element type for tensors, key type for maps ("float32", "string")
    shape: tuple[Dim, ...] | None = None  # None when the rank is unknown
    element: ValueType | None = None  # sequence/optional element, map value

    def __str__(self) -> str:
        if self.kind in ("tensor", "sparse_tensor"):
            prefix = "sparse " if self.kind == "sparse_tensor" else ""
            if self.shape is None:  # unknown rank, as in map values of ZipMap outputs
                return f"{prefix}{self.dtype}"
            return f"{prefix}{self.dtype}[{', '.join(str(d) for d in self.shape)}]"
        if self.kind == "map":
            return f"map({self.dtype}, {self.element})"
        if self.kind in ("sequence", "optional"):
            return f"{self.kind}({self.element})"
        return "unknown"


@dataclass(frozen=True)
class TensorSpec:
    """A named graph input or output."""

    name: str
    type: ValueType
    doc: str = ""

    @property
    def is_tensor(self) -> bool:
        return self.type.kind == "tensor"


@dataclass(frozen=True)
class ExternalDataFile:
    path: str  # as written in the model, relative to the model's directory
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class ModelSignature:
    """Facts derived from one ONNX model file."""

    path: str
    size_bytes: int
    sha256: str
    ir_version: int
    producer_name: str
    producer_version: str
    domain: str
    model_version: int
    doc_string: str
    opsets: dict[str, int]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict[str, str]
    external_data: tuple[ExternalDataFile, ...]
    weights_bytes: int
    peak_activation_bytes: int
    memory_estimate_bytes: int
    warnings: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @property
    def total_bytes(self) -> int:
        """The model file plus its external data: what has to be shipped or downloaded."""
        return self.size_bytes + sum(f.size_bytes for f in self.external_data)

    @property
    def dynamic_batch(self) -> bool:
        """True when every input is a tensor whose first dimension is dynamic."""
        return bool(self.inputs) and all(
            spec.is_tensor and spec.type.shape and spec.type.shape[0].is_dynamic
            for spec in self.inputs
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["name"] = self.name
        data["dynamic_batch"] = self.dynamic_batch
        data["total_bytes"] = self.total_bytes
        for group in ("inputs", "outputs"):
            for spec, raw in zip(getattr(self, group), data[group], strict=True):
                raw["type_str"] = str(spec.type)
        return data
