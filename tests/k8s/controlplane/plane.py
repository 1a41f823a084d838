"""The ControlPlane: makes the certificates and kubeconfigs, starts and stops the processes,
adds kwok nodes and users. The API helpers it has come from :class:`~controlplane.cluster.Cluster`.

A real node (a ``node`` module) would take its certificate from ``ca``, write its kubeconfig with
:func:`write_kubeconfig`, start its processes with ``_spawn`` (so ``stop()`` and
``check_alive()`` cover them) and wait with ``wait_node_ready``, as the kwok nodes do.
"""

from __future__ import annotations

import atexit
import http.client
import shutil
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from . import flags
from .binaries import bin_dir_default, binaries_available
from .certs import CertAuthority, CertPair
from .cluster import Cluster
from .errors import ControlPlaneError
from .kubeconfig import write_kubeconfig
from .kwok import fake_node, kwok_args
from .node import RealNode
from .processes import Component, free_ports, wait_for


class ControlPlane(Cluster):
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1.

    Start it from a thread that lives as long as it (e.g. the main thread, as pytest fixtures
    are): the processes get SIGKILL when the thread that started them ends, so a killed test
    run leaves nothing behind. ``stop()`` also runs at interpreter exit.
    """

    def __init__(
        self,
        bin_dir: Path | str | None = None,
        workdir: Path | str | None = None,
        *,
        nodes: int = 2,
        node_cpu: str = "64",
        node_memory: str = "256Gi",
        node_pods: str = "110",
        install_crds: bool = True,
        keep_workdir: bool = False,
        verbosity: int = 0,
    ) -> None:
        super().__init__()
        self.bin_dir = Path(bin_dir) if bin_dir else bin_dir_default()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlship-k8s-"))
        self.node_count = nodes
        self.node_resources = {"cpu": node_cpu, "memory": node_memory, "pods": node_pods}
        self.with_crds = install_crds
        self.keep_workdir = keep_workdir
        self.verbosity = verbosity
        self.components: dict[str, Component] = {}
        self.timings: dict[str, float] = {}
        self.etcd_port = self.apiserver_port = 0
        self.server = ""
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.ca: CertAuthority | None = None
        self.admin: CertPair | None = None
        self.node: RealNode | None = None
        self._stopped = False

    # -- lifecycle --

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 90) -> ControlPlane:
        """Start everything; return once nodes are Ready and ServiceAccounts work."""
        missing = binaries_available(self.bin_dir)
        if missing:
            raise ControlPlaneError(missing)
        if self._stopped or self.components:
            raise ControlPlaneError("a ControlPlane starts once; make a new one")
        began = time.monotonic()
        atexit.register(self.stop)
        try:
            self._start(timeout)
        except Exception as error:
            # Keep the logs of a failed start: the message names where they are.
            self.keep_workdir = True
            self.stop()
            raise ControlPlaneError(
                f"control plane failed to start: {error}\n(logs in {self.workdir / 'logs'})"
            ) from error
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - began
        return self

    def _lap(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.timings[name] = now - since
        return now

    def _start(self, timeout: float) -> None:
        t = time.monotonic()
        for sub in ("pki", "etcd", "logs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        pki = self.workdir / "pki"
        ca = self.ca = CertAuthority(pki)
        serving = ca.issue(
            "apiserver", "kube-apiserver",
            server_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                          "kubernetes.default.svc.cluster.local"],
            server_ips=["127.0.0.1", "10.96.0.1"],
        )  # fmt: skip
        self.admin = ca.issue("admin", "mlship-admin", ["system:masters"])
        kcm = ca.issue("kube-controller-manager", "system:kube-controller-manager")
        scheduler = ca.issue("kube-scheduler", "system:kube-scheduler")
        kwok = ca.issue("kwok", "kwok", ["system:masters"])
        # For logs, exec and port-forward: the kubelet of a real node authorizes it by webhook.
        kubelet_client = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                  ["system:masters"])
        service_accounts = ca.signing_key("service-account")
        t = self._lap("certificates", t)

        self.etcd_port, etcd_peer, self.apiserver_port, kcm_port, scheduler_port = \
            free_ports(5)
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        write_kubeconfig(self.kubeconfig, self.server, ca.cert, "admin", client=self.admin)
        kubeconfigs = {
            name: write_kubeconfig(self.workdir / f"{name}.kubeconfig", self.server, ca.cert,
                                   name, client=pair)
            for name, pair in (("kube-controller-manager", kcm), ("kube-scheduler", scheduler),
                               ("kwok", kwok))
        }
        context = ssl.create_default_context(cafile=str(ca.cert))
        context.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        self._connect(self.apiserver_port, context)

        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self._spawn("etcd", flags.etcd(self.workdir / "etcd", etcd_url,
                                       f"http://127.0.0.1:{etcd_peer}"))
        # kube-apiserver waits for etcd by itself; both start at once.
        self._spawn("kube-apiserver", flags.kube_apiserver(
            etcd_url=etcd_url, port=self.apiserver_port, serving=serving, client_ca=ca.cert,
            service_accounts=service_accounts, cert_dir=pki, kubelet_client=kubelet_client,
            verbosity=self.verbosity))
        wait_for(lambda: self._etcd_healthy(etcd_url), 20, "etcd to be healthy", 0.05)
        self._lap("etcd", t)
        wait_for(self._apiserver_ready, timeout, "kube-apiserver /readyz", 0.05)
        t = self._lap("kube-apiserver", t)

        self._spawn("kube-controller-manager", flags.kube_controller_manager(
            kubeconfig=kubeconfigs["kube-controller-manager"], port=kcm_port,
            cert_dir=pki / "kcm", service_account_key=service_accounts.key, root_ca=ca.cert,
            verbosity=self.verbosity))
        self._spawn("kube-scheduler", flags.kube_scheduler(
            kubeconfig=kubeconfigs["kube-scheduler"], port=scheduler_port,
            cert_dir=pki / "scheduler", verbosity=self.verbosity))
        self._spawn("kwok", kwok_args(kubeconfigs["kwok"], self.verbosity))
        crd_errors: list[BaseException] = []
        crd_thread: threading.Thread | None = None
        if self.with_crds:
            def install() -> None:
                try:
                    self.install_crds(timeout=timeout)
                except BaseException as error:  # re-raised in this thread below
                    crd_errors.append(error)

            crd_thread = threading.Thread(target=install, name="install-crds", daemon=True)
            crd_thread.start()
        for index in range(self.node_count):
            self.add_node(f"kwok-node-{index}", wait=False)
        for index in range(self.node_count):
            self.wait_node_ready(f"kwok-node-{index}", timeout)
        self._lap("nodes-ready", t)
        # The ServiceAccount controller (and the token machinery behind
        # --use-service-account-credentials) is working once "default" exists.
        wait_for(lambda: self._exists("/api/v1/namespaces/default/serviceaccounts/default"),
                 timeout, "the default ServiceAccount")
        self._lap("controllers", t)
        if crd_thread is not None:
            crd_thread.join(timeout)
            if crd_errors:
                raise crd_errors[0]
            self._lap("crds", t)

    def _spawn(self, name: str, args: list[str], binary: str | None = None) -> Component:
        component = Component(name, [binary or str(self.bin_dir / name), *args],
                              self.workdir / "logs" / f"{name}.log")
        self.components[name] = component
        component.start()
        return component

    def check_alive(self) -> None:
        """Raise (with its log tail) if a component has exited."""
        for component in self.components.values():
            component.check_alive()

    def stop(self) -> None:
        """Stop every component (reverse start order), then remove the workdir if it's ours."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self.node is not None:
            self.node.stop()
        for component in reversed(list(self.components.values())):
            component.stop()
        self.close_connections()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> dict[str, str]:
        """The last lines of each component's log (for a failing test's report)."""
        return {name: component.log_tail() for name, component in self.components.items()}

    # -- readiness --

    def _etcd_healthy(self, url: str) -> bool:
        self.components["etcd"].check_alive()
        parsed = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=2)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            return response.status == 200 and b'"true"' in response.read()
        finally:
            conn.close()

    def _apiserver_ready(self) -> bool:
        self.components["kube-apiserver"].check_alive()
        status, _ = self.request("GET", "/readyz", raw=True, timeout=2)
        return status == 200

    def _exists(self, path: str) -> bool:
        self.check_alive()
        status, _ = self.request("GET", path, allow_error=True)
        return status == 200

    # -- the kubernetes package --

    def client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin user (needs the kubernetes package)."""
        return self.client_for(self.kubeconfig)

    @staticmethod
    def client_for(kubeconfig: Path) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig))

    # -- kwok nodes --

    def add_node(
        self,
        name: str,
        *,
        cpu: str | None = None,
        memory: str | None = None,
        pods: str | None = None,
        extra_resources: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, str]] = (),
        wait: bool = True,
    ) -> None:
        """A kwok-managed fake node; ``extra_resources`` e.g. ``{"nvidia.com/gpu": "1"}``."""
        resources = {"cpu": cpu or self.node_resources["cpu"],
                     "memory": memory or self.node_resources["memory"],
                     "pods": pods or self.node_resources["pods"], **(extra_resources or {})}
        self.request("POST", "/api/v1/nodes", fake_node(name, resources, labels, taints))
        if wait:
            self.wait_node_ready(name)

    # -- the real node --

    def add_real_node(self, *, timeout: float = 120) -> RealNode:
        """Start the real node (containerd, kubelet, kube-proxy; see ``node.py``) once."""
        if self.node is None:
            node = RealNode(self, verbosity=self.verbosity)
            node.start(timeout)
            self.node = node
        return self.node

    # -- users --

    def create_user(
        self, name: str, groups: Sequence[str] = (), *, namespace: str | None = None
    ) -> Path:
        """A kubeconfig for user ``name`` (a client certificate; ``groups`` become O=...).

        The user starts with no rights beyond what every authenticated user has, so requests
        get 403 until :meth:`bind_cluster_role` or :meth:`grant` gives some.
        """
        if self.ca is None:
            raise ControlPlaneError("the control plane is not started")
        pair = self.ca.issue(f"user-{name}", name, groups)
        return write_kubeconfig(self.workdir / f"user-{name}.kubeconfig", self.server,
                                self.ca.cert, name, client=pair, namespace=namespace)

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, create: bool = True, expiration_seconds: int = 3600
    ) -> Path:
        """A kubeconfig holding a TokenRequest token for ServiceAccount namespace/name."""
        if self.ca is None:
            raise ControlPlaneError("the control plane is not started")
        if create:
            self.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": name, "namespace": namespace}})
        _, token = self.request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": expiration_seconds}},
        )  # fmt: skip
        return write_kubeconfig(self.workdir / f"sa-{namespace}-{name}.kubeconfig", self.server,
                                self.ca.cert, f"system:serviceaccount:{namespace}:{name}",
                                token=token["status"]["token"], namespace=namespace)
