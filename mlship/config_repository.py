"""``models:`` and ``pipelines:`` in ``mlship.yaml``: one runtime process serving several models.

The main ``model`` is served under the app's name; each entry of ``models`` is one more model
with its own V2 endpoints, readiness and metrics, and each pipeline chains them into one V2
model (docs/runtime-api.md#several-models-and-pipelines). Render turns these sections into the
runtime's repository document (``mlship.render_context.model_env``). The pipelines are checked
with the runtime's own code: their structure at load (``check_repository``), and against the
models' signatures at render (``check_pipelines``), so what validates is what the runtime
accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from mlship.config_model import DnsLabel, FieldProblem, ModelFile, Section
from mlship.errors import ConfigError

if TYPE_CHECKING:
    from mlship_runtime.repository import Repository

    from mlship.config import MlshipConfig
    from mlship.inspect import ModelSignature, TensorSpec


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


def repository_document(config: MlshipConfig, paths: Mapping[str, str], *,
                        baseline: str | None = None) -> dict[str, Any]:
    """The runtime's repository document (``MLSHIP_RUNTIME_MODELS``): ``paths`` maps each
    model's name to where the runtime finds it; ``baseline`` is the main model's drift
    baseline. A pinned sha256 is passed for downloaded models, as the single-model env does."""
    entries: list[dict[str, Any]] = []
    for name, model in config.served_models:
        entry: dict[str, Any] = {"name": name, "path": paths[name], "version": model.version}
        if model.kind == "s3" and model.sha256:
            entry["sha256"] = model.sha256
        if isinstance(model, ServedModel) and model.intra_op_threads is not None:
            entry["intra_op_threads"] = model.intra_op_threads
        if baseline and name == config.name:
            entry["baseline"] = baseline
        entries.append(entry)
    document: dict[str, Any] = {"models": entries}
    if config.pipelines:
        document["pipelines"] = [_pipeline_entry(p) for p in config.pipelines]
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


def check_repository(config: MlshipConfig) -> None:
    """Unique names, one source kind, and pipelines the runtime's parser accepts."""
    from mlship_runtime.repository import RepositoryError

    taken = {config.name: "the app (its main model)"}
    main = config.model
    for index, model in enumerate(config.models):
        where = f"models[{index}]"
        _claim_name(taken, model.name, f"{where}.name", where)
        if model.kind != main.kind:
            raise FieldProblem(f"{where}.source", model.source,
                               f"must come from where model.source does ({_KIND_WORDS[main.kind]}"
                               "): the pod has one image, one S3 endpoint and one model volume")
        if model.kind == "volume" and model.claim_and_path[0] != main.claim_and_path[0]:
            raise FieldProblem(f"{where}.source", model.source,
                               f"must be on model.source's claim: pvc://{main.claim_and_path[0]}"
                               "/PATH")
    for index, pipeline in enumerate(config.pipelines):
        _claim_name(taken, pipeline.name, f"pipelines[{index}].name", f"pipelines[{index}]")
    try:
        _parsed(config)
    except RepositoryError as err:
        # "<source>: pipelines[0].steps[1].inputs.y2: expected ..." -> that key and the reason.
        where, _, reason = str(err).removeprefix(f"{_SOURCE}: ").partition(": ")
        raise FieldProblem(where, _value_at(config, where), reason) from None


def _parsed(config: MlshipConfig) -> Repository:
    """The config's repository as the runtime parses it (RepositoryError when it refuses)."""
    from mlship_runtime.repository import parse
    from mlship_runtime.settings import RuntimeSettings

    document = repository_document(config, {name: model.source
                                            for name, model in config.served_models})
    return parse(document, _SOURCE, Path("/"), RuntimeSettings(models=_SOURCE))


_SOURCE = "mlship.yaml"
_KIND_WORDS = {"image": "a local file baked into the image", "s3": "s3://",
               "volume": "pvc://"}


def _claim_name(taken: dict[str, str], name: str, where: str, owner: str) -> None:
    if name in taken:
        raise FieldProblem(where, name, f"already names {taken[name]}; the app, its models "
                                        "and pipelines need distinct names")
    taken[name] = owner


def _value_at(config: MlshipConfig, where: str) -> object:
    """The config's value at a runtime key path such as ``pipelines[0].steps[1].inputs.y2``."""
    value: object = config.model_dump()
    for part in where.split("."):
        key, _, index = part.partition("[")
        if isinstance(value, dict):
            value = value.get(key)
        if index and isinstance(value, list):
            position = int(index.rstrip("]"))
            value = value[position] if position < len(value) else None
    return value


def check_pipelines(config: MlshipConfig, signatures: Mapping[str, ModelSignature], *,
                    label: str) -> None:
    """Pipelines against the models' signatures, with the runtime's own check (datatypes,
    ranks, fixed dimensions, every input fed), so a mismatch fails at render, not at start."""
    from mlship_runtime.pipeline import plan_pipeline
    from mlship_runtime.repository import RepositoryError

    repository = _parsed(config)
    served = {name: _V2Signature.of(signature) for name, signature in signatures.items()}
    for spec in repository.pipelines:
        if not all(step.model in served for step in spec.steps):
            continue  # a remote model's signature is known only when the runtime loads it
        try:
            plan_pipeline(spec, served, _SOURCE)
        except RepositoryError as err:
            raise ConfigError(f"{label}: {str(err).removeprefix(f'{_SOURCE}: ')}",
                              hint="the runtime would refuse this pipeline at start") from None


class _V2Signature:
    """An inspected model as the runtime's pipeline check sees a loaded one (V2 metadata)."""

    def __init__(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
                 non_tensor_outputs: set[str]) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.non_tensor_outputs = non_tensor_outputs

    @classmethod
    def of(cls, signature: ModelSignature) -> _V2Signature:
        return cls([_v2(spec) for spec in signature.inputs],
                   [_v2(spec) for spec in signature.outputs],
                   {spec.name for spec in signature.outputs if not spec.is_tensor})


def _v2(spec: TensorSpec) -> dict[str, Any]:
    from mlship_runtime.signature import V2_TO_NUMPY

    if not spec.is_tensor:
        return {"name": spec.name, "datatype": "BYTES", "shape": [-1]}
    by_numpy = {str(dtype): v2 for v2, dtype in V2_TO_NUMPY.items() if v2 != "BYTES"}
    datatype = "BYTES" if spec.type.dtype == "string" else by_numpy.get(spec.type.dtype or "",
                                                                        "BYTES")
    shape = [-1 if dim.size is None else dim.size for dim in spec.type.shape or ()]
    return {"name": spec.name, "datatype": datatype, "shape": shape}
