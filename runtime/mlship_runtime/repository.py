"""The model repository file (``--models FILE``): several models and simple pipelines.

The file lists models, each with the per-model settings a single-model process takes as
options, and pipelines that chain them (the outputs of one step feed named inputs of a later
one). ``parse`` checks the document's structure once, at start, and turns every model entry
into the ``RuntimeSettings`` a single-model process would have, so each model is fetched,
loaded, batched, cached and measured exactly as it would be alone; pipelines are checked
against the loaded models' signatures later (mlship_runtime.pipeline). Every error is one
``RepositoryError`` line: the file, the key path and what is allowed. The runtime reads JSON
only (PyYAML is not one of its dependencies); ``mlship serve`` reads YAML and hands the same
document to ``parse``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlship_runtime.fetch import is_remote
from mlship_runtime.settings import RuntimeSettings, SettingError

REQUEST = "request"  # the source name of the pipeline's own inputs: request.<input>
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # a URL path segment and a label value
_NAME_RULE = "1-63 of [A-Za-z0-9._-], starting with a letter or digit"
# The file's key -> the RuntimeSettings field it sets, and the JSON types accepted.
_MODEL_KEYS: dict[str, tuple[str, tuple[type, ...]]] = {
    "name": ("model_name", (str,)),
    "path": ("model", (str,)),
    "version": ("model_version", (str, int)),
    "sha256": ("model_sha256", (str,)),
    "provider": ("provider", (str,)),
    "intra_op_threads": ("intra_op_threads", (int,)),
    "inter_op_threads": ("inter_op_threads", (int,)),
    "batching": ("batching", (bool,)),
    "execution": ("execution", (str,)),
    "max_batch_size": ("max_batch_size", (int,)),
    "max_queue_delay_ms": ("max_queue_delay_ms", (int, float)),
    "max_queue_size": ("max_queue_size", (int,)),
    "request_timeout_s": ("request_timeout_s", (int, float)),
    "baseline": ("baseline", (str,)),
    "input_shapes": ("input_shapes", (str,)),
    "sample": ("sample", (str,)),
    "prediction_cache_entries": ("prediction_cache_entries", (int,)),
    "prediction_cache_bytes": ("prediction_cache_bytes", (int,)),
    "prediction_cache_ttl_s": ("prediction_cache_ttl_s", (int, float)),
}
_FIELD_TO_KEY = {field: key for key, (field, _) in _MODEL_KEYS.items()}
# Process options that name one model: with --models they belong in the file.
_PER_MODEL_OPTIONS = ("model_name", "model_version", "model_sha256", "baseline")
Source = tuple[int, str]  # (step index, tensor name); step -1 is the request


class RepositoryError(ValueError):
    """One line: the file, the key path, what is wrong and what is allowed. ``where`` (the key
    path, "" for the document as a whole) and ``reason`` are kept apart for callers that point
    at their own copy of the key, such as mlship.yaml's ``pipelines``."""

    def __init__(self, source: str, where: str, reason: str) -> None:
        super().__init__(f"{source}: {where}: {reason}" if where else f"{source}: {reason}")
        self.source = source
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class ModelEntry:
    name: str
    settings: RuntimeSettings  # what `--model PATH [options]` would have given this model
    where: str


@dataclass(frozen=True)
class Step:
    name: str
    model: str
    inputs: tuple[tuple[str, Source], ...]  # model input <- source, as mapped in the file
    where: str


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    steps: tuple[Step, ...]
    outputs: tuple[tuple[str, Source], ...] | None  # None: every output of the last step
    where: str


@dataclass(frozen=True)
class Repository:
    source: str  # the file, for messages
    models: tuple[ModelEntry, ...]
    pipelines: tuple[PipelineSpec, ...]


INLINE_SOURCE = "MLSHIP_RUNTIME_MODELS"


