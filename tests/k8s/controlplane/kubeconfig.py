"""Kubeconfig files for the control plane's components, users and ServiceAccounts."""

from __future__ import annotations

import json
from pathlib import Path

from .certs import CertPair


def write_kubeconfig(
    path: Path,
    server: str,
    ca_file: Path,
    user: str,
    *,
    client: CertPair | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """A kubeconfig (JSON, which is YAML) for one user on this server."""
    credentials: dict[str, str] = {}
    if client is not None:
        credentials = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    if token is not None:
        credentials = {"token": token}
    context: dict[str, str] = {"cluster": "mlship-test", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mlship-test",
                      "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "mlship-test", "context": context}],
        "current-context": "mlship-test",
        "preferences": {},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path
