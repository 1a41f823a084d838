"""What an image is: the models baked into or served by it, and the reference it is known by.

Computed once, here, from the config and the models' facts: the tag ``build`` applies, the
reference the Deployment runs and the label the image carries all come from ``image_identity``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlship.config.schema import MlshipConfig
    from mlship.config.sections import ModelFile
    from mlship.model.inspect import ModelSignature


MODEL_DIR = "/models"


UNKNOWN_MODEL_BYTES = 100 * 10**6


@dataclass(frozen=True)
class ModelFacts:
    """What rendering needs from the model; from inspection, or from init's record for remote
    models that cannot be inspected at render time."""

    file_name: str
    total_bytes: int
    sha256: str

    @classmethod
    def of(cls, model: ModelFile, signature: ModelSignature | None) -> ModelFacts:
        if signature is not None:
            return cls(PurePosixPath(signature.path).name, signature.total_bytes,
                       signature.sha256)
        return cls(PurePosixPath(model.source).name, model.size_bytes or UNKNOWN_MODEL_BYTES,
                   model.sha256 or "unknown")


def served_facts(config: MlshipConfig, signature: ModelSignature | None,
                 extras: Mapping[str, ModelSignature] | None = None) -> dict[str, ModelFacts]:
    """Facts of every served model by V2 name: ``signature`` is the main model's, ``extras``
    those of ``models`` (local files only; remote ones use init's record)."""
    signatures = {config.name: signature, **(extras or {})}
    return {name: ModelFacts.of(model, signatures.get(name))
            for name, model in config.served_models}


def models_sha256(config: MlshipConfig, facts: Mapping[str, ModelFacts]) -> str:
    """What the image tag and label identify: the model's sha256, or for several models a
    sha256 over every name and model sha256, so that any model's change is a new tag."""
    if not config.models:
        return facts[config.name].sha256
    listing = "".join(f"{name} {facts[name].sha256}\n" for name, _ in config.served_models)
    return hashlib.sha256(listing.encode()).hexdigest()


def image_reference(config: MlshipConfig, model_sha256: str) -> str:
    repository = config.image.repository or config.name
    if config.image.registry:
        repository = f"{config.image.registry.rstrip('/')}/{repository}"
    if config.image.digest:
        return f"{repository}@{config.image.digest}"
    return f"{repository}:{image_tag(config, model_sha256)}"


def image_tag(config: MlshipConfig, model_sha256: str) -> str:
    if config.image.tag_policy == "fixed" and config.image.tag:
        return config.image.tag
    if config.image.tag_policy == "version":
        return config.model.version
    return f"model-{model_sha256[:12]}"
