"""The onnxruntime session: provider choice, thread budget, signature checks, runs and warm-up.

Requests are checked against the model's signature here, before onnxruntime sees them, so a
client's mistake becomes a 400 naming the input instead of an opaque ORT error. Outputs that are
not tensors (scikit-learn's ZipMap gives a sequence of maps) are returned as a BYTES tensor of
shape [n] whose elements are JSON texts, one per row.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlship_runtime.errors import BadRequest, InferenceFailed, RunCut
from mlship_runtime.profile import Derivation, Profile, ProfileError, derive, inputs_at
from mlship_runtime.providers import (
    check_provider,
    provider_chain,
    select_provider,
    short_name,
)
from mlship_runtime.settings import RuntimeSettings
from mlship_runtime.signature import tensor_metadata

log = logging.getLogger("mlship_runtime")

# Models whose largest batch runs faster than this run on the event loop: blocking the loop this
# long is harmless, and a thread hop plus the GIL hand-off costs more than it saves. Measured on
# 2 CPUs with the bench MLP (~1 ms per batch): loop mode 5.6-6.0 k req/s, thread mode 4.5-5.6 k.
ON_LOOP_BELOW_S = 0.004
# Queueing a request to merge it with others (a future, a callback, a second task step, the
# concatenation and the split) costs ~12 µs per request on this stack (bench/runtime_bench.py).
# A model whose batch-1 run is cheaper than about that gains nothing from merging, so it runs
# at once: +20 % req/s for a 6 µs model.
MERGE_ABOVE_S = 20e-6


def cpu_budget(affinity: int, cpu_max: str | None) -> int:
    """CPUs this process may use: its affinity mask capped by a cgroup v2 ``cpu.max`` quota."""
    budget = max(1, affinity)
    if cpu_max:
        quota, _, period = cpu_max.strip().partition(" ")
        if quota != "max" and period:
            budget = min(budget, max(1, math.ceil(int(quota) / int(period))))
    return budget


def default_threads() -> int:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 1
    try:
        cpu_max = Path("/sys/fs/cgroup/cpu.max").read_text()
    except OSError:
        cpu_max = None
    return cpu_budget(affinity, cpu_max)


@dataclass(frozen=True)
class WarmUp:
    """What the warm-up ran: its profile and median batch-1 time; both None when no derived
    profile ran (``derivation`` then says what was tried)."""

    profile: Profile | None
    batch1_s: float | None
    derivation: Derivation | None = None


class ModelSession:
    """One loaded model and everything precomputed about its signature."""

    def __init__(self, settings: RuntimeSettings, *, optimize: bool = True) -> None:
        """``optimize=False`` opens the session with graph optimizations off: the cheap way to
        learn whether onnxruntime takes the file at all."""
        import onnxruntime as ort

        self.name = settings.model_name
        self.version = settings.model_version
        available = ort.get_available_providers()
        choice = select_provider(settings.provider, available)
        options = ort.SessionOptions()
        self.intra_op_threads = settings.intra_op_threads or default_threads()
        self.inter_op_threads = settings.inter_op_threads or 1
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.log_severity_level = 3  # ORT's own warnings would bypass our log format
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        started = time.perf_counter()
        with warnings.catch_warnings():  # a provider not in this build: judged just below
            warnings.filterwarnings("ignore", message="Specified provider")
            self._session = ort.InferenceSession(settings.model, options,
                                                 providers=provider_chain(choice))
        self.load_seconds = time.perf_counter() - started
        # onnxruntime runs on CPU when a GPU provider cannot start: refused unless allowed.
        self.provider_outcome = check_provider(
            settings.provider, choice, short_name(self._session.get_providers()[0]), available,
            settings.provider_fallback, version=ort.__version__)
        self.provider = self.provider_outcome.provider
        # InferenceSession.run re-validates in Python what check_input and rows() already
        # checked (a third of a batch-1 run of a small model); its only other job, falling back
        # from a failing GPU provider, has nothing to do on CPU, so CPU runs call the binding.
        binding = getattr(self._session, "_sess", None)
        self._run = binding.run if self.provider == "cpu" and binding is not None \
            else self._session.run
        self.inputs = [tensor_metadata(i.name, i.type, i.shape) for i in self._session.get_inputs()]
        # The V2 metadata plus the dims' names, which tie dimensions together in a profile.
        self.profile_inputs = [{**meta, "symbols": [d if isinstance(d, str) else None
                                                    for d in (i.shape or [])]}
                               for meta, i in zip(self.inputs, self._session.get_inputs(),
                                                  strict=True)]
        self.model_metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self._quiet = ort.RunOptions()
        self._quiet.log_severity_level = 4  # trial runs of a derived profile fail by design
        self.outputs = [tensor_metadata(o.name, o.type, o.shape)
                        for o in self._session.get_outputs()]
        self._input_specs = {m["name"]: (m["datatype"], m["shape"]) for m in self.inputs}
        self._string_inputs = [m["name"] for m in self.inputs if m["datatype"] == "BYTES"]
        self.output_names = [m["name"] for m in self.outputs]
        self.output_datatypes = {m["name"]: m["datatype"] for m in self.outputs}
        self.non_tensor_outputs = {o.name for o in self._session.get_outputs()
                            if not o.type.startswith("tensor(")}
        self.batchable = bool(self.inputs) and all(
            m["shape"] and m["shape"][0] == -1 for m in self.inputs) and all(
            m["shape"] and m["shape"][0] == -1 for m in self.outputs)
        self.on_loop = False
        self.run_immediately = False
        self.loop_max_elements = 0
        self.execution = settings.execution
        self.profile: Profile | None = None  # what the warm-up ran at
        self.metadata: dict[str, Any] = {
            "name": self.name, "versions": [self.version] if self.version else [],
            "platform": "onnxruntime_onnx", "inputs": self.inputs, "outputs": self.outputs,
            "parameters": {"provider": self.provider,
                           "intra_op_threads": self.intra_op_threads,
                           "inter_op_threads": self.inter_op_threads,
                           "batchable": self.batchable}}

    def check_input(self, name: str, datatype: str, shape: Sequence[int]) -> None:
        """Raise BadRequest unless one input's name, datatype and shape fit the signature;
        called before the input's data is decoded."""
        spec = self._input_specs.get(name)
        if spec is None:
            raise BadRequest(f"unknown input '{name}'; the model's inputs are "
                             f"{sorted(self._input_specs)}")
        want, dims = spec
        if datatype != want:
            raise BadRequest(f"input '{name}': expected datatype {want}, got {datatype}")
        if len(shape) != len(dims) or any(
                w not in (-1, dim) for w, dim in zip(dims, shape, strict=True)):
            raise BadRequest(f"input '{name}': expected shape {dims}, got {list(shape)}")

    def rows(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Raise BadRequest unless every input is there; return the batch rows."""
        rows = 1
        for name, (_, dims) in self._input_specs.items():
            array = inputs.get(name)
            if array is None:
                raise BadRequest(f"input '{name}' is missing; the model needs "
                                 f"{sorted(self._input_specs)}")
            if dims:
                rows = array.shape[0]
        return rows

    def check(self, inputs: Mapping[str, np.ndarray], datatypes: Mapping[str, str]) -> int:
        """Raise BadRequest unless ``inputs`` fit the signature; return the batch rows."""
        for name, array in inputs.items():
            spec = self._input_specs.get(name)
            self.check_input(name, datatypes.get(name, spec[0] if spec else ""), array.shape)
        return self.rows(inputs)

    def feed(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Arrays as onnxruntime wants them: strings as str objects, not bytes."""
        if not self._string_inputs:
            return inputs
        fed = dict(inputs)
        for name in self._string_inputs:
            array = inputs[name]
            if array.dtype == object and array.size and isinstance(array.flat[0], bytes):
                try:
                    fed[name] = np.vectorize(bytes.decode, otypes=[object])(array)
                except UnicodeDecodeError:
                    raise BadRequest(f"input '{name}': BYTES elements must be UTF-8 "
                                     "for an ONNX string tensor") from None
        return fed

    def wanted(self, names: Sequence[str] | None) -> list[str]:
        if names is None:
            return self.output_names
        for name in names:
            if name not in self.output_datatypes:
                raise BadRequest(f"unknown output '{name}'; the model's outputs are "
                                 f"{self.output_names}")
        return list(names)

    def run(self, feed: Mapping[str, np.ndarray], names: Sequence[str],
            options: Any = None) -> list[np.ndarray]:
        """One inference; ORT failures on inputs that passed ``check`` are the client's (422).
        ``options`` (``run_options()``) lets another thread cut the run short: ``RunCut``."""
        try:
            results: list[np.ndarray] = self._run(names, feed, options)
        except Exception as exc:  # ORT raises its own exception types, not importable cheaply
            if options is not None and options.terminate:
                raise RunCut("the model run was cut short at the request deadline") from None
            raise InferenceFailed(f"onnxruntime could not run the model: {exc}") from None
        if not self.non_tensor_outputs:
            return results
        return [self._to_tensor(value) if name in self.non_tensor_outputs else value
                for name, value in zip(names, results, strict=True)]

    @staticmethod
    def run_options() -> Any:
        """Options for one run: setting ``terminate`` from any thread ends it."""
        import onnxruntime as ort

        options = ort.RunOptions()
        options.log_severity_level = 4  # a cut run is expected, not an ORT error line
        return options

    @staticmethod
    def _to_tensor(value: Any) -> np.ndarray:
        items = value if isinstance(value, list) else [value]
        array = np.empty(len(items), dtype=object)
        array[:] = [orjson.dumps(item, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
                    .decode() for item in items]
        return array

    def warm_up(self, max_batch_size: int, given: Profile | None = None) -> WarmUp:
        """Run the model at an input profile: ``given`` (the user's; ProfileError when the model
        does not run at it), else one derived from the model. Times batch 1 and the full batch,
        and chooses loop or thread mode from them. A model that runs at no derived profile is
        still served: the warm-up says what it tried, and inference runs in the thread."""
        if given is not None:
            profile = given
            try:
                self.run(self.feed(inputs_at(profile, self.inputs)), self.output_names)
            except InferenceFailed as exc:
                raise ProfileError(f"the model does not run at the given profile "
                                   f"{profile.describe()}: {exc.message}") from None
        else:
            found = derive(self.profile_inputs, self.model_metadata, self._trial)
            if found.profile is None:
                self.metadata["parameters"]["execution"] = "thread"
                return WarmUp(None, None, found)
            profile = found.profile
        self.profile = profile
        # In the model's V2 metadata: clients (mlship predict, the smoke test, synthetic canary
        # traffic) generate their inputs at the shapes the model was shown to run at.
        self.metadata["parameters"]["input_profile"] = profile.to_dict()
        batch1 = self.feed(inputs_at(profile, self.inputs))
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            self.run(batch1, self.output_names)
            timings.append(time.perf_counter() - started)
        single = min(timings[1:])  # the first run pays one-off allocations
        largest = single
        self.loop_max_elements = sum(a.size for a in batch1.values())
        if self.batchable and max_batch_size > 1:
            full = self.feed(inputs_at(profile, self.inputs, max_batch_size))
            self.loop_max_elements = sum(a.size for a in full.values())
            self.run(full, self.output_names)
            started = time.perf_counter()
            self.run(full, self.output_names)
            largest = time.perf_counter() - started
        if self.execution == "auto":
            self.on_loop = largest < ON_LOOP_BELOW_S
        else:
            self.on_loop = self.execution == "loop"
        self.run_immediately = self.on_loop and single < MERGE_ABOVE_S
        self.metadata["parameters"]["execution"] = "loop" if self.on_loop else "thread"
        return WarmUp(profile, sorted(timings)[len(timings) // 2])

    def _trial(self, inputs: dict[str, np.ndarray]) -> None:
        """One run of a candidate profile; raises when the model refuses it, logs nothing."""
        self._session.run(self.output_names, self.feed(inputs), self._quiet)
