"""A real Kubernetes control plane on loopback for mlship's tests.

Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok — the binaries
``.ci/install-k8s.sh`` builds from Go modules into ``$MLSHIP_K8S_BIN`` — on free 127.0.0.1 ports
in a temporary directory, with certificates made by the ``openssl`` CLI. Server-side apply,
field managers, validation, dry run, PodSecurity admission, RBAC, Deployments and ReplicaSets
are the real ones; nodes are kwok's fakes, and pods on them go Running/Ready (or fail as a test
asks, see ``tests/k8s/kwok-stages.yaml``) without any container being run.

    from controlplane import ControlPlane      # tests/k8s is on sys.path (pyproject's pytest)

    with ControlPlane() as cp:                 # start() ... stop()
        cp.kubeconfig                          # admin (system:masters) kubeconfig, a Path
        cp.apply({...Deployment...})           # server-side apply as field manager "mlship-test"
        cp.wait_rollout("default", "web")
        viewer = cp.create_user("viewer")      # a kubeconfig with no rights at all
        cp.bind_cluster_role("viewer", "view", namespace="default")

Nothing here ever dials a non-loopback address. Pod and Service IPs (10.244.0.0/16,
10.96.0.0/16) are fake: never connect to them, nor use pods/proxy or services/proxy.

``python tests/k8s/controlplane --check`` starts one, exercises it and prints timings;
``--serve`` starts one and waits (its kubeconfig path is printed) until Ctrl-C.
Only the standard library is needed, plus PyYAML to load the CRDs and, for ``client()`` and
``--check``, the ``kubernetes`` package.

The modules, each importing only those above it:

- ``errors``: :class:`ControlPlaneError`, the base of every error here
- ``binaries``: where the binaries are, :func:`binaries_available`
- ``processes``: :class:`Component` (one supervised process), :func:`free_ports`, :func:`wait_for`
- ``certs``: :class:`CertAuthority` (openssl CLI), :class:`CertPair`
- ``kubeconfig``: :func:`write_kubeconfig`
- ``flags``: the etcd, kube-apiserver, kube-controller-manager and kube-scheduler command lines
- ``kwok``: kwok's command line, fake Node objects, the pod-failure annotations
- ``rbac``: Role/ClusterRole and binding objects
- ``rest``: :class:`RestClient` (standard-library HTTPS, discovery, server-side apply), ApiError
- ``cluster``: :class:`Cluster`, a RestClient plus the waits, namespaces, CRDs and RBAC helpers
- ``plane``: :class:`ControlPlane`, a Cluster that starts and stops the processes behind it
- ``selfcheck``: ``--check`` / ``--serve`` (``__main__`` runs it)

A real node (kubelet, kube-proxy, containerd, CNI) would be a ``node`` module beside ``kwok``,
used by ``plane`` the way it uses ``kwok``.
"""

from __future__ import annotations

from .binaries import BINARIES, DEFAULT_BIN_DIR, bin_dir_default, binaries_available
from .certs import CertAuthority, CertPair
from .cluster import CRD_DIR, Cluster
from .errors import ControlPlaneError
from .flags import SERVICE_ACCOUNT_ISSUER, SERVICE_CIDR, UNUSED_CONTROLLERS
from .kubeconfig import write_kubeconfig
from .kwok import (
    EXIT_CODE_ANNOTATION,
    EXIT_REASON_ANNOTATION,
    FAIL_CRASH_LOOP,
    FAIL_ERR_IMAGE_PULL,
    FAIL_IMAGE_PULL,
    FAIL_NOT_READY,
    FAILURE_ANNOTATION,
    KWOK_CONFIG,
    KWOK_NODE_ANNOTATION,
)
from .plane import ControlPlane
from .processes import Component, ComponentExited, free_ports, wait_for
from .rest import ApiError, RestClient

__all__ = [
    "BINARIES",
    "CRD_DIR",
    "DEFAULT_BIN_DIR",
    "EXIT_CODE_ANNOTATION",
    "EXIT_REASON_ANNOTATION",
    "FAILURE_ANNOTATION",
    "FAIL_CRASH_LOOP",
    "FAIL_ERR_IMAGE_PULL",
    "FAIL_IMAGE_PULL",
    "FAIL_NOT_READY",
    "KWOK_CONFIG",
    "KWOK_NODE_ANNOTATION",
    "SERVICE_ACCOUNT_ISSUER",
    "SERVICE_CIDR",
    "UNUSED_CONTROLLERS",
    "ApiError",
    "CertAuthority",
    "CertPair",
    "Cluster",
    "Component",
    "ComponentExited",
    "ControlPlane",
    "ControlPlaneError",
    "RestClient",
    "bin_dir_default",
    "binaries_available",
    "free_ports",
    "wait_for",
    "write_kubeconfig",
]
