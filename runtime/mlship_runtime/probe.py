"""``python -m mlship_runtime.probe --model PATH [--input-shapes ...] [--sample F] [--batch N]``.

Loads the model as the server does, warms it up at its input profile (the given one, or one
derived as the server derives it) and at ``--batch`` rows, and prints one JSON object: whether
onnxruntime serves the file at all, the profile used and how it was found, and the peak
resident memory of the process — the measured figure mlship's memory estimate and suggested
limits come from. Its own process, so the measurement is this model's and nothing else's.
Exit 0 with ``"servable": false`` and the reason when onnxruntime refuses the file; exit 2 on
bad options.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def probe(model: str, *, input_shapes: str | None, sample: str | None, batch: int,
          optimize: bool = True) -> dict[str, Any]:
    import numpy as np  # noqa: F401 - counted in the baseline, as in the server
    import onnxruntime  # noqa: F401

    from mlship_runtime.loading import given_profile
    from mlship_runtime.profile import ProfileError
    from mlship_runtime.session import ModelSession
    from mlship_runtime.settings import RuntimeSettings

    baseline = _rss_peak_bytes()
    report: dict[str, Any] = {"model": model, "servable": False, "profile": None,
                              "derived": None, "tried": [], "warmed": False, "batch": batch,
                              "baseline_rss_bytes": baseline}
    settings = RuntimeSettings(model=model, input_shapes=input_shapes, sample=sample,
                               max_batch_size=batch, execution="thread")
    started = time.perf_counter()
    try:
        session = ModelSession(settings, optimize=optimize)
    except Exception as exc:  # onnxruntime's refusal of the file, in its own words
        report["error"] = _first_line(exc)
        return report
    report.update(servable=True, load_s=round(time.perf_counter() - started, 3),
                  inputs=session.inputs, batchable=session.batchable)
    try:
        warm = session.warm_up(batch, given_profile(settings, session))
    except (ProfileError, ValueError) as exc:
        report.update(error=_first_line(exc), given_failed=True)
        return report
    if warm.derivation is not None:
        report.update(tried=warm.derivation.tried, error=warm.derivation.last_error,
                      derived=True)
    if warm.profile is not None:
        report.update(profile=warm.profile.to_dict(), derived=not warm.profile.given,
                      warmed=True, batch1_s=warm.batch1_s)
    report["peak_rss_bytes"] = _rss_peak_bytes()
    return report


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlship_runtime.probe",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input-shapes", default=None)
    parser.add_argument("--sample", default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--no-optimize", action="store_true",
                        help="open the session with graph optimizations off (only whether "
                             "onnxruntime takes the file)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    report = probe(args.model, input_shapes=args.input_shapes, sample=args.sample,
                   batch=args.batch, optimize=not args.no_optimize)
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
