"""Model file -> smaller or faster variants, each measured against the original.

Variants: ``int8``/``uint8`` (onnxruntime dynamic quantization: weights stored as 8-bit,
activations quantized at run time), ``int8-static`` (QDQ static quantization calibrated on the
measurement inputs), ``fp16`` (float16 weights and arithmetic, float32 inputs and outputs kept)
and ``optimized`` (onnxruntime's extended graph optimizations saved offline). Every variant is
built in a scratch directory, run on the same inputs as the original, and moved to the output
directory only when its largest output deviation is within the threshold (or ``force``).
Timings interleave the variants run by run, so drift on a shared machine hits them alike.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlship.errors import BadInputError, ModelError
from mlship.model import variants as variants_mod
from mlship.model.probe import ProfileRequest

VARIANTS = variants_mod.NAMES
SEED = 0


class DeviationError(BadInputError):
    """A variant deviates from the original more than the threshold allows: not written."""


# With a relative threshold, deviations this small pass whatever the output's scale: an output
# that is all zeros (or nearly) has no scale to be relative to (float32 rounding is ~1e-7).
ABSOLUTE_FLOOR = 1e-5


@dataclass(frozen=True)
class Threshold:
    """Largest allowed deviation, as numpy.allclose judges it: ``|got - want| <= absolute +
    relative * scale``, scale being the output's largest magnitude. ``5%`` is relative (with
    an absolute floor of 1e-5); ``0.01`` absolute."""

    value: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> Threshold:
        raw = text.strip()
        relative = raw.endswith("%")
        try:
            value = float(raw[:-1] if relative else raw)
        except ValueError:
            value = -1.0
        if not (value >= 0 and math.isfinite(value)):
            raise BadInputError(f"--max-deviation: expected a number >= 0 (absolute) or a "
                                f"percentage like 5% (relative), got {text!r}")
        return cls(value / 100 if relative else value, relative)

    @property
    def absolute(self) -> float:
        return ABSOLUTE_FLOOR if self.relative else self.value

    def bound(self, scale: float) -> tuple[float, str]:
        """The deviation allowed on an output of ``scale``, and which tolerance set it."""
        relative = self.value * scale if self.relative else 0.0
        if relative >= self.absolute:
            return relative, f"{self.value:.3g} relative ({self} of {scale:.3g})"
        return self.absolute, f"{self.absolute:.3g} absolute"

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


@dataclass
class Measurement:
    """One model file's figures; ratios are against the original measured in the same rounds."""

    name: str
    size_bytes: int
    latency_ms: float = 0.0
    throughput_rows_s: float = 0.0
    status: str = "original"  # original | written | refused | failed | skipped
    path: str | None = None
    size_ratio: float = 1.0
    speedup: float = 1.0
    throughput_ratio: float = 1.0
    max_abs_deviation: float = 0.0
    max_rel_deviation: float = 0.0
    mean_abs_deviation: float = 0.0  # of the output where it is largest
    worst_output: str | None = None
    argmax_agreement: float | None = None
    within_tolerance: bool = True
    tolerance: str | None = None  # which tolerance applied to the worst output, and its bound
    reason: str | None = None
    _times: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: a deviation relative to an all-zero output (infinite) is null."""
        return {key: None if isinstance(value, float) and not math.isfinite(value) else value
                for key, value in asdict(self).items() if not key.startswith("_")}


@dataclass(frozen=True)
class Report:
    original: Measurement
    variants: list[Measurement]
    batch_rows: int
    runs: int
    threads: int
    threshold: Threshold
    inputs: dict[str, list[int]]


def parse_variants(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in VARIANTS:
            raise BadInputError(f"--variants: unknown variant {name!r}; choose from "
                                f"{', '.join(VARIANTS)}")
    if not names:
        raise BadInputError(f"--variants: name at least one of {', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))


def model_inputs(model: Path, source: Path | None, request: ProfileRequest,
                 batch: int) -> tuple[dict[str, np.ndarray], str]:
    """Inputs to measure on, and where they came from: a file (as ``mlship predict`` reads
    them), or generated at the input profile (``request``'s shapes, or the one the runtime
    derives) with ``batch`` rows: seeded standard-normal floats (zeros would hide most
    deviations), zeros for integers, False, "a"."""
    from mlship_runtime.profile import ProfileError, derive, given, inputs_at
    from mlship_runtime.signature import tensor_metadata

    from mlship.model.inputs import load_inputs

    session = _Runner(model, 1).session
    metadata = [{**tensor_metadata(i.name, i.type, i.shape),
                 "symbols": [d if isinstance(d, str) else None for d in (i.shape or [])]}
                for i in session.get_inputs()]
    if source is not None:
        arrays = load_inputs(source, {"inputs": metadata})
        missing = sorted({entry["name"] for entry in metadata} - set(arrays))
        if missing:
            raise BadInputError(f"{source}: input '{missing[0]}' is missing; the model's inputs "
                                f"are {', '.join(entry['name'] for entry in metadata)}")
        return arrays, str(source)
    if not request.empty:
        try:
            profile = given(metadata, request.shapes, None, source="--shape")
        except ProfileError as err:
            raise BadInputError(str(err)) from None
    else:
        names = [entry["name"] for entry in metadata]
        found = derive(metadata, dict(session.get_modelmeta().custom_metadata_map),
                       lambda feed: session.run(None, feed))
        if found.profile is None:
            raise BadInputError(f"{model}: the model ran at none of {len(found.tried)} derived "
                                f"input profiles (last error: {found.last_error})",
                                hint=f"give the shapes requests have: --shape {names[0]}=DIMS, "
                                     "or --input FILE")
        profile = found.profile
    arrays = inputs_at(profile, metadata, batch)
    rng = np.random.default_rng(SEED)
    for name, value in arrays.items():
        if value.dtype.kind == "f":
            arrays[name] = rng.standard_normal(value.shape).astype(value.dtype)
    return arrays, f"generated at {profile.describe()}"


def optimize(model: Path, out_dir: Path, variants: Sequence[str], inputs: Mapping[str, Any],
             *, threshold: Threshold, force: bool = False, runs: int = 10, source: str = "",
             skip_inapplicable: bool = False,
             progress: Callable[[str], None] = lambda _: None,
             ticks: Callable[[int, int], None] = lambda done, total: None) -> Report:
    """Build, measure and (within the threshold, or forced) write each variant;
    ``skip_inapplicable``: a variant that cannot be built is skipped, not failed; ``ticks``
    hears (done, total) after each round of the timing, the longest phase."""
    threads = _threads()
    original = Measurement("original", model.stat().st_size, path=str(model))
    reference = _Runner(model, threads)
    rows = _rows(inputs, reference.batchable)
    try:
        expected = reference.run(inputs)
    except Exception as exc:  # onnxruntime's own error types; the inputs are the user's
        raise BadInputError(f"{source or 'generated inputs'}: onnxruntime cannot run the "
                            f"original model on these inputs: {_one_line(exc)}",
                            hint="fix dynamic dimensions with --shape INPUT=-1,3,224,224, "
                                 "or pass --input FILE") from None
    results: list[Measurement] = []
    runners: list[tuple[Measurement, _Runner]] = [(original, reference)]
    with tempfile.TemporaryDirectory(prefix="mlship-optimize-") as scratch:
        work = Path(scratch)
        for name in variants:
            progress(f"building {name}")
            target = work / f"{model.stem}.{name}.onnx"
            result = Measurement(name, 0)
            results.append(result)
            try:
                variants_mod.build(name, model, target, work, inputs)
                result.size_bytes = target.stat().st_size
                runner = _Runner(target, threads)
                got = runner.run(inputs)
            except Exception as exc:  # a converter or onnxruntime refusing this model
                # Asked for by name, a variant that cannot be made is a failure; among the
                # defaults it is one that does not apply to this model (8-bit quantization of
                # a model without float weights in ai.onnx operators, say).
                result.status = "skipped" if skip_inapplicable else "failed"
                result.reason = _one_line(exc)
                progress(f"{name}: {'skipped, does not apply' if skip_inapplicable else 'failed'}"
                         f": {result.reason}")
                continue
            result.path = str(target)
            _compare(result, expected, got, reference.classifier_outputs, threshold)
            runners.append((result, runner))
        progress(f"timing {len(runners)} models, {runs} interleaved runs")
        _time(runners, inputs, rows, runs, ticks)
        out_dir.mkdir(parents=True, exist_ok=True)
        for result in results:
            if result.status in ("failed", "skipped"):
                continue
            result.size_ratio = original.size_bytes / result.size_bytes
            result.speedup = original.latency_ms / result.latency_ms
            result.throughput_ratio = result.throughput_rows_s / original.throughput_rows_s
            if not (force or result.within_tolerance):
                result.status, result.path = "refused", None
                which = f" (the bound that applied: {result.tolerance})" \
                    if threshold.relative else ""
                result.reason = (f"largest deviation {_deviation_text(result)} exceeds "
                                 f"--max-deviation {threshold}{which}")
                continue
            destination = out_dir / Path(str(result.path)).name
            shutil.move(str(result.path), destination)
            result.status, result.path = "written", str(destination)
    shapes = {name: list(np.shape(value)) for name, value in inputs.items()}
    return Report(original, results, rows, runs, threads, threshold, shapes)


def raise_for_refused(report: Report) -> None:
    """One error naming every variant that was not written: exit 3 if one failed, else 2."""
    failed = [r for r in report.variants if r.status == "failed"]
    refused = [r for r in report.variants if r.status == "refused"]
    if not (failed or refused):
        return
    text = "; ".join(f"{r.name}: {r.reason}" for r in [*failed, *refused])
    written = [r.name for r in report.variants if r.status == "written"]
    text += f" (written: {', '.join(written) or 'none'})"
    if failed:
        raise ModelError(f"not written: {text}")
    raise DeviationError(f"not written: {text}", hint="--force writes a variant whatever its "
                         "deviation; --input FILE measures on representative data")


def _deviation_text(result: Measurement) -> str:
    if math.isinf(result.max_rel_deviation):
        return (f"{result.max_abs_deviation:.3g} (output '{result.worst_output}' of the "
                "original is all zeros)")
    return (f"{result.max_abs_deviation:.3g} ({result.max_rel_deviation:.1%} of the largest "
            f"magnitude of output '{result.worst_output}')")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _threads() -> int:
    from mlship_runtime.session import default_threads

    return default_threads()


class _Runner:
    """An onnxruntime session with the runtime's thread settings, and what its outputs are."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle pool threads of one session would spin on the CPUs the next one is timed on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types
            raise ModelError(f"{path}: onnxruntime cannot load the model: {_one_line(exc)}",
                             ) from None
        outs = self.session.get_outputs()
        self.names = [o.name for o in outs]
        self.batchable = all(i.shape and not isinstance(i.shape[0], int)
                             for i in self.session.get_inputs())
        # Classifier-like: float scores over a fixed last axis, where argmax is the answer.
        self.classifier_outputs = {o.name for o in outs if o.type in (
            "tensor(float)", "tensor(float16)", "tensor(double)") and o.shape and len(o.shape) >= 2
            and isinstance(o.shape[-1], int) and o.shape[-1] >= 2}

    def run(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(self.names, dict(feed)), strict=True))