def read(path: str, defaults: RuntimeSettings) -> Repository:
    """Parse the JSON file at ``path``; process options in ``defaults`` apply to every model.

    ``path`` may also be the document itself (it starts with ``{``), as rendered Kubernetes
    manifests and images pass it in ``MLSHIP_RUNTIME_MODELS``; its relative paths are then
    relative to the working directory."""
    if path.lstrip().startswith("{"):
        try:
            document = json.loads(path)
        except ValueError as exc:
            raise RepositoryError(INLINE_SOURCE, "", f"not valid JSON: {exc}") from None
        return parse(document, INLINE_SOURCE, Path.cwd(), defaults)
    file = Path(path)
    if file.suffix.lower() in (".yaml", ".yml"):
        raise RepositoryError(
            path, "", f"the runtime reads the repository file as JSON only (it does not depend "
            f"on PyYAML); write the same document as JSON, or start it with "
            f"`mlship serve --models {path}`, which reads YAML")
    try:
        document = json.loads(file.read_bytes())
    except OSError as exc:
        raise RepositoryError(path, "", "cannot read the repository file: "
                              f"{exc.strerror or exc}") from None
    except ValueError as exc:
        raise RepositoryError(path, "", f"not valid JSON: {exc}") from None
    return parse(document, path, file.parent, defaults)


def parse(document: Any, source: str, base: Path, defaults: RuntimeSettings) -> Repository:
    """Check the document's structure; relative paths are relative to ``base``."""
    for field in _PER_MODEL_OPTIONS:
        if getattr(defaults, field):
            raise RepositoryError(source, "", f"{field} is set as a process option, but with a "
                                  f"repository file each model sets its own "
                                  f"({_FIELD_TO_KEY[field]}: in models[])")
    doc = _object(document, source, "the document", {"models", "pipelines"})
    entries = doc.get("models")
    if not isinstance(entries, list) or not entries:
        raise RepositoryError(source, "models", f"expected a non-empty list of models, "
                              f"got {_show(entries)}")
    models: list[ModelEntry] = []
    for index, entry in enumerate(entries):
        models.append(_model(entry, f"models[{index}]", source, base, defaults))
    names: dict[str, str] = {}
    for model in models:
        if model.name in names:
            raise RepositoryError(source, f"{model.where}.name", f"'{model.name}' is already "
                                  f"the name of {names[model.name]}; names must be unique")
        names[model.name] = model.where
    specs = doc.get("pipelines", [])
    if not isinstance(specs, list):
        raise RepositoryError(source, "pipelines", f"expected a list, got {_show(specs)}")
    pipelines: list[PipelineSpec] = []
    for index, spec in enumerate(specs):
        pipeline = _pipeline(spec, f"pipelines[{index}]", source, names)
        if pipeline.name in names:
            raise RepositoryError(source, f"{pipeline.where}.name", f"'{pipeline.name}' is "
                                  f"already the name of {names[pipeline.name]}; names must "
                                  "be unique")
        names[pipeline.name] = pipeline.where
        pipelines.append(pipeline)
    return Repository(source, tuple(models), tuple(pipelines))


def _model(entry: Any, where: str, source: str, base: Path,
           defaults: RuntimeSettings) -> ModelEntry:
    entry = _object(entry, source, where, set(_MODEL_KEYS))
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        raise RepositoryError(source, f"{where}.path", "required: the .onnx file (a path "
                              "relative to this file, s3://... or http(s)://...)")
    changes: dict[str, Any] = {"models": None}
    for key, value in entry.items():
        field, types = _MODEL_KEYS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__.replace("str", "string") for t in types)
            raise RepositoryError(source, f"{where}.{key}", f"expected {expected}, "
                                  f"got {_show(value)}")
        if key in ("path", "baseline", "sample") and isinstance(value, str) and \
                not is_remote(value) and not Path(value).is_absolute():
            changes[field] = str(base / value)
        else:
            changes[field] = str(value) if key == "version" else value
    try:
        settings = defaults.replace(**changes)
    except SettingError as exc:  # RuntimeSettings' own check, e.g. "max_batch_size: >= 1"
        raise RepositoryError(source, f"{where}.{_FIELD_TO_KEY.get(exc.name, exc.name)}",
                              f"expected {exc.expected}, got {exc.value!r}") from None
    if not _NAME.match(settings.model_name):
        key = "name" if "name" in entry else "path"
        raise RepositoryError(source, f"{where}.{key}", f"the model name "
                              f"'{settings.model_name}' must be {_NAME_RULE} (it is a URL "
                              "segment); set name:")
    return ModelEntry(settings.model_name, settings, where)


