"""The paths the image and the pod own, and the rule a user's mount path must follow.

Render mounts its volumes at these paths (mlship.render.storage, mlship.render.drift) and the
image keeps its virtualenv and model under them, so mlship.yaml may not mount anything at, above
or below one of them: a Secret at ``/opt`` would hide the virtualenv, one at ``/tmp/x`` would sit
in the scratch volume, ``/`` would hide everything.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

VENV_DIR = "/opt/venv"
MODEL_DIR = "/models"  # where the image bakes its models
TMP_DIR = "/tmp"
MODEL_CACHE_DIR = "/var/cache/mlship/models"
AWS_CREDENTIALS_DIR = "/var/run/secrets/mlship/aws"
GCP_CREDENTIALS_DIR = "/var/run/secrets/mlship/gcp"
TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
DRIFT_DIR = "/etc/mlship/drift"

# The image's and the pod's own paths (/var/run is /run in the Debian-based images).
RUNTIME_PATHS = (VENV_DIR, TMP_DIR, MODEL_CACHE_DIR, AWS_CREDENTIALS_DIR, GCP_CREDENTIALS_DIR,
                 TOKEN_DIR, DRIFT_DIR,
                 "/run/secrets/mlship", "/run/secrets/eks.amazonaws.com",
                 "/var/run/secrets/kubernetes.io", "/run/secrets/kubernetes.io")
# What the operating system and Python need; a mount there breaks the container.
SYSTEM_PATHS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/usr", "/proc", "/sys", "/dev",
                "/boot")
_SEGMENT = re.compile(r"[A-Za-z0-9._@+-]+")
MOUNT_PATH_GRAMMAR = ("an absolute, normalized path (no '..', '.', '//' or trailing '/') "
                      "of letters, digits and . _ @ + -")


def overlaps(first: str, second: str) -> bool:
    """One path is the other or contains it."""
    a, b = PurePosixPath(first), PurePosixPath(second)
    return a == b or a in b.parents or b in a.parents


def mount_path_problem(path: str, reserved: tuple[str, ...]) -> str | None:
    """Why ``path`` cannot be a mount path, or None."""
    parts = path.split("/")
    if not path.startswith("/") or path == "/" or path.endswith("/") or \
            any(part in ("", ".", "..") or not _SEGMENT.fullmatch(part) for part in parts[1:]):
        if path == "/":
            return "cannot be /: it would hide the whole image"
        return f"must be {MOUNT_PATH_GRAMMAR}"
    taken = next((owned for owned in reserved if overlaps(path, owned)), None)
    if taken is not None:
        return (f"overlaps {taken}, which the image or the pod uses; mount somewhere else, "
                "e.g. /var/run/secrets/NAME or /data")
    return None


def secret_mount_path(path: str) -> str | None:
    return mount_path_problem(path, (*RUNTIME_PATHS, *SYSTEM_PATHS, MODEL_DIR))


def volume_mount_path(path: str) -> str | None:
    """The model volume may take /models (its default): nothing is baked there then."""
    return mount_path_problem(path, (*RUNTIME_PATHS, *SYSTEM_PATHS))
