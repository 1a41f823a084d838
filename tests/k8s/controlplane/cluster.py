"""What tests do in the running cluster through its API, as the admin user: wait for nodes and
rollouts, create namespaces, install CRDs, grant RBAC, list pods.

:class:`Cluster` adds these to :class:`~controlplane.rest.RestClient`; :class:`ControlPlane`
adds the processes (and :meth:`Cluster.check_alive`, which the waits call, then checks them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import rbac
from .processes import wait_for
from .rest import RestClient

CRD_DIR = Path(__file__).resolve().parent.parent / "crds"


class Cluster(RestClient):
    """Helpers on the API of the cluster (see the module docstring)."""

    def check_alive(self) -> None:
        """Raise if what serves the API has died; waits call it so they fail at once then.

        Nothing to check here: :class:`ControlPlane` checks its processes.
        """

    # -- nodes, namespaces, CRDs --

    def wait_node_ready(self, name: str, timeout: float = 60) -> None:
        def ready() -> bool:
            self.check_alive()
            node = self.get(f"/api/v1/nodes/{name}") or {}
            return any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in node.get("status", {}).get("conditions", []))

        wait_for(ready, timeout, f"node {name} to be Ready")

    def create_namespace(
        self, name: str, labels: Mapping[str, str] | None = None, *, pod_security: str | None = None
    ) -> dict[str, Any]:
        """Create (apply) a namespace; ``pod_security`` = restricted|baseline|privileged enforces
        that PodSecurity level."""
        all_labels = dict(labels or {})
        if pod_security:
            all_labels["pod-security.kubernetes.io/enforce"] = pod_security
            all_labels["pod-security.kubernetes.io/enforce-version"] = "latest"
        return self.apply({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": name, "labels": all_labels}})

    def install_crds(self, directory: Path = CRD_DIR, timeout: float = 60) -> list[str]:
        """Apply every CRD in ``directory`` and wait until each is Established."""
        import yaml

        names: list[str] = []
        for path in sorted(directory.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self.apply(doc, field_manager="mlship-test-crds")
                    names.append(doc["metadata"]["name"])

        def established(name: str) -> bool:
            crd = self.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            # A CRD just created can have ``status: {conditions: null}``: not Established yet.
            conditions = ((crd or {}).get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        for name in names:
            wait_for(lambda n=name: established(n), timeout, f"CRD {name} to be Established")
        self.forget_discovery()
        return names

    # -- RBAC --

    def grant(
        self,
        user: str,
        rules: Sequence[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        name: str | None = None,
        kind: str = "User",
    ) -> None:
        """A Role (in ``namespace``) or ClusterRole with ``rules``, bound to ``user``.

        ``kind`` is User, Group or ServiceAccount (then ``user`` is "namespace:name").
        """
        role_name = name or f"mlship-test-{user.replace(':', '-')}"
        role = rbac.role(role_name, rules, namespace)
        self.apply(role)
        self.apply(rbac.binding(user, role["kind"], role_name, namespace, kind))

    def bind_cluster_role(
        self, user: str, cluster_role: str, *, namespace: str | None = None, kind: str = "User"
    ) -> None:
        """Bind an existing ClusterRole (view, edit, admin, ...) in a namespace or cluster-wide."""
        self.apply(rbac.binding(user, "ClusterRole", cluster_role, namespace, kind))

    # -- waiting on workloads --

    def wait_rollout(self, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until Deployment namespace/name is fully rolled out and available."""

        def done() -> dict[str, Any] | None:
            self.check_alive()
            deployment = self.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            if deployment is None:
                return None
            spec, status = deployment["spec"], deployment.get("status", {})
            want = spec.get("replicas", 1)
            if (status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
                    and status.get("updatedReplicas", 0) == want
                    and status.get("replicas", 0) == want
                    and status.get("availableReplicas", 0) == want
                    and status.get("readyReplicas", 0) == want):
                return deployment
            return None

        return wait_for(done, timeout, f"deployment {namespace}/{name} to roll out", 0.2)

    def pods(self, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        _, listing = self.request("GET", f"/api/v1/namespaces/{namespace}/pods", query=query)
        return list(listing.get("items", []))
