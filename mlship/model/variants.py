"""Model file -> one variant file: 8-bit quantization, float16, offline graph optimization.

Each builder takes the original model, the target path, a scratch directory it may share with
the other builders, and the measurement inputs (the calibration data of static quantization).
The converters log and warn about things ``mlship.model.optimize`` measures and reports itself, so
they run quietly here.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

NAMES = ("int8", "uint8", "int8-static", "fp16", "optimized")
Builder = Callable[[Path, Path, Path, Mapping[str, Any]], None]


def build(name: str, model: Path, target: Path, work: Path, inputs: Mapping[str, Any]) -> None:
    """Write variant ``name`` of ``model`` to ``target``; converter errors propagate."""
    with _quiet():
        _BUILDERS[name](model, target, work, inputs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converters log and warn for things we report ourselves (or cannot act on)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _prepared(model: Path, work: Path) -> Path:
    """Weights as initializers (some exporters keep them in Constant nodes, which the
    quantizer cannot see), BatchNorm folded into Conv: onnxruntime's basic level, offline."""
    target = work / "prepared.onnx"
    if not target.exists():
        _ort_optimized(model, target, "ORT_ENABLE_BASIC")
    return target


def _ort_optimized(model: Path, target: Path, level: str) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _dynamic(weight_type: str) -> Builder:
    def build(model: Path, target: Path, work: Path, inputs: Mapping[str, Any]) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(_prepared(model, work), target,
                         weight_type=getattr(QuantType, weight_type))
    return build


def _static(model: Path, target: Path, work: Path, inputs: Mapping[str, Any]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        """The measurement inputs as one calibration batch (fixed-shape models accept only
        that; activation ranges over N rows at once are the same as row by row)."""

        def __init__(self) -> None:
            self.items = iter([dict(inputs)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.items, None)

    quantize_static(_prepared(model, work), target, Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _fp16(model: Path, target: Path, work: Path, inputs: Mapping[str, Any]) -> None:
    import onnx
    from onnxconverter_common.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(model)), keep_io_types=True)
    onnx.save(converted, str(target))


def _optimized(model: Path, target: Path, work: Path, inputs: Mapping[str, Any]) -> None:
    # EXTENDED, not ALL: ALL adds layout transforms tied to this machine's CPU (NCHWc).
    _ort_optimized(model, target, "ORT_ENABLE_EXTENDED")


_BUILDERS: dict[str, Builder] = {
    "int8": _dynamic("QInt8"), "uint8": _dynamic("QUInt8"), "int8-static": _static,
    "fp16": _fp16, "optimized": _optimized,
}
