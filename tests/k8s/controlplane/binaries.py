"""Where the Kubernetes binaries are, and whether all the control plane needs is there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEFAULT_BIN_DIR = Path("/var/cache/mlship/k8s/bin")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def bin_dir_default() -> Path:
    return Path(os.environ.get("MLSHIP_K8S_BIN") or DEFAULT_BIN_DIR)


def binaries_available(bin_dir: Path | None = None) -> str | None:
    """None when every binary and ``openssl`` is there, else what is missing (for a skip)."""
    directory = bin_dir or bin_dir_default()
    missing = [name for name in BINARIES if not os.access(directory / name, os.X_OK)]
    if missing:
        return f"missing in {directory}: {', '.join(missing)} (bash .ci/install-k8s.sh)"
    if shutil.which("openssl") is None:
        return "openssl not found"
    return None