def _pipeline(spec: Any, where: str, source: str, names: Mapping[str, str]) -> PipelineSpec:
    spec = _object(spec, source, where, {"name", "steps", "outputs"})
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RepositoryError(source, f"{where}.name", f"required, {_NAME_RULE}; "
                              f"got {_show(name)}")
    raw_steps = spec.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise RepositoryError(source, f"{where}.steps", f"expected a non-empty list of "
                              f"{{model: NAME, inputs: {{INPUT: STEP.OUTPUT}}}}, "
                              f"got {_show(raw_steps)}")
    steps: list[Step] = []
    for index, item in enumerate(raw_steps):
        at = f"{where}.steps[{index}]"
        raw = _object(item, source, at, {"model", "name", "inputs"})
        model = raw.get("model")
        if not isinstance(model, str) or not names.get(model, "").startswith("models["):
            known = sorted(n for n, w in names.items() if w.startswith("models["))
            nested = " (a step runs a model; pipelines do not nest)" if model in names else ""
            raise RepositoryError(source, f"{at}.model", f"unknown model {_show(model)}{nested};"
                                  f" the models are {known}")
        step_name = raw.get("name", model)
        earlier = [s.name for s in steps]
        if not isinstance(step_name, str) or not _NAME.match(step_name) or \
                step_name == REQUEST or step_name in earlier:
            raise RepositoryError(source, f"{at}.name", f"expected a step name unique in the "
                                  f"pipeline, not '{REQUEST}', {_NAME_RULE}; got "
                                  f"{_show(step_name)}")
        mapping = raw.get("inputs", {})
        if index == 0 and mapping:
            raise RepositoryError(source, f"{at}.inputs", "the first step takes the request's "
                                  "inputs as they are; map inputs on later steps only")
        mapping = _object(mapping, source, f"{at}.inputs", None)
        inputs = tuple((key, _source(value, earlier, f"{at}.inputs.{key}", source))
                       for key, value in mapping.items())
        steps.append(Step(step_name, model, inputs, at))
    outputs = None
    if "outputs" in spec:
        mapping = _object(spec["outputs"], source, f"{where}.outputs", None)
        if not mapping:
            raise RepositoryError(source, f"{where}.outputs", "expected at least one "
                                  "OUTPUT: STEP.TENSOR (or leave outputs out for every "
                                  "output of the last step)")
        every = [s.name for s in steps]
        outputs = tuple((key, _source(value, every, f"{where}.outputs.{key}", source))
                        for key, value in mapping.items())
    return PipelineSpec(name, tuple(steps), outputs, where)


def _source(text: Any, steps: Sequence[str], where: str, source: str) -> Source:
    """``STEP.TENSOR`` -> (step index, tensor); the longest matching step name wins, because
    both step and tensor names may contain dots."""
    if isinstance(text, str):
        best = max((name for name in (REQUEST, *steps)
                    if text.startswith(name + ".") and len(text) > len(name) + 1),
                   key=len, default=None)
        if best is not None:
            return (-1 if best == REQUEST else steps.index(best)), text[len(best) + 1:]
    allowed = ", ".join(f"'{s}'" for s in (REQUEST, *steps))
    raise RepositoryError(source, f"{where}", f"expected STEP.TENSOR where STEP is one of "
                          f"{allowed} (an earlier step, or {REQUEST} for the pipeline's "
                          f"inputs); got {_show(text)}")


def _object(value: Any, source: str, where: str, allowed: set[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise RepositoryError(source, f"{where}", f"expected an object, got {_show(value)}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise RepositoryError(source, f"{where}", f"unknown key '{key}'; allowed: "
                                      f"{', '.join(sorted(allowed))}")
    elif not all(isinstance(v, str) for v in value.values()):
        raise RepositoryError(source, f"{where}", f"expected NAME: STEP.TENSOR strings, "
                              f"got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if value is not None else "nothing"
    return text if len(text) <= 60 else text[:57] + "..."
