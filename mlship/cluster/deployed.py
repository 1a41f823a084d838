"""What is deployed, as mlship last put it there: the annotation ``mlship.dev/deployed`` on the
Deployment, the digest-pinned image and which command (deploy, promote, undo) set it when.

``mlship deploy`` and ``mlship diff`` without ``--image`` start from it: when mlship.yaml's
image names a tag and that tag still resolves to the recorded digest, the recorded (pinned)
reference is what they send, so a promote of ``repo@sha256:...`` is not "changed back" to
``repo:tag`` (a new template: every pod rolled for nothing). A tag that moved on is a real
change and is deployed as mlship.yaml says. The annotation is mlship's bookkeeping: it is set
by a patch after the fact, never rendered, and ``mlship diff`` hides it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mlship.config.quantities import parse_image_ref
from mlship.kube import FIELD_MANAGER

if TYPE_CHECKING:
    from mlship.kube import Cluster

DEPLOYED = "mlship.dev/deployed"


@dataclass(frozen=True)
class Deployed:
    image: str  # the reference the pod template names (a tag, or repo@sha256:...)
    digest: str | None  # what it was when recorded (None: not asked, --skip-checks)
    action: str  # deploy | promote | undo
    at: str

    @property
    def pinned(self) -> str:
        return pinned(self.image, self.digest)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def pinned(image: str, digest: str | None) -> str:
    """``image`` by its digest (``registry/path@sha256:...``, as render writes a pinned one)."""
    ref = parse_image_ref(image)
    if ref.digest or not digest:
        return image
    return f"{ref.repository}@{digest}"


def recorded(deployment: dict[str, Any] | None) -> Deployed | None:
    """The record on a live Deployment; None when there is none (or it is unreadable)."""
    text = (((deployment or {}).get("metadata") or {}).get("annotations") or {}).get(DEPLOYED)
    try:
        raw = json.loads(text) if text else None
        return Deployed(**raw) if isinstance(raw, dict) else None
    except (TypeError, ValueError):
        return None


def record(cluster: Cluster, namespace: str, name: str, image: str, digest: str | None,
           action: str, *, field_manager: str = FIELD_MANAGER) -> Deployed:
    """Note on Deployment ``namespace/name`` that ``image`` (``digest``) is deployed (metadata
    only: the pods and the generation stay as they are)."""
    if digest is None:
        try:
            digest = parse_image_ref(image).digest
        except ValueError:
            digest = None
    entry = Deployed(image, digest, action,
                     datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    cluster.patch("apps/v1", "Deployment", name, namespace,
                  {"metadata": {"annotations": {
                      DEPLOYED: json.dumps(entry.to_dict(), separators=(",", ":"))}}},
                  field_manager=field_manager)
    return entry


def default_image(configured: str, entry: Deployed | None,
                  resolve: Callable[[str], str | None]) -> str | None:
    """The recorded image to send instead of mlship.yaml's ``configured`` one, or None.

    Only when the Deployment runs a pinned reference (its template names the digest),
    ``configured`` is a tag (a digest in mlship.yaml is the user's pin) of the same
    repository, and ``resolve`` (the registry) says that tag is the recorded digest.
    """
    if entry is None or entry.image == configured:
        return None
    try:
        mine, theirs = parse_image_ref(configured), parse_image_ref(entry.image)
    except ValueError:  # the record is the cluster's to keep: not ours to trust
        return None
    if mine.digest or not theirs.digest or mine.repository != theirs.repository:
        return None
    return entry.image if resolve(configured) == theirs.digest else None
