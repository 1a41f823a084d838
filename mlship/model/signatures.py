"""The signatures of the models a config serves, inspected once, with the config's pipelines
checked against them by the runtime's own planner (datatypes, ranks, fixed dimensions, every
input fed), so a mismatch fails before anything is rendered, built or deployed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlship.config.repository import SOURCE, parsed_repository
from mlship.config.schema import MlshipConfig
from mlship.config.sections import ModelFile
from mlship.errors import ConfigError
from mlship.model.facts import ModelSignature, TensorSpec
from mlship.model.inspect import inspect_model

Warn = Callable[[str], None]


def model_signatures(config: MlshipConfig, config_path: Path, *, warn: Warn = lambda _: None
                     ) -> tuple[ModelSignature | None, dict[str, ModelSignature]]:
    """Inspect the local model files (relative to the config file): the main model's signature
    (None when remote: init's record stands in) and those of ``models`` by name. Pipelines are
    checked against them here, once, before anything is rendered or built."""
    main = None
    if config.model.kind == "image":
        main = _inspect_local(config.model, "model", config_path, warn)
    extras = {model.name: _inspect_local(model, f"models[{index}]", config_path, warn)
              for index, model in enumerate(config.models) if model.kind == "image"}
    if config.pipelines and main is not None:
        check_pipelines(config, {config.name: main, **extras}, label=str(config_path))
    note = memory_warning(config, [s for s in (main, *extras.values()) if s is not None])
    if note:
        warn(f"{config_path}: {note}")
    return main, extras


def memory_warning(config: MlshipConfig, signatures: list[ModelSignature]) -> str | None:
    """Why resources.limits.memory is below what the served models need by inspect's
    estimate (one runtime process holds them all: its baseline counted once), or None.
    A warning, not a refusal: the estimate is from shapes and may overshoot."""
    from mlship.config.quantities import human_bytes, parse_quantity
    from mlship.model.inspect import RUNTIME_BASELINE_BYTES

    if not signatures:
        return None
    needed = sum(s.memory_estimate_bytes - RUNTIME_BASELINE_BYTES for s in signatures) \
        + RUNTIME_BASELINE_BYTES
    limit = config.resources.limits.memory
    if parse_quantity(limit) >= needed:
        return None
    models = "the model needs" if len(signatures) == 1 else \
        f"the {len(signatures)} models need"
    return (f"resources.limits.memory {limit} is below the {human_bytes(needed)} {models} "
            "to load and run by inspect's estimate: the pod may be OOMKilled; raise it "
            "(mlship init sizes it at 2.5x the estimate) or check with `mlship inspect MODEL`")


def check_profile(model: ModelFile, signature: ModelSignature, key: str, label: str) -> None:
    """``model.profile.shapes`` against the model's inputs, as the runtime checks them at
    start: the pod would refuse a profile that does not fit."""
    from mlship_runtime.profile import ProfileError, given

    if not model.profile.shapes:
        return
    metadata = v2_inputs(signature)
    shapes = {name: tuple(dims) for name, dims in model.profile.shapes.items()}
    try:
        given(metadata, shapes, source=f"{label}: {key}.profile.shapes")
    except ProfileError as err:
        raise ConfigError(str(err), hint="set the shapes requests have, batch dimension "
                                         "included; `mlship inspect MODEL` shows the inputs") \
            from None


def _inspect_local(model: ModelFile, key: str, config_path: Path,
                   warn: Warn) -> ModelSignature:
    path = Path(model.source)
    if not path.is_absolute():
        path = config_path.parent / path
    if not path.exists():
        raise ConfigError(f"{config_path}: {key}.source: {model.source!r} is invalid: no such "
                          f"file ({path})")
    shapes = {name: tuple(dims) for name, dims in model.profile.shapes.items()} or None
    signature = inspect_model(path, shapes=shapes)
    check_profile(model, signature, key, str(config_path))
    recorded = model.sha256
    if recorded and recorded != signature.sha256:
        warn(f"{path} changed since init (sha256 {signature.sha256[:12]}, recorded "
             f"{recorded[:12]}); rendering the file as it is now (`mlship init --refresh` "
             "records it)")
    return signature


def check_pipelines(config: MlshipConfig, signatures: Mapping[str, ModelSignature], *,
                    label: str) -> None:
    """Pipelines against the models' signatures, with the runtime's own check (datatypes,
    ranks, fixed dimensions, every input fed), so a mismatch fails at render, not at start."""
    from mlship_runtime.pipeline import plan_pipeline
    from mlship_runtime.repository import RepositoryError

    repository = parsed_repository(config.served_models, config.pipelines)
    served = {name: _V2Signature.of(signature) for name, signature in signatures.items()}
    for spec in repository.pipelines:
        if not all(step.model in served for step in spec.steps):
            continue  # a remote model's signature is known only when the runtime loads it
        try:
            plan_pipeline(spec, served, SOURCE)
        except RepositoryError as err:
            raise ConfigError(f"{label}: {err.where}: {err.reason}",
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


def v2_inputs(signature: ModelSignature) -> list[dict[str, Any]]:
    """The inputs as the runtime's V2 metadata lists them (datatype, shape with -1)."""
    return [_v2(spec) for spec in signature.inputs]


def _v2(spec: TensorSpec) -> dict[str, Any]:
    from mlship_runtime.signature import V2_TO_NUMPY

    if not spec.is_tensor:
        return {"name": spec.name, "datatype": "BYTES", "shape": [-1]}
    by_numpy = {str(dtype): v2 for v2, dtype in V2_TO_NUMPY.items() if v2 != "BYTES"}
    datatype = "BYTES" if spec.type.dtype == "string" else by_numpy.get(spec.type.dtype or "",
                                                                        "BYTES")
    shape = [-1 if dim.size is None else dim.size for dim in spec.type.shape or ()]
    return {"name": spec.name, "datatype": datatype, "shape": shape}
