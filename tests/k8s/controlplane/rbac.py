"""RBAC objects: a Role or ClusterRole with rules, and its binding to a user, group or
ServiceAccount (``kind`` ServiceAccount takes ``user`` as "namespace:name")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

RBAC_GROUP = "rbac.authorization.k8s.io"


def role(name: str, rules: Sequence[Mapping[str, Any]], namespace: str | None) -> dict[str, Any]:
    """A Role in ``namespace``, or a ClusterRole when it is None."""
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "ClusterRole" if namespace is None else "Role",
            "metadata": meta, "rules": [dict(rule) for rule in rules]}


def binding(
    user: str, role_kind: str, role_name: str, namespace: str | None, kind: str
) -> dict[str, Any]:
    """A RoleBinding in ``namespace`` (ClusterRoleBinding when None) of the role to ``user``."""
    subject: dict[str, str] = {"kind": kind, "name": user}
    if kind == "ServiceAccount":
        subject["namespace"], subject["name"] = user.split(":", 1)
    else:
        subject["apiGroup"] = RBAC_GROUP
    binding_name = f"mlship-test-{user.replace(':', '-')}-{role_name}"
    meta: dict[str, Any] = {"name": binding_name}
    binding_kind = "ClusterRoleBinding" if namespace is None else "RoleBinding"
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": binding_kind,
            "metadata": meta, "subjects": [subject],
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": role_kind, "name": role_name}}
