"""Runtime settings: THE declaration of every setting of the runtime, and their one parser.

Each field of ``RuntimeSettings`` is declared once, with its type, default, bounds or choices,
documentation and, where a rendered pod runs with something else, its pod default. Everything
else is derived from these declarations: the ``MLSHIP_RUNTIME_<FIELD>`` env vars and
``--<field>`` options (``parse_settings``), ``--help``, validation (``__post_init__``), and on
mlship's side the ``runtime:`` section of mlship.yaml, its JSON Schema and the rendered
ConfigMap (``mlship.config.runtime``). The runtime ships alone in the image, so it owns them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "MLSHIP_RUNTIME_"
_LABEL_VALUE = re.compile(r"[A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SAME = object()  # a pod runs with the runtime's own default


class SettingError(ValueError):
    """One setting refused: ``name`` is the field, ``expected`` what it accepts."""

    def __init__(self, name: str, value: object, expected: str, *,
                 sentence: str | None = None) -> None:
        super().__init__(f"{name}: {sentence or f'expected {expected}, got {value!r}'}")
        self.name = name
        self.value = value
        self.expected = expected


@dataclass(frozen=True)
class Spec:
    """What a setting accepts, beyond its type. Bounds are inclusive unless ``above`` is set."""

    doc: str
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # strictly greater than this
    choices: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)  # accepted spellings -> choice
    pattern: re.Pattern[str] | None = None
    pattern_words: str = ""
    zero_is_none: bool = False  # 0 (what a ConfigMap can say) means "let the runtime decide"
    pod: Any = _SAME  # the value a rendered pod runs with when mlship.yaml does not say

    def expected(self) -> str:
        """What the setting accepts, in words (for errors and --help)."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.pattern_words:
            return self.pattern_words
        parts = []
        if self.minimum is not None:
            parts.append(f">= {self.minimum:g}")
        if self.above is not None:
            parts.append(f"> {self.above:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        if self.minimum is not None and self.maximum is not None:
            return f"{self.minimum:g}..{self.maximum:g}"
        return " and ".join(parts) or "any value"


def setting(default: Any, doc: str, **spec: Any) -> Any:
    """A declared field: ``default`` and a ``Spec`` (see there) in the field's metadata."""
    return field(default=default, metadata={"spec": Spec(doc, **spec)})


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything the server needs; ``None`` thread counts mean "derive from the CPU quota"."""

    model: str = setting(
        "", "the .onnx file to serve: a path, s3://BUCKET/KEY or gs://BUCKET/KEY (or a pushed "
        "PREFIX/ there) or http(s)://URL, downloaded into the cache and verified before loading")
    models: str | None = setting(
        None, "a repository file (JSON) listing several models, each with its own settings, "
        "and pipelines chaining them, or that JSON document itself; instead of --model "
        "(docs/runtime-api.md)")
    model_name: str = setting("", "name in the URL (default: the file stem)")
    model_version: str | None = setting(None, "version reported in metadata and metrics")
    track: str = setting("", "label track=VALUE on every metric (mlship rollout sets canary "
                             "on a canary)", pattern=_LABEL_VALUE,
                         pattern_words="at most 63 of [A-Za-z0-9._-]")
    revision: str = setting("", "label revision=VALUE on every metric (which canary attempt "
                                "this process is)", pattern=_LABEL_VALUE,
                            pattern_words="at most 63 of [A-Za-z0-9._-]")
    model_sha256: str | None = setting(
        None, "the whole model's digest (`mlship model push` prints it: the .onnx's sha256, "
        "or with external data one over every file's); required for a remote model without an "
        "mlship-manifest.json beside it", pattern=_SHA256, pattern_words="64 hex digits")
    cache_dir: str | None = setting(
        None, "where remote models are downloaded (default: $XDG_CACHE_HOME/mlship/models or "
        "~/.cache/mlship/models)")
    s3_addressing_style: str = setting(
        "auto", "S3 addressing: auto (path-style for a custom AWS_ENDPOINT_URL, virtual-hosted "
        "for AWS), path or virtual", choices=("auto", "path", "virtual"))
    host: str = setting("127.0.0.1", "address to listen on", pod="0.0.0.0")
    port: int = setting(8080, "port to listen on", minimum=0, maximum=65535)
    workers: int = setting(1, "server processes sharing the port", minimum=1)
    provider: str = setting(
        "auto", "execution provider: auto picks TensorRT > CUDA > CPU, falling back to CPU",
        choices=("auto", "cpu", "cuda", "tensorrt"), pod="cpu")
    provider_fallback: str = setting(
        "deny", "when a provider asked for by name (cuda, tensorrt) does not load, which "
        "onnxruntime answers by running on CPU: deny (never ready, exit 14, naming the missing "
        "library or driver mismatch) or allow (serve anyway, with a warning; "
        "mlship_execution_provider shows the provider in use)", choices=("deny", "allow"))
    intra_op_threads: int | None = setting(
        None, "onnxruntime intra-op threads (0 or unset: the CPUs this process may use)",
        minimum=0, zero_is_none=True)
    inter_op_threads: int | None = setting(
        None, "onnxruntime inter-op threads (0 or unset: 1)", minimum=0, zero_is_none=True)
    batching: bool = setting(True, "merge concurrent requests into one inference")
    execution: str = setting(
        "auto", "where inference runs: loop (event loop), thread, or auto (loop when a full "
        "batch takes under 4 ms)", choices=("auto", "loop", "thread"))
    max_batch_size: int = setting(8, "largest merged batch", minimum=1)
    max_queue_delay_ms: float = setting(
        2.0, "longest a queued request waits for companions while a batch runs",
        minimum=0, maximum=1000)
    max_queue_size: int = setting(256, "requests waiting beyond this get 503 with Retry-After",
                                  minimum=1)
    max_body_bytes: int = setting(64 * 1024 * 1024, "largest request body (413 beyond)",
                                  minimum=1024)
    max_header_bytes: int = setting(
        64 * 1024, "largest request line plus headers (431 and the connection closed beyond)",
        minimum=1024)
    max_request_values: int = setting(
        2_000_000, "most values one request may carry as objects: JSON numbers, strings, "
        "lists and objects (counted before parsing) and BYTES elements (413 beyond); numeric "
        "tensors in the binary extension are not counted", minimum=16)
    request_timeout_s: float = setting(
        30.0, "per-request deadline from its headers on: the body must arrive within it (408 "
        "beyond), and the answer (504 beyond; a model run still going is cut short)", above=0)
    header_timeout_s: float = setting(
        10.0, "a connection's request line and headers must arrive within this many seconds "
        "of its connect or its previous answer's end (408 beyond)", above=0)
    max_connections: int = setting(
        1000, "open connections beyond this shed the slowest (408) or, when every one has a "
        "request being served, are answered 503; capped by the open-file limit", minimum=1)
    fetch_timeout_s: float = setting(
        900.0, "deadline for downloading a remote model, manifest and every file (exit 11 "
        "beyond)", above=0)
    drain_grace_s: float = setting(
        25.0, "after SIGTERM, how long in-flight requests may take to finish", minimum=0)
    log_format: str = setting("plain", "plain lines for people, or one JSON object per line",
                              choices=("plain", "json"), aliases={"text": "plain"}, pod="json")
    log_level: str = setting("info", "lowest level logged",
                             choices=("debug", "info", "warning", "error"))
    access_log: bool = setting(
        False, "the audit trail: one JSON line per request on stderr (time, caller, mesh "
        "identity, model, version, status, latency, request id; never bodies)", pod=True)
    trust_forwarded_client_cert: bool = setting(
        False, "record the caller identity (URI=spiffe://...) of the x-forwarded-client-cert "
        "header in the audit line; only behind a mesh sidecar that sets the header, or clients "
        "could claim any identity")
    payload_log: str | None = setting(
        None, "log sampled request and response bodies, for monitoring: - for stdout or a "
        "file path (unset: off)")
    payload_log_sample: float = setting(0.01, "share of requests whose bodies are logged",
                                        minimum=0, maximum=1)
    payload_log_rate: float = setting(1.0, "most body records per second, whatever the "
                                           "sample share", above=0, maximum=1000)
    payload_log_max_bytes: int = setting(16 * 1024, "bytes kept of each body (the rest is "
                                         "cut and the record says so)", minimum=64,
                                         maximum=1024 * 1024)
    payload_log_file_bytes: int = setting(
        8 * 1024 * 1024, "a payload log file past this size is moved to FILE.1 (replacing "
        "it) and started again: at most twice this on disk", minimum=64 * 1024)
    input_shapes: str | None = setting(
        None, "the shapes real requests have, for the warm-up: NAME=DIMS[,NAME=DIMS...] such "
        "as images=1x3x640x640; a model that does not run at them is refused (unset: derived "
        "from the model, then common sizes, and a model that runs at none still serves)")
    sample: str | None = setting(
        None, "a sample request for the warm-up: .npz (arrays by input name), .npy (the only "
        "input) or .json ({name: values} or a V2 request); refused like input_shapes")
    baseline: str | None = setting(
        None, "drift baseline written by `mlship baseline`: export per-feature input "
        "statistics against it (docs/drift.md); off when unset")
    prediction_cache_entries: int = setting(
        0, "cache the outputs of up to this many distinct requests (0: off); only for "
        "deterministic models, see docs/runtime-api.md", minimum=0)
    prediction_cache_bytes: int = setting(64 * 1024 * 1024,
                                          "bound on the bytes of cached output tensors",
                                          minimum=1)
    prediction_cache_ttl_s: float = setting(
        300.0, "seconds a cached output may be served after it was computed", above=0)
    shadow_url: str | None = setting(
        None, "base URL of a shadow runtime: a sample of V2 infer requests "
        "is mirrored to it off the request path and its answers compared with this one's "
        "(docs/rollouts.md#shadow); off when unset", pattern=re.compile(r"http://[^\s/?#]+/?"),
        pattern_words="http://HOST:PORT")
    shadow_sample_rate: float = setting(
        1.0, "share of V2 infer requests mirrored to shadow_url", minimum=0, maximum=1)
    shadow_max_per_second: float = setting(
        20.0, "most requests mirrored per second (per worker); more are not mirrored",
        above=0, maximum=1000)
    shadow_tolerances: str | None = setting(
        None, "how answers are compared, as JSON: {\"default\": {compare, absolute, relative, "
        "max_disagreement}, \"outputs\": {NAME: {...}}} (mlship sets it from rollout.shadow)")

    def __post_init__(self) -> None:
        for declared in DECLARED:
            value = getattr(self, declared.name)
            normal = declared.normalize(value)
            if normal is not value:
                object.__setattr__(self, declared.name, normal)
            declared.check(normal)
        if not self.model and not self.models:
            raise SettingError("model", self.model, "a path to an .onnx file",
                               sentence="a path to an .onnx file is required")
        if self.model and self.models:
            raise SettingError("models", self.models, "model or models, not both",
                               sentence="give either model (one .onnx file) or models (a "
                                        "repository file of several), not both")
        if self.shadow_url is not None:
            from urllib.parse import urlsplit

            try:
                urlsplit(self.shadow_url).port  # noqa: B018 - raises on a port that is not one
            except ValueError:
                raise SettingError("shadow_url", self.shadow_url, "http://HOST:PORT",
                                   sentence=f"{self.shadow_url!r} has no valid port") from None
        if self.shadow_tolerances is not None:
            from mlship_runtime.compare import ToleranceError, Tolerances

            try:
                Tolerances.from_json(self.shadow_tolerances)
            except ToleranceError as exc:
                raise SettingError("shadow_tolerances", self.shadow_tolerances, "JSON",
                                   sentence=str(exc)) from None
        if not self.model_name and self.model:
            object.__setattr__(self, "model_name", Path(self.model.split("?")[0]).stem)

    def replace(self, **changes: Any) -> RuntimeSettings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Declared:
    """One setting as declared: name, value type, default and ``Spec``."""

    name: str
    kind: type  # int, float, bool or str
    optional: bool  # None is a value
    default: Any
    spec: Spec

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def pod_default(self) -> Any:
        return self.default if self.spec.pod is _SAME else self.spec.pod

    def normalize(self, value: Any) -> Any:
        if isinstance(value, str) and value in self.spec.aliases:
            return self.spec.aliases[value]
        if self.kind is str and self.spec.choices and isinstance(value, str):
            return value.lower() if value.lower() in self.spec.choices else value
        if self.spec.zero_is_none and value == 0 and not isinstance(value, bool):
            return None
        if self.name == "model_sha256" and isinstance(value, str):
            return value.strip().lower()
        return value

    def check(self, value: Any) -> None:
        """SettingError unless ``value`` (normalized) is one this setting accepts."""
        spec = self.spec
        if value is None:
            if not self.optional:
                raise SettingError(self.name, value, f"a {self.kind.__name__}")
            return
        numeric = (int, float) if self.kind is float else (self.kind,)
        if isinstance(value, bool) != (self.kind is bool) or not isinstance(value, numeric):
            raise SettingError(self.name, value, f"a {self.kind.__name__}")
        if spec.choices and value not in spec.choices:
            raise SettingError(self.name, value, spec.expected())
        if isinstance(value, str):
            if spec.pattern is not None and not spec.pattern.fullmatch(value):
                raise SettingError(self.name, value, spec.expected())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            low_ok = spec.minimum is None or value >= spec.minimum
            high_ok = spec.maximum is None or value <= spec.maximum
            above_ok = spec.above is None or value > spec.above
            if not (low_ok and high_ok and above_ok) or math.isnan(value):
                raise SettingError(self.name, value, spec.expected())

    def parse(self, text: str) -> Any:
        """The typed value of an env var or option; ValueError naming what is expected."""
        stripped = text.strip()
        if self.optional and stripped.lower() in ("", "none", "auto", "null"):
            return None
        if self.kind is bool:
            lowered = stripped.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true/false, got {text!r}")
        if self.kind is int:
            try:
                return int(stripped)
            except ValueError:
                raise ValueError(f"expected an integer, got {text!r}") from None
        if self.kind is float:
            try:
                return float(stripped)
            except ValueError:
                raise ValueError(f"expected a number, got {text!r}") from None
        return text


def _declared() -> tuple[Declared, ...]:
    hints = typing.get_type_hints(RuntimeSettings)
    result = []
    for item in dataclasses.fields(RuntimeSettings):
        hint = hints[item.name]
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        kind = args[0] if args else hint
        result.append(Declared(item.name, kind, len(args) != len(typing.get_args(hint)),
                               item.default, item.metadata["spec"]))
    return tuple(result)


DECLARED: tuple[Declared, ...] = _declared()
BY_NAME: Mapping[str, Declared] = {declared.name: declared for declared in DECLARED}
