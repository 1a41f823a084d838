"""Two model files run on the same requests, their answers compared output by output with the
runtime's own comparison (``mlship_runtime.compare``, the one the shadow mirroring uses).

A request is one input file (.npz/.npy/.json as ``mlship predict`` reads them; a folder gives
one request per file), or, without files, ``samples`` generated requests at the old model's
input profile (seeded standard-normal floats, as ``mlship optimize`` measures on): one row
each where the batch dimension is dynamic, else one request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlship_runtime.compare import Tally, Tolerances, compare_outputs

from mlship.errors import BadInputError, ModelError
from mlship.model.probe import ProfileRequest

INPUT_SUFFIXES = (".npz", ".npy", ".json")


@dataclass(frozen=True)
class Comparison:
    """Every output's tally over the requests, and whether each is within its tolerance."""

    old: Path
    new: Path
    requests: int
    source: str
    tallies: Mapping[str, Tally]
    tolerances: Tolerances

    @property
    def passed(self) -> bool:
        return all(t.passes(self.tolerances.of(name)) for name, t in self.tallies.items())

    def failing(self) -> list[str]:
        return [name for name, t in self.tallies.items()
                if not t.passes(self.tolerances.of(name))]

    def to_dict(self) -> dict[str, Any]:
        return {"old": str(self.old), "new": str(self.new), "passed": self.passed,
                "requests": self.requests, "inputs": {"source": self.source},
                "tolerances": self.tolerances.to_dict(),
                "outputs": {name: t.to_dict(self.tolerances.of(name))
                            for name, t in self.tallies.items()}}


def input_files(path: Path) -> list[Path]:
    """The request files: ``path`` itself, or the .npz/.npy/.json files of a folder."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in INPUT_SUFFIXES
                       and p.is_file())
        if not files:
            raise BadInputError(f"{path}: no .npz, .npy or .json input files in this folder")
        return files
    if not path.is_file():
        raise BadInputError(f"{path}: no such input file or folder")
    return [path]


def requests_for(old: Path, source: Path | None, request: ProfileRequest,
                 samples: int) -> tuple[list[dict[str, np.ndarray]], str]:
    """The requests both models answer, and where they came from."""
    from mlship.model.optimize import model_inputs

    if source is not None:
        files = input_files(source)
        requests = [model_inputs(old, path, request, 1)[0] for path in files]
        return requests, f"{len(files)} file(s) from {source}"
    arrays, how = model_inputs(old, None, request, samples)
    session = _session(old)
    if samples > 1 and all(i.shape and not isinstance(i.shape[0], int)
                           for i in session.get_inputs()):
        return [{name: value[row:row + 1] for name, value in arrays.items()}
                for row in range(samples)], f"{samples} requests {how}"
    return [arrays], f"1 request {how}"


def compare_models(old: Path, new: Path, requests: list[dict[str, np.ndarray]], source: str,
                   tolerances: Tolerances) -> Comparison:
    old_session, new_session = _session(old), _session(new)
    names = [o.name for o in old_session.get_outputs()]
    tallies: dict[str, Tally] = {name: Tally() for name in names}
    for feed in requests:
        want = _run(old_session, old, names, feed)
        got = _run(new_session, new, names, feed)
        for name, result in compare_outputs(want, got, tolerances).items():
            tallies[name].add(result)
    return Comparison(old, new, len(requests), source, tallies, tolerances)


def _run(session: Any, path: Path, names: list[str],
         feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = [n for n in names if n in {o.name for o in session.get_outputs()}]
    try:
        values = session.run(wanted, dict(feed))
    except Exception as exc:  # onnxruntime's own error types: the inputs do not fit the model
        text = str(exc).strip().splitlines()
        raise BadInputError(f"{path}: onnxruntime cannot run the model on the inputs: "
                            f"{text[0] if text else type(exc).__name__}",
                            hint="both models must take the same inputs; pass --input FILE "
                                 "or --shape NAME=DIMS") from None
    return dict(zip(wanted, values, strict=True))


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types
        text = str(exc).strip().splitlines()
        raise ModelError(f"{path}: onnxruntime cannot load the model: "
                         f"{text[0] if text else type(exc).__name__}") from None
