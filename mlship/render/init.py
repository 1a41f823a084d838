"""``mlship init``: a commented ``mlship.yaml`` prefilled from the model's inspection.

The file is rendered from ``templates/mlship.yaml.jinja`` so comments survive; the result is
validated before it is written, so init can never produce a file that render would refuse.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from mlship.config.grammar import dns_label
from mlship.config.quantities import human_bytes, mebibytes
from mlship.errors import BadInputError

if TYPE_CHECKING:
    from mlship.model.facts import ModelSignature
    from mlship.model.probe import Probe

# Requests cover the estimate with 25 % headroom; limits allow a 2x burst (batching).
MEMORY_HEADROOM = 1.25
MEMORY_LIMIT_FACTOR = 2
_MEMORY_STEP_MIB = 64
_FALLBACK_MEMORY = 256 * 2**20


def init_text(config_path: Path, model: Path | None, signature: ModelSignature | None,
              name: str | None = None, probe: Probe | None = None,
              sample: Path | None = None) -> str:
    """The YAML text of a new config at ``config_path`` for ``model``; ``probe`` is the
    model's run at its input profile (its shapes are written, its memory sizes the pod)."""
    import yaml

    from mlship.config.load import validate_config
    from mlship.render.jinja import render_template

    if name is not None and dns_label(name) is not None:
        # Checked before rendering: the name is printed into comments of the file, too.
        raise BadInputError(f"--name: {name!r} is invalid: {dns_label(name)}")
    estimate = probe.memory_estimate_bytes if probe else \
        signature.memory_estimate_bytes if signature else _FALLBACK_MEMORY
    profile = probe.profile if probe else None
    request_mib = int(mebibytes(estimate * MEMORY_HEADROOM, step=_MEMORY_STEP_MIB)[:-2])
    values = {
        "name": name or dns_name(model.stem if model else config_path.resolve().parent.name),
        "source": _relative_source(config_path, model) if model else "model.onnx",
        "sha256": signature.sha256 if signature else None,
        "size_bytes": signature.total_bytes if signature else "null",
        "size_human": human_bytes(signature.total_bytes) if signature else "unknown",
        "memory_human": human_bytes(estimate),
        "memory_how": (f"measured running the model at batch {probe.batch}" if probe else
                       "estimated from its shapes"),
        "profile_shapes": {name: list(dims) for name, dims in profile.shapes.items()}
        if profile else {},
        "profile_note": profile.source if profile else (
            "none found: the model ran at no derived profile; set them" if probe else
            "not run: set them"),
        "sample": _relative_source(config_path, sample) if sample else None,
        "memory_request": f"{request_mib}Mi",
        "memory_limit": f"{request_mib * MEMORY_LIMIT_FACTOR}Mi",
        "dynamic_batch": bool(signature and signature.dynamic_batch),
        "provider": "cpu",
    }
    text = render_template("mlship.yaml.jinja", **values)
    validate_config(yaml.safe_load(text), label=str(config_path))  # template values are quoted
    return text


def dns_name(text: str) -> str:
    """'My_Model.v2' -> 'my-model-v2': the nearest DNS-1123 label starting with a letter."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if not name or not name[0].isalpha():
        name = f"model-{name}".rstrip("-")
    return name[:63].rstrip("-")


def _relative_source(config_path: Path, model: Path) -> str:
    base = config_path.resolve().parent
    try:
        return Path(os.path.relpath(model.resolve(), base)).as_posix()
    except ValueError as err:  # another drive on Windows
        raise BadInputError(f"{model}: cannot be referenced from {config_path}") from err
