"""What an image is: the models baked into or served by it, and the reference it is known by.

Computed once, here, from the config and the models' facts: the tag ``build`` applies, the
reference the Deployment runs and the label the image carries all come from ``image_identity``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlship.config.schema import MlshipConfig
    from mlship.config.sections import ModelFile
    from mlship.model.facts import ModelSignature




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


@dataclass(frozen=True)
class ImageIdentity:
    """The image a config describes: where it lives, its tag, its digest once pushed, and the
    models it serves. The Deployment runs ``reference``; ``build`` tags with ``tags``; the
    image's ``dev.mlship.model.sha256`` label is ``models_sha256``."""

    repository: str  # [registry/]path
    tag: str
    digest: str | None
    models_sha256: str

    @property
    def reference(self) -> str:
        """What pods run: pinned by digest once known, else the immutable-by-policy tag."""
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag}"

    def tags(self, revision: str | None, overrides: Sequence[str] = ()) -> list[str]:
        """What ``build`` applies: the config's tag and the git short sha, or the --tag
        overrides (a bare tag goes on this repository, a full reference is taken as is)."""
        if overrides:
            return [tag if ("/" in tag or ":" in tag) else f"{self.repository}:{tag}"
                    for tag in overrides]
        tags = [f"{self.repository}:{self.tag}"]
        if revision:
            tags.append(f"{self.repository}:{revision[:12]}")
        return tags


def image_identity(config: MlshipConfig, facts: Mapping[str, ModelFacts]) -> ImageIdentity:
    """The one place the image's name, tag and model digest are decided."""
    image = config.image
    repository = image.repository or config.name
    if image.registry:
        repository = f"{image.registry.rstrip('/')}/{repository}"
    models = models_sha256(config, facts)
    if image.tag_policy == "fixed" and image.tag:
        tag = image.tag
    elif image.tag_policy == "version":
        tag = config.model.version
    else:
        tag = f"model-{models[:12]}"
    return ImageIdentity(repository, tag, image.digest, models)
