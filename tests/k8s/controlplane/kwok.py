"""kwok: fake nodes whose pods go Running/Ready, or fail as a test asks, with nothing run.

``tests/k8s/kwok-stages.yaml`` holds the pod lifecycle stages; the annotations below select a
failure. A real node (kubelet, kube-proxy, containerd) would sit beside this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

KWOK_CONFIG = Path(__file__).resolve().parent.parent / "kwok-stages.yaml"

#: Pod annotation that kwok-stages.yaml turns into a failure; values are the ``FAIL_*`` below.
FAILURE_ANNOTATION = "mlship.test/pod-failure"
FAIL_CRASH_LOOP = "CrashLoopBackOff"
FAIL_IMAGE_PULL = "ImagePullBackOff"
FAIL_ERR_IMAGE_PULL = "ErrImagePull"
FAIL_NOT_READY = "NotReady"
#: Exit code / reason shown in lastState.terminated of a CrashLoopBackOff pod (e.g. "OOMKilled").
EXIT_CODE_ANNOTATION = "mlship.test/exit-code"
EXIT_REASON_ANNOTATION = "mlship.test/exit-reason"
#: Node annotation: kwok manages only the nodes that carry it (``--manage-all-nodes=false``).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def kwok_args(kubeconfig: Path, verbosity: int) -> list[str]:
    """kwok's command line (after the binary)."""
    return [
        f"--kubeconfig={kubeconfig}", f"--config={KWOK_CONFIG}",
        "--manage-all-nodes=false", f"--v={'INFO' if verbosity > 1 else 'WARN'}",
    ]  # fmt: skip


def fake_node(
    name: str,
    resources: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    taints: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """The Node object of a kwok-managed node with ``resources`` allocatable."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "type": "kwok", **(labels or {})},
        },
        "spec": {"taints": [dict(taint) for taint in taints]} if taints else {},
        "status": {"allocatable": dict(resources), "capacity": dict(resources)},
    }
