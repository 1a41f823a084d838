"""Fetch, load and warm up a model in the load thread; the exit codes of what cannot be served.

Exit codes: 2 a drift baseline or a model repository file that is invalid or does not fit the
models, 3 the model cannot be loaded or its warm-up fails, 11 a remote model cannot be
downloaded or a file's sha256 differs from its manifest (mlship_runtime.fetch), 14 the
execution provider asked for did not load and ``provider_fallback`` is deny
(mlship_runtime.providers).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlship_runtime import fetch
from mlship_runtime.app import App
from mlship_runtime.drift import BaselineError, DriftMonitor
from mlship_runtime.external import ModelFileError, check_external_data
from mlship_runtime.gcs import GCSError
from mlship_runtime.logs import one_line
from mlship_runtime.metrics import Metrics
from mlship_runtime.profile import Profile, given, load_sample, parse_shapes
from mlship_runtime.providers import EXIT_PROVIDER, ORT_PROVIDERS, ProviderMissing
from mlship_runtime.s3 import S3Error
from mlship_runtime.session import ModelSession
from mlship_runtime.settings import RuntimeSettings

log = logging.getLogger("mlship_runtime")
EXIT_MODEL, EXIT_STORAGE = 3, 11
# Past fetch_timeout_s, the fetch's own deadline has this long to say which file ran out of time
# before the load gives up on it as a whole.
FETCH_GRACE_S = 5.0


EXIT_SETTINGS = 2  # as for invalid options: a baseline or repository that does not fit


class LoadError(Exception):
    """A model that cannot be served: the reason is logged already, ``code`` is the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Loaded:
    session: ModelSession
    seconds: float  # fetch, session creation and warm-up
    batch1: float | None  # median batch-1 run at warm-up; None when it was not warmed up


def new_metrics(settings: RuntimeSettings, worker: str = "") -> Metrics:
    metrics = Metrics(settings.model_name, track=settings.track, revision=settings.revision,
                      worker=worker)
    metrics.version = settings.model_version or ""
    return metrics


def load_model(settings: RuntimeSettings, metrics: Metrics, app: App) -> Loaded:
    """Fetch, load and warm up ``settings.model`` in the load thread; the caller attaches it
    on the event loop. When it cannot be served: one error line, then ``LoadError``."""
    started = time.perf_counter()
    try:
        local = _resolve_within_deadline(settings)
    except (fetch.FetchError, S3Error, GCSError, OSError) as exc:
        log.error("cannot fetch model %s: %s", settings.model, exc)
        raise LoadError(EXIT_STORAGE) from None
    except Exception as exc:  # a hostile source must not kill the load thread unnoticed
        log.error("cannot fetch model %s: %s: %s", settings.model, type(exc).__name__,
                  one_line(exc))
        raise LoadError(EXIT_STORAGE) from None
    try:
        # Whatever onnxruntime does, no external-data location may leave the model's folder.
        check_external_data(Path(local.model))
    except (ModelFileError, OSError) as exc:
        log.error("cannot serve model %s: %s", settings.model, one_line(exc))
        raise LoadError(EXIT_MODEL) from None
    try:
        session = ModelSession(local)
        warm = session.warm_up(settings.max_batch_size, given_profile(settings, session))
    except ProviderMissing as exc:
        log.error("cannot serve model %s: %s", settings.model, exc)
        raise LoadError(EXIT_PROVIDER) from None
    except Exception as exc:  # any load or warm-up failure ends the process with code 3
        log.error("cannot serve model %s: %s", settings.model, one_line(exc))
        raise LoadError(EXIT_MODEL) from None
    if warm.derivation is not None:  # loaded, but no derived profile ran: serve, and say so
        tried = warm.derivation.tried
        log.warning("model %s: not warmed up: it ran at none of %d derived input profiles (%s"
                    "%s; last error: %s); set the shapes real requests have with "
                    "--input-shapes NAME=DIMS (mlship.yaml: model.profile.shapes) or give a "
                    "sample with --sample FILE", settings.model_name, len(tried), tried[0],
                    f" ... {tried[-1]}" if len(tried) > 1 else "",
                    warm.derivation.last_error)
    if settings.baseline:  # drift accounting: only with a baseline, nothing otherwise
        try:
            drift = DriftMonitor.from_file(
                settings.baseline, [("model", metrics.model), *metrics.constant],
                session.inputs)
        except BaselineError as exc:
            log.error("invalid drift baseline: %s", exc)
            raise LoadError(EXIT_SETTINGS) from None
        app.drift = drift  # read by requests only after attach, which comes next
        metrics.collectors.append(drift.render)
        log.info("drift: %d input(s) tracked against %s (%d series)",
                 len(drift.tracked), settings.baseline, drift.series)
    seconds = time.perf_counter() - started
    metrics.load_seconds = seconds
    metrics.provider = session.provider
    metrics.execution_provider = (session.provider_outcome.requested_name,
                                  ORT_PROVIDERS[session.provider])
    return Loaded(session, seconds, warm.batch1_s)


def _resolve_within_deadline(settings: RuntimeSettings) -> RuntimeSettings:
    """``fetch.resolve``, given up on past ``fetch_timeout_s`` whatever it waits for. Its reads
    are bounded by the deadline between them, but not what the standard library reads before
    a body (a status line and headers trickled a byte at a time, a TLS handshake): the fetch
    runs in a daemon thread that dies with the process, which then exits 11."""
    if not fetch.is_remote(settings.model):
        return fetch.resolve(settings)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["settings"] = fetch.resolve(settings)
        except BaseException as exc:  # handed to the load thread, which reports it
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="mlship-fetch", daemon=True)
    thread.start()
    thread.join(settings.fetch_timeout_s + FETCH_GRACE_S)
    if thread.is_alive():
        raise fetch.FetchError(f"{settings.model}: not downloaded within the deadline "
                               f"(fetch_timeout_s = {settings.fetch_timeout_s:g} s); the "
                               "storage endpoint stopped answering")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["settings"]  # type: ignore[no-any-return]


def describe_load(settings: RuntimeSettings, loaded: Loaded) -> str:
    session = loaded.session
    run = "not warmed up" if loaded.batch1 is None else \
        f"batch-1 run {loaded.batch1 * 1000:.3f} ms at {session.profile.describe()}" \
        if session.profile else f"batch-1 run {loaded.batch1 * 1000:.3f} ms"
    return (f"in {loaded.seconds:.3f} s (provider {session.provider}, intra-op threads "
            f"{session.intra_op_threads}, {run}, batching {_batching_mode(settings, session)})")


def given_profile(settings: RuntimeSettings, session: ModelSession) -> Profile | None:
    """The profile the settings give (input_shapes and/or sample); ProfileError naming the
    input and shape when it does not fit the model."""
    if not settings.input_shapes and not settings.sample:
        return None
    shapes = parse_shapes(settings.input_shapes) if settings.input_shapes else None
    samples = load_sample(Path(settings.sample)) if settings.sample else None
    source = " and ".join(part for part in (
        f"--input-shapes {settings.input_shapes}" if settings.input_shapes else "",
        f"--sample {settings.sample}" if settings.sample else "") if part)
    return given(session.inputs, shapes, samples, source=source)


def _batching_mode(settings: RuntimeSettings, session: ModelSession) -> str:
    if not (settings.batching and session.batchable):
        return "off"
    if session.run_immediately:
        return "on, but runs start at once (a batch-1 run is cheaper than merging requests)"
    return f"on, {'event loop' if session.on_loop else 'inference thread'}"
