"""The model run once as the server runs it, in a child process: its input profile and memory.

``probe_model`` starts ``python -m mlship_runtime.probe``, which loads the model with the
runtime's own session code, warms it up at the profile the user gave (``--shape`` /
``--sample``, or mlship.yaml's ``model.profile``) or the one the runtime derives, at the batch
size requests will be merged into, and reports the peak resident memory. The memory estimate
and the requests/limits ``init`` suggests come from that measurement; without it
(``--no-load``, or a remote model) from shapes alone (``mlship.model.inspect``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlship.errors import BadInputError, ModelError
from mlship.model.facts import ModelSignature

PROBE_TIMEOUT_S = 600
# What the server holds beyond the probe's process: uvicorn, the HTTP buffers of a batch of
# requests, the metrics. Measured as the RSS difference of a ready server and a probe of the
# same tiny model (bench/profile_bench.py prints both).
SERVER_OVERHEAD_BYTES = 24 * 2**20


@dataclass(frozen=True)
class ProfileFacts:
    """The shapes a model was run at, and where they came from."""

    shapes: dict[str, tuple[int, ...]]
    source: str
    given: bool

    def shapes_text(self) -> str:
        return ",".join(f"{name}={'x'.join(map(str, dims))}"
                        for name, dims in self.shapes.items())

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": {name: list(dims) for name, dims in self.shapes.items()},
                "source": self.source, "given": self.given}


@dataclass(frozen=True)
class Probe:
    """What one run of the model in the runtime's code showed."""

    profile: ProfileFacts | None  # None: it ran at none of the derived profiles
    tried: tuple[str, ...]
    batch: int
    peak_rss_bytes: int
    error: str | None

    @property
    def memory_estimate_bytes(self) -> int:
        return self.peak_rss_bytes + SERVER_OVERHEAD_BYTES


@dataclass(frozen=True)
class ProfileRequest:
    """A profile from the command line or mlship.yaml: shapes by input, and a sample file."""

    shapes: Mapping[str, tuple[int, ...]] | None = None
    sample: Path | None = None

    @property
    def empty(self) -> bool:
        return not self.shapes and self.sample is None

    @classmethod
    def from_options(cls, shapes: list[str], sample: Path | None) -> ProfileRequest:
        """``--shape NAME=DIMS`` (repeatable) and ``--sample FILE``; exit 2 on a bad one."""
        from mlship_runtime.profile import ProfileError, parse_shapes

        parsed: dict[str, tuple[int, ...]] = {}
        for option in shapes:
            try:
                for name, dims in parse_shapes(option).items():
                    if name in parsed:
                        raise ProfileError(f"{name!r} is given twice")
                    parsed[name] = dims
            except ProfileError as err:
                raise BadInputError(f"--shape {option}: {err}",
                                    hint="e.g. --shape images=1x3x640x640") from None
        if sample is not None and not sample.is_file():
            raise BadInputError(f"--sample {sample}: no such file")
        return cls(parsed or None, sample)

    def check(self, signature: ModelSignature) -> None:
        """Exit 2 naming the option when the shapes do not fit the model's inputs (names,
        ranks, fixed dims): the user's mistake, found before anything runs."""
        from mlship_runtime.profile import ProfileError, given

        from mlship.model.signatures import v2_inputs

        if not self.shapes:
            return
        try:
            given(v2_inputs(signature), self.shapes, source="--shape")
        except ProfileError as err:
            raise BadInputError(str(err), hint="the shapes requests have, batch dimension "
                                               "included; `mlship inspect MODEL` shows the "
                                               "inputs") from None

    def runtime_args(self) -> list[str]:
        args = []
        if self.shapes:
            args += ["--input-shapes", ",".join(f"{name}={'x'.join(map(str, dims))}"
                                                for name, dims in self.shapes.items())]
        if self.sample is not None:
            args += ["--sample", str(self.sample)]
        return args


def probe_model(path: Path, request: ProfileRequest | None = None, *, batch: int = 1) -> Probe:
    """Run ``path`` at its profile in a child process. ModelError (exit 3) when onnxruntime
    refuses the file, or when it does not run at a profile the user gave."""
    request = request or ProfileRequest()
    command = [sys.executable, "-m", "mlship_runtime.probe", "--model", str(path),
               "--batch", str(batch), *request.runtime_args()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelError(f"{path}: loading and running the model took over "
                         f"{PROBE_TIMEOUT_S} s", hint="pass --no-load to skip the run") from None
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"{path}: the model could not be run here: {tail}",
                         hint="pass --no-load to inspect the file without running it") \
            from None
    if not report["servable"]:
        raise ModelError(f"{path}: onnxruntime cannot load this model: {report['error']}",
                         hint="re-export it for a supported IR version and opset, or check "
                              "its external data files")
    if report.get("given_failed"):
        raise ModelError(f"{path}: {report['error']}",
                         hint="pass shapes the model accepts with --shape NAME=DIMS")
    profile = report["profile"]
    facts = None if profile is None else ProfileFacts(
        {name: tuple(dims) for name, dims in profile["shapes"].items()}, profile["source"],
        bool(profile["given"]))
    return Probe(facts, tuple(report.get("tried", ())), batch,
                 int(report.get("peak_rss_bytes") or report["baseline_rss_bytes"]),
                 report.get("error"))