def _rows(inputs: Mapping[str, Any], batchable: bool) -> int:
    first = next(iter(inputs.values()), None)
    return int(np.shape(first)[0]) if batchable and first is not None and np.ndim(first) else 1


def _compare(result: Measurement, expected: Mapping[str, np.ndarray],
             got: Mapping[str, np.ndarray], classifiers: set[str], threshold: Threshold) -> None:
    agreements = []
    worst_excess = -math.inf
    for name, want in expected.items():
        have = got[name]
        if want.dtype.kind not in "fiub":
            same = np.array_equal(want, have)
            absolute = relative = mean = 0.0 if same else math.inf
        else:
            a, b = want.astype(np.float64), have.astype(np.float64)
            diff = np.abs(a - b)
            # NaN on one side only is a broken variant; NaN on both sides is agreement.
            nan_a, nan_b = np.isnan(a), np.isnan(b)
            diff = np.where(nan_a & nan_b, 0.0, np.where(nan_a | nan_b, np.inf, diff))
            absolute = float(diff.max()) if diff.size else 0.0
            mean = float(diff.mean()) if diff.size else 0.0
            scale = float(np.nanmax(np.abs(a))) if a.size and not nan_a.all() else 0.0
            relative = absolute / scale if scale > 0 else (0.0 if absolute == 0 else math.inf)
            bound, which = threshold.bound(scale)
            if absolute - bound > worst_excess:  # the output closest to (or past) its bound
                worst_excess = absolute - bound
                result.tolerance = which
            result.within_tolerance = result.within_tolerance and absolute <= bound
        if name in classifiers and want.size:
            agreements.append(float(np.mean(want.argmax(-1) == have.argmax(-1))))
        if result.worst_output is None or relative > result.max_rel_deviation:
            result.worst_output = name
            result.max_rel_deviation = relative
        result.max_abs_deviation = max(result.max_abs_deviation, absolute)
        result.mean_abs_deviation = max(result.mean_abs_deviation, mean)
    result.argmax_agreement = min(agreements) if agreements else None


def _time(runners: Sequence[tuple[Measurement, _Runner]], inputs: Mapping[str, Any], rows: int,
          runs: int, ticks: Callable[[int, int], None]) -> None:
    single = {name: value[:1] for name, value in inputs.items()} if rows > 1 else inputs
    for _, runner in runners:  # warm-up: first runs pay allocations and kernel selection
        runner.run(single)
        runner.run(inputs)
    times: list[dict[str, list[float]]] = [{"single": [], "batch": []} for _ in runners]
    for done in range(1, runs + 1):
        for (_, runner), slots in zip(runners, times, strict=True):
            for kind, feed in (("single", single), ("batch", inputs)):
                started = time.perf_counter()
                runner.run(feed)
                slots[kind].append(time.perf_counter() - started)
        ticks(done, runs)
    for (result, _), slots in zip(runners, times, strict=True):
        result.latency_ms = statistics.median(slots["single"]) * 1000
        result.throughput_rows_s = rows / statistics.median(slots["batch"])
