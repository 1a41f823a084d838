"""The control plane's self-test and command line: ``--check`` starts one, exercises it (apply,
rollout, conflicts, dry run, PodSecurity, RBAC, failing pods, scheduling, CRDs) and prints
timings; ``--serve`` starts one and waits until Ctrl-C or SIGTERM.

    python tests/k8s/controlplane --check      # or: PYTHONPATH=tests/k8s python -m controlplane

``--check`` needs the ``kubernetes`` package.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .binaries import DEFAULT_BIN_DIR, binaries_available
from .kwok import FAIL_CRASH_LOOP, FAIL_IMAGE_PULL, FAIL_NOT_READY, FAILURE_ANNOTATION
from .plane import ControlPlane
from .processes import wait_for

DESCRIPTION = "A real Kubernetes control plane on loopback for mlship's tests."


def _deployment(name: str, namespace: str, image: str, replicas: int = 2,
                annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": dict(annotations or {})},
                "spec": {
                    "containers": [{
                        "name": "server", "image": image,
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "runAsUser": 1000, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                    }],
                },
            },
        },
    }  # fmt: skip


def _expect_status(status: int, call: Callable[[], object], what: str, contains: str = "") -> None:
    """``call()`` must fail with HTTP ``status`` (an ApiError or a kubernetes ApiException)."""
    try:
        call()
    except Exception as error:
        got = getattr(error, "status", None)
        text = str(getattr(error, "body", "")) + str(error)
        if got != status or contains not in text:
            raise AssertionError(f"{what}: expected HTTP {status} {contains!r}, got {error!r}") \
                from error
        return
    raise AssertionError(f"{what}: expected HTTP {status}, but it was accepted")


def _check(cp: ControlPlane) -> None:
    from kubernetes import client as k8s
    from kubernetes import dynamic
    from kubernetes.client.exceptions import ApiException

    def step(name: str, since: float) -> float:
        now = time.monotonic()
        print(f"  {name:<52} {now - since:6.2f}s", flush=True)
        return now

    t = time.monotonic()
    api = cp.client()
    dyn = dynamic.DynamicClient(api)
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    version = k8s.VersionApi(api).get_code()
    t = step(f"connected (server {version.git_version}) and discovery", t)

    cp.create_namespace("check")
    body = _deployment("web", "check", "registry.local/web:1", replicas=3)
    applied = deployments.server_side_apply(body=body, namespace="check",
                                            field_manager="mlship", force_conflicts=True)
    managers = [m.manager for m in applied.metadata.managedFields]
    assert "mlship" in managers, managers
    cp.wait_rollout("check", "web")
    pods = cp.pods("check", "app=web")
    assert len(pods) == 3, len(pods)
    assert all(p["status"]["phase"] == "Running" for p in pods)
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in pods)
    t = step("SSA Deployment (3 replicas) available, pods Ready", t)

    body["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.local/web:2"
    deployments.server_side_apply(body=body, namespace="check", field_manager="mlship",
                                  force_conflicts=True)
    cp.wait_rollout("check", "web")
    images = {p["spec"]["containers"][0]["image"] for p in cp.pods("check", "app=web")
              if "deletionTimestamp" not in p["metadata"]}
    assert images == {"registry.local/web:2"}, images
    t = step("rolling update to a new image completed", t)

    conflict = dict(body, spec={**body["spec"], "replicas": 5})
    _expect_status(409, lambda: deployments.server_side_apply(
        body=conflict, namespace="check", field_manager="someone-else"), "conflicting apply")
    t = step("SSA conflict with another field manager -> 409", t)

    dry = dict(body, metadata={"name": "dry", "namespace": "check"})
    result = cp.apply(dry, field_manager="mlship", dry_run=True)
    assert result["metadata"]["name"] == "dry"
    assert cp.get("/apis/apps/v1/namespaces/check/deployments/dry") is None
    invalid = dict(body, metadata={"name": "Bad_Name", "namespace": "check"})
    _expect_status(422, lambda: cp.apply(invalid, dry_run=True), "invalid name, dry run")
    t = step("server-side dry run (valid: not persisted; invalid: 422)", t)

    cp.create_namespace("locked", pod_security="restricted")
    privileged = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root", "namespace": "locked"},
        "spec": {"containers": [{"name": "c", "image": "x",
                                 "securityContext": {"privileged": True}}]},
    }  # fmt: skip
    _expect_status(403, lambda: cp.apply(privileged), "privileged pod, restricted namespace",
                   contains="PodSecurity")
    cp.apply(_deployment("ok", "locked", "registry.local/web:1", replicas=1))
    cp.wait_rollout("locked", "ok")
    t = step("PodSecurity restricted: privileged pod 403, compliant one runs", t)

    viewer = ControlPlane.client_for(cp.create_user("viewer"))
    core = k8s.CoreV1Api(viewer)
    _expect_status(403, lambda: core.list_namespaced_pod("check"), "list pods, no rights")
    cp.bind_cluster_role("viewer", "view", namespace="check")
    # RBAC changes reach the authorizer through an informer: a moment, not at once.
    granted = wait_for(lambda: core.list_namespaced_pod("check").items, 10, "view rights",
                       retry_on=(ApiException,))
    assert len(granted) == 3, len(granted)
    _expect_status(403, lambda: k8s.AppsV1Api(viewer).delete_namespaced_deployment(
        "web", "check"), "delete deployment, view rights")
    sa_core = k8s.CoreV1Api(ControlPlane.client_for(
        cp.service_account_kubeconfig("check", "deployer")))
    _expect_status(403, lambda: sa_core.list_namespaced_config_map("check"),
                   "list configmaps, fresh ServiceAccount")
    cp.grant("check:deployer", [{"apiGroups": [""], "resources": ["configmaps"],
                                 "verbs": ["list"]}], namespace="check", kind="ServiceAccount")
    wait_for(lambda: sa_core.list_namespaced_config_map("check").items, 10, "SA rights",
             retry_on=(ApiException,))
    t = step("RBAC: user + ServiceAccount token 403 until granted", t)

    for failure, phase in ((FAIL_CRASH_LOOP, "Running"), (FAIL_IMAGE_PULL, "Pending"),
                           (FAIL_NOT_READY, "Running")):
        name = f"fail-{failure.lower()}"
        cp.apply(_deployment(name, "check", "registry.local/broken:1", replicas=1,
                             annotations={FAILURE_ANNOTATION: failure}))

        def failed(name: str = name, failure: str = failure, phase: str = phase) -> bool:
            for pod in cp.pods("check", f"app={name}"):
                statuses = pod["status"].get("containerStatuses") or [{}]
                state = statuses[0].get("state", {})
                reason = state.get("waiting", {}).get("reason")
                if pod["status"].get("phase") != phase:
                    continue
                if failure == FAIL_NOT_READY and "running" in state:
                    return not statuses[0]["ready"]
                if reason == failure and (failure != FAIL_CRASH_LOOP
                                          or statuses[0]["restartCount"] >= 2):
                    return True
            return False

        wait_for(failed, 30, f"a {failure} pod")
        deployment = cp.get(f"/apis/apps/v1/namespaces/check/deployments/{name}") or {}
        assert not deployment.get("status", {}).get("availableReplicas"), deployment["status"]
    t = step("failing pods: CrashLoopBackOff, ImagePullBackOff, NotReady", t)

    huge = _deployment("huge", "check", "registry.local/web:1", replicas=1)
    huge["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "500"
    cp.apply(huge)

    def unschedulable() -> bool:
        for pod in cp.pods("check", "app=huge"):
            for condition in pod["status"].get("conditions", []):
                if condition["type"] == "PodScheduled" and condition.get("reason") == \
                        "Unschedulable" and "Insufficient cpu" in condition.get("message", ""):
                    return True
        return False

    wait_for(unschedulable, 30, "an Unschedulable (Insufficient cpu) pod")
    t = step("scheduler: Insufficient cpu -> Unschedulable", t)

    for crd in ("virtualservices.networking.istio.io", "httproutes.gateway.networking.k8s.io",
                "servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"):
        assert cp.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"), crd
    cp.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
              "metadata": {"name": "web", "namespace": "check"},
              "spec": {"parentRefs": [{"name": "gw"}],
                       "rules": [{"backendRefs": [{"name": "web", "port": 80, "weight": 90},
                                                  {"name": "web-canary", "port": 80,
                                                   "weight": 10}]}]}})
    cp.apply({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
              "metadata": {"name": "web", "namespace": "check"},
              "spec": {"hosts": ["web"],
                       "http": [{"route": [{"destination": {"host": "web"}, "weight": 90},
                                           {"destination": {"host": "web-canary"},
                                            "weight": 10}]}]}})
    bad_route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                 "metadata": {"name": "bad", "namespace": "check"},
                 "spec": {"rules": [{"backendRefs": [{"name": "web", "port": 80,
                                                      "weight": -1}]}]}}
    _expect_status(422, lambda: cp.apply(bad_route), "HTTPRoute with a negative weight")
    step("CRDs: HTTPRoute + VirtualService applied, invalid HTTPRoute 422", t)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="controlplane", description=DESCRIPTION)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="start, self-test, print timings")
    mode.add_argument("--serve", action="store_true", help="start and wait for Ctrl-C")
    parser.add_argument("--bin-dir", type=Path, default=None,
                        help="where the binaries are (default $MLSHIP_K8S_BIN or "
                             f"{DEFAULT_BIN_DIR})")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    missing = binaries_available(args.bin_dir)
    if missing:
        print(f"cannot start a control plane: {missing}", file=sys.stderr)
        return 2

    # SIGTERM stops the control plane as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    cp = ControlPlane(args.bin_dir, keep_workdir=args.keep)
    print(f"starting control plane in {cp.workdir}", flush=True)
    try:
        cp.start()
        started = time.monotonic()
        print(f"started in {started - began:.2f}s: "
              + ", ".join(f"{k} {v:.2f}s" for k, v in cp.timings.items()), flush=True)
        print(f"kubeconfig: {cp.kubeconfig}", flush=True)
        if args.serve:
            print("Ctrl-C (or SIGTERM) stops it and removes the directory", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
                    cp.check_alive()
            return 0
        _check(cp)
        print(f"check passed in {time.monotonic() - started:.2f}s "
              f"(start {started - began:.2f}s)", flush=True)
        return 0
    except Exception:
        for name, tail in cp.logs().items():
            print(f"---- {name} ----\n{tail}", file=sys.stderr)
        raise
    finally:
        stop_began = time.monotonic()
        cp.stop()
        print(f"stopped in {time.monotonic() - stop_began:.2f}s", flush=True)
