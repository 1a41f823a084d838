"""Options every cluster command shares (deploy, diff, rollout ...), defined once.

Typer reads an option's settings from the default value, so one ``OptionInfo`` can serve as
the default of many commands; this keeps names, help and environment variables identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from mlship.kube import Cluster

KUBECONFIG = typer.Option(None, "--kubeconfig", help="Kubeconfig file (default: KUBECONFIG, "
                          "its files merged as kubectl merges them, then ~/.kube/config, then "
                          "in-cluster).", show_default=False)
CONTEXT = typer.Option(None, "--context", help="Kubeconfig context (default: its "
                       "current-context).", show_default=False)
NAMESPACE = typer.Option(None, "--namespace", "-n", help="Namespace (default: mlship.yaml's "
                         "namespace.name).", show_default=False)
TIMEOUT = typer.Option(300.0, "--timeout", min=1.0, help="Seconds to wait before giving up "
                       "(exit 9).")
CONFIG = typer.Option(Path("mlship.yaml"), "--config", "-c", help="Path of mlship.yaml.")


def connect(kubeconfig: Path | None, context: str | None) -> Cluster:
    """Connect with the shared options; ClusterError (exit 7) explains any failure."""
    from mlship.kube import connect as kube_connect

    return kube_connect(kubeconfig, context)
