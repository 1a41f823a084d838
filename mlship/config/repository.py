"""``models:`` and ``pipelines:`` in ``mlship.yaml``: one runtime process serving several models.

The main ``model`` is served under the app's name; each entry of ``models`` is one more model
with its own V2 endpoints, readiness and metrics, and each pipeline chains them into one V2
model (docs/runtime-api.md#several-models-and-pipelines). Render turns these sections into the
runtime's repository document (``mlship.render.runtime_env.model_env``). The pipelines are checked
with the runtime's own code: their structure at load (``check_repository``), and against the
models' signatures at render (``check_pipelines``), so what validates is what the runtime
accepts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from mlship.config.fields import DnsLabel, FieldProblem, Section
from mlship.config.sections import ModelFile

if TYPE_CHECKING:
    from mlship_runtime.repository import Repository


class ServedModel(ModelFile):
    """One more model in the same process. It comes from where ``model`` does: baked into the
    image, from the same S3 endpoint and credentials, or from the same volume claim."""

    name: DnsLabel = Field(..., description="V2 model name (/v2/models/NAME); unique among the "
                                            "app's name, models and pipelines.")
    intra_op_threads: int | None = Field(None, ge=0, description="onnxruntime intra-op "
                                         "threads for this model; None takes runtime's.")


class PipelineStep(Section):
    model: str = Field(..., description="The app's name (the main model) or a name in models.")
    name: str | None = Field(None, description="Step name, unique in the pipeline; default: "
                                               "the model's name.")
    inputs: dict[str, str] = Field({}, description="INPUT: STEP.TENSOR (an earlier step's "
                                   "output) or request.INPUT; an input left out takes the "
                                   "previous step's output of the same name.")


class PipelineSettings(Section):
    name: DnsLabel = Field(..., description="V2 model name the pipeline is served under.")
    steps: list[PipelineStep] = Field(..., min_length=1, description="Run in order; the "
                                      "first step takes the request's inputs.")
    outputs: dict[str, str] = Field({}, description="OUTPUT: STEP.TENSOR; empty means every "
                                    "output of the last step.")


def repository_document(served: Sequence[tuple[str, ModelFile]],
                        pipelines: Sequence[PipelineSettings], paths: Mapping[str, str], *,
                        main: str, baseline: str | None = None) -> dict[str, Any]:
    """The runtime's repository document (``MLSHIP_RUNTIME_MODELS``): ``served`` is every
    (V2 name, model), the main one named ``main``; ``paths`` maps each name to where the
    runtime finds it; ``baseline`` is the main model's drift baseline. A pinned sha256 is
    passed for downloaded models, as the single-model env does."""
    entries: list[dict[str, Any]] = []
    for name, model in served:
        entry: dict[str, Any] = {"name": name, "path": paths[name], "version": model.version}
        if model.fetched and model.sha256:
            entry["sha256"] = model.sha256
        if isinstance(model, ServedModel) and model.intra_op_threads is not None:
            entry["intra_op_threads"] = model.intra_op_threads
        if model.profile.shapes:
            entry["input_shapes"] = model.profile.shapes_text()
        if baseline and name == main:
            entry["baseline"] = baseline
        entries.append(entry)
    document: dict[str, Any] = {"models": entries}
    if pipelines:
        document["pipelines"] = [_pipeline_entry(p) for p in pipelines]
    return document


def _pipeline_entry(pipeline: PipelineSettings) -> dict[str, Any]:
    steps = []
    for step in pipeline.steps:
        entry: dict[str, Any] = {"model": step.model}
        if step.name is not None:
            entry["name"] = step.name
        if step.inputs:
            entry["inputs"] = dict(step.inputs)
        steps.append(entry)
    result: dict[str, Any] = {"name": pipeline.name, "steps": steps}
    if pipeline.outputs:
        result["outputs"] = dict(pipeline.outputs)
    return result


def check_repository(name: str, main: ModelFile, models: Sequence[ServedModel],
                     pipelines: Sequence[PipelineSettings]) -> None:
    """Unique names, one source kind, and pipelines the runtime's parser accepts."""
    from mlship_runtime.repository import RepositoryError

    taken = {name: "the app (its main model)"}
    for index, model in enumerate(models):
        where = f"models[{index}]"
        _claim_name(taken, model.name, f"{where}.name", where)
        if model.kind != main.kind:
            raise FieldProblem(f"{where}.source", model.source,
                               f"must come from where model.source does ({_KIND_WORDS[main.kind]}"
                               "): the pod has one image, one object store and one model volume")
        if model.kind == "volume" and model.claim_and_path[0] != main.claim_and_path[0]:
            raise FieldProblem(f"{where}.source", model.source,
                               f"must be on model.source's claim: pvc://{main.claim_and_path[0]}"
                               "/PATH")
    for index, pipeline in enumerate(pipelines):
        _claim_name(taken, pipeline.name, f"pipelines[{index}].name", f"pipelines[{index}]")
    served = [(name, main), *((model.name, model) for model in models)]
    try:
        parsed_repository(served, pipelines)
    except RepositoryError as err:
        raise FieldProblem(err.where, _value_at(pipelines, err.where), err.reason) from None


def parsed_repository(served: Sequence[tuple[str, ModelFile]],
                      pipelines: Sequence[PipelineSettings]) -> Repository:
    """The repository as the runtime parses it (RepositoryError when it refuses)."""
    from mlship_runtime.repository import parse
    from mlship_runtime.settings import RuntimeSettings

    document = repository_document(served, pipelines, {name: model.source
                                                        for name, model in served},
                                   main=served[0][0])
    return parse(document, SOURCE, Path("/"), RuntimeSettings(models=SOURCE))


SOURCE = "mlship.yaml"
_KIND_WORDS = {"image": "a local file baked into the image", "s3": "s3://", "gcs": "gs://",
               "volume": "pvc://"}


def _claim_name(taken: dict[str, str], name: str, where: str, owner: str) -> None:
    if name in taken:
        raise FieldProblem(where, name, f"already names {taken[name]}; the app, its models "
                                        "and pipelines need distinct names")
    taken[name] = owner


def _value_at(pipelines: Sequence[PipelineSettings], where: str) -> object:
    """The value at a runtime key path such as ``pipelines[0].steps[1].inputs.y2``."""
    value: object = {"pipelines": [pipeline.model_dump() for pipeline in pipelines]}
    for part in where.split("."):
        key, _, index = part.partition("[")
        if isinstance(value, dict):
            value = value.get(key)
        if index and isinstance(value, list):
            position = int(index.rstrip("]"))
            value = value[position] if position < len(value) else None
    return value
