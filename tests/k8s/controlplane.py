"""A real Kubernetes control plane on loopback for mlship's tests.

Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok — the binaries
``.ci/install-k8s.sh`` builds from Go modules into ``$MLSHIP_K8S_BIN`` — on free 127.0.0.1 ports
in a temporary directory, with certificates made by the ``openssl`` CLI. Server-side apply,
field managers, validation, dry run, PodSecurity admission, RBAC, Deployments and ReplicaSets
are the real ones; nodes are kwok's fakes, and pods on them go Running/Ready (or fail as a test
asks, see ``tests/k8s/kwok-stages.yaml``) without any container being run.

    from controlplane import ControlPlane

    with ControlPlane() as cp:                 # start() ... stop()
        cp.kubeconfig                          # admin (system:masters) kubeconfig, a Path
        cp.apply({...Deployment...})           # server-side apply as field manager "mlship-test"
        cp.wait_rollout("default", "web")
        viewer = cp.create_user("viewer")      # a kubeconfig with no rights at all
        cp.bind_cluster_role("viewer", "view", namespace="default")

Nothing here ever dials a non-loopback address. Pod and Service IPs (10.244.0.0/16,
10.96.0.0/16) are fake: never connect to them, nor use pods/proxy or services/proxy.

``python tests/k8s/controlplane.py --check`` starts one, exercises it and prints timings;
``--serve`` starts one and waits (its kubeconfig path is printed) until Ctrl-C.
Only the standard library is needed, plus PyYAML to load the CRDs and, for ``client()`` and
``--check``, the ``kubernetes`` package.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

HERE = Path(__file__).resolve().parent
CRD_DIR = HERE / "crds"
KWOK_CONFIG = HERE / "kwok-stages.yaml"
DEFAULT_BIN_DIR = Path("/var/cache/mlship/k8s/bin")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

#: Pod annotation that kwok-stages.yaml turns into a failure; values are the ``FAIL_*`` below.
FAILURE_ANNOTATION = "mlship.test/pod-failure"
FAIL_CRASH_LOOP = "CrashLoopBackOff"
FAIL_IMAGE_PULL = "ImagePullBackOff"
FAIL_ERR_IMAGE_PULL = "ErrImagePull"
FAIL_NOT_READY = "NotReady"
#: Exit code / reason shown in lastState.terminated of a CrashLoopBackOff pod (e.g. "OOMKilled").
EXIT_CODE_ANNOTATION = "mlship.test/exit-code"
EXIT_REASON_ANNOTATION = "mlship.test/exit-reason"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

SERVICE_CIDR = "10.96.0.0/16"
#: Controllers with nothing to do without kubelets, storage or CSRs; leaving them out saves
#: seconds at start (each one gets its own ServiceAccount).
UNUSED_CONTROLLERS = (
    "node-ipam-controller", "ttl-controller", "persistentvolume-attach-detach-controller",
    "persistentvolume-expander-controller", "ephemeral-volume-controller",
    "certificatesigningrequest-approving-controller",
    "certificatesigningrequest-cleaner-controller", "certificatesigningrequest-signing-controller",
    "endpointslice-mirroring-controller",
    "resourceclaim-controller", "device-taint-eviction-controller",
    "storage-version-migrator-controller", "storageversion-garbage-collector-controller",
    "legacy-serviceaccount-token-cleaner-controller",
    "kube-apiserver-serving-clustertrustbundle-publisher-controller",
    "podcertificaterequest-cleaner-controller", "volumeattributesclass-protection-controller",
)
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """The control plane could not start, or a request to it failed."""


class ComponentExited(ControlPlaneError):
    """A control-plane process exited; its log tail is in the message."""


class ApiError(ControlPlaneError):
    """The API server answered a request with an error status."""

    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


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


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: all held open at once while they are chosen, as
    separate bind-and-close calls may hand out the same port twice."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.1,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy (and return that) or time runs out.

    Connection errors, :class:`ControlPlaneError` (but not :class:`ComponentExited`) and
    ``retry_on`` from ``predicate`` count as "not yet"; the last one is named on timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except ComponentExited:
            raise
        except (OSError, ControlPlaneError, http.client.HTTPException, *retry_on) as error:
            last_error, result = error, None
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Have the kernel SIGKILL the child when the process that started it dies (Linux)."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


# ---- certificates ---------------------------------------------------------------------------

_OPENSSL_CONFIG = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n"


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


class CertAuthority:
    """A throwaway CA (EC P-256, via the openssl CLI) and the certificates it signs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._config = directory / "openssl.cnf"
        self._config.write_text(_OPENSSL_CONFIG)
        self.cert = directory / "ca.crt"
        self.key = directory / "ca.key"
        self._openssl(
            "req", "-x509", "-new", "-nodes", "-days", "3650",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-keyout", str(self.key), "-out", str(self.cert), "-subj", "/CN=mlship-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip

    def _openssl(self, *args: str) -> None:
        env = {**os.environ, "OPENSSL_CONF": str(self._config)}
        result = subprocess.run(
            ["openssl", *args, "-config", str(self._config)],
            capture_output=True, text=True, check=False, env=env,
        )  # fmt: skip
        if result.returncode != 0:
            raise ControlPlaneError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    def issue(
        self,
        name: str,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server_names: Sequence[str] = (),
        server_ips: Sequence[str] = (),
    ) -> CertPair:
        """A client certificate (CN = user, O = groups), or a serving one if given names/IPs."""
        subject = "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"
        pair = CertPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        extensions = ["basicConstraints=critical,CA:FALSE",
                      "keyUsage=critical,digitalSignature,keyEncipherment"]
        if server_names or server_ips:
            extensions.append("extendedKeyUsage=serverAuth,clientAuth")
            alt = [f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips]
            extensions.append("subjectAltName=" + ",".join(alt))
        else:
            extensions.append("extendedKeyUsage=clientAuth")
        args = ["req", "-x509", "-new", "-nodes", "-days", "3650",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-CA", str(self.cert), "-CAkey", str(self.key),
                "-keyout", str(pair.key), "-out", str(pair.cert), "-subj", subject]
        for extension in extensions:
            args += ["-addext", extension]
        self._openssl(*args)
        return pair

    def signing_key(self, name: str) -> CertPair:
        """An EC key pair (``cert`` holds the public key) for service-account tokens."""
        key = self.directory / f"{name}.key"
        public = self.directory / f"{name}.pub"
        for args in (
            ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
            ["ec", "-in", str(key), "-pubout", "-out", str(public)],
        ):
            result = subprocess.run(["openssl", *args], capture_output=True, text=True,
                                    check=False)
            if result.returncode != 0:
                raise ControlPlaneError(f"openssl {args[0]} failed: {result.stderr.strip()}")
        return CertPair(public, key)


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


# ---- processes --------------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only setsid + prctl, no locks taken
        )  # fmt: skip

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ComponentExited(
                f"{self.name} exited with {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        elif process is not None:
            process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


# ---- the control plane --------------------------------------------------------------------


class ControlPlane:
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
        self._ssl: ssl.SSLContext | None = None
        self._local = threading.local()  # one keep-alive connection per thread
        self._connections: list[http.client.HTTPSConnection] = []
        self._connections_lock = threading.Lock()
        self._resources: dict[tuple[str, str], dict[str, Any]] = {}
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
        self._ssl = ssl.create_default_context(cafile=str(ca.cert))
        self._ssl.load_cert_chain(str(self.admin.cert), str(self.admin.key))

        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        self._spawn("etcd", [
            "--name=default", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--initial-cluster-state=new",
            "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=2147483648",
        ])  # fmt: skip
        # kube-apiserver waits for etcd by itself; both start at once.
        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.cert}",
            f"--service-account-key-file={service_accounts.cert}",
            f"--service-account-signing-key-file={service_accounts.key}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC,Node",
            "--enable-admission-plugins=NodeRestriction,PodSecurity",
            "--allow-privileged=true",
            # The lease reconciler refuses a loopback advertise address; nothing in the tests
            # talks to the "kubernetes" Service from inside the cluster anyway.
            "--endpoint-reconciler-type=none",
            "--anonymous-auth=true",
            "--profiling=false",
            f"--cert-dir={pki}",
            f"--v={self.verbosity}",
        ])  # fmt: skip
        wait_for(lambda: self._etcd_healthy(etcd_url), 20, "etcd to be healthy", 0.05)
        self._lap("etcd", t)
        wait_for(self._apiserver_ready, timeout, "kube-apiserver /readyz", 0.05)
        t = self._lap("kube-apiserver", t)

        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kubeconfigs['kube-controller-manager']}",
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
            f"--cert-dir={self.workdir / 'pki' / 'kcm'}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={service_accounts.key}",
            f"--root-ca-file={ca.cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            f"--controllers={','.join(['*', *(f'-{c}' for c in UNUSED_CONTROLLERS)])}",
            f"--v={self.verbosity}",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            f"--kubeconfig={kubeconfigs['kube-scheduler']}",
            "--bind-address=127.0.0.1", f"--secure-port={scheduler_port}",
            f"--cert-dir={self.workdir / 'pki' / 'scheduler'}",
            "--leader-elect=false",
            f"--v={self.verbosity}",
        ])  # fmt: skip
        self._spawn("kwok", [
            f"--kubeconfig={kubeconfigs['kwok']}", f"--config={KWOK_CONFIG}",
            "--manage-all-nodes=false", f"--v={'INFO' if self.verbosity > 1 else 'WARN'}",
        ])  # fmt: skip
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

    def _spawn(self, name: str, args: list[str]) -> Component:
        component = Component(name, [str(self.bin_dir / name), *args],
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
        for component in reversed(list(self.components.values())):
            component.stop()
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

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

    # -- raw API access (stdlib only) --

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.apiserver_port,
                                               context=self._ssl, timeout=timeout)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        conn.timeout = timeout
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
        allow_error: bool = False,
        raw: bool = False,
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """One request as the admin user: (status, decoded JSON body — or text if ``raw``).

        Raises :class:`ApiError` for a status >= 400 unless ``allow_error``.
        """
        if self._ssl is None:
            raise ControlPlaneError("the control plane is not started")
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        payload = None if body is None else (
            body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection(timeout)
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server had closed: the request never got there.
                conn.close()
                if attempt == 2:
                    raise
            except (OSError, http.client.HTTPException):
                conn.close()
                raise
        text = data.decode(errors="replace")
        decoded: Any = text
        if not raw and text:
            try:
                decoded = json.loads(text)
            except ValueError:
                decoded = text
        if response.status >= 400 and not (allow_error or raw):
            raise ApiError(response.status, decoded, method, path)
        return response.status, decoded

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or None for 404."""
        status, body = self.request("GET", path, allow_error=True)
        if status == 404:
            return None
        if status >= 400:
            raise ApiError(status, body, "GET", path)
        return body

    def resource_path(
        self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None
    ) -> str:
        """REST path for a kind (found by discovery, so CRDs work too)."""
        info = self._resource(api_version, kind)
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if info["namespaced"]:
            if not namespace:
                raise ControlPlaneError(f"{kind} is namespaced: give a namespace")
            base += f"/namespaces/{namespace}"
        path = f"{base}/{info['name']}"
        return f"{path}/{name}" if name else path

    def _resource(self, api_version: str, kind: str) -> dict[str, Any]:
        key = (api_version, kind)
        if key not in self._resources:
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            _, listing = self.request("GET", base)
            for resource in listing.get("resources", []):
                if "/" not in resource["name"]:
                    self._resources[(api_version, resource["kind"])] = resource
        if key not in self._resources:
            raise ControlPlaneError(f"the API server does not serve {kind} in {api_version}")
        return self._resources[key]

    def apply(
        self,
        obj: Mapping[str, Any],
        *,
        field_manager: str = "mlship-test",
        force: bool = True,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Server-side apply one object (as the admin user); returns what the server answered."""
        metadata = obj.get("metadata", {})
        path = self.resource_path(obj["apiVersion"], obj["kind"], metadata.get("namespace"),
                                  metadata["name"])
        query = {"fieldManager": field_manager}
        if force:
            query["force"] = "true"
        if dry_run:
            query["dryRun"] = "All"
        _, body = self.request("PATCH", path, dict(obj),
                               content_type="application/apply-patch+yaml", query=query)
        return body

    def apply_all(
        self, objects: Iterable[Mapping[str, Any]], **kwargs: Any
    ) -> list[dict[str, Any]]:
        return [self.apply(obj, **kwargs) for obj in objects]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        self.request("DELETE", self.resource_path(api_version, kind, namespace, name),
                     allow_error=True)

    def client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin user (needs the kubernetes package)."""
        return self.client_for(self.kubeconfig)

    @staticmethod
    def client_for(kubeconfig: Path) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig))

    # -- nodes, namespaces, CRDs --

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
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64", "type": "kwok", **(labels or {})},
            },
            "spec": {"taints": [dict(taint) for taint in taints]} if taints else {},
            "status": {"allocatable": resources, "capacity": resources},
        }
        self.request("POST", "/api/v1/nodes", node)
        if wait:
            self.wait_node_ready(name)

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
            conditions = (crd or {}).get("status", {}).get("conditions", [])
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        for name in names:
            wait_for(lambda n=name: established(n), timeout, f"CRD {name} to be Established")
        self._resources.clear()
        return names

    # -- users and RBAC --

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
        cluster = namespace is None
        role_kind = "ClusterRole" if cluster else "Role"
        meta: dict[str, Any] = {"name": role_name}
        if not cluster:
            meta["namespace"] = namespace
        self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": role_kind,
                    "metadata": meta, "rules": [dict(rule) for rule in rules]})
        self._bind(user, role_kind, role_name, namespace, kind)

    def bind_cluster_role(
        self, user: str, cluster_role: str, *, namespace: str | None = None, kind: str = "User"
    ) -> None:
        """Bind an existing ClusterRole (view, edit, admin, ...) in a namespace or cluster-wide."""
        self._bind(user, "ClusterRole", cluster_role, namespace, kind)

    def _bind(
        self, user: str, role_kind: str, role_name: str, namespace: str | None, kind: str
    ) -> None:
        subject: dict[str, str] = {"kind": kind, "name": user}
        if kind == "ServiceAccount":
            subject["namespace"], subject["name"] = user.split(":", 1)
        else:
            subject["apiGroup"] = "rbac.authorization.k8s.io"
        binding_name = f"mlship-test-{user.replace(':', '-')}-{role_name}"
        meta: dict[str, Any] = {"name": binding_name}
        binding_kind = "ClusterRoleBinding" if namespace is None else "RoleBinding"
        if namespace is not None:
            meta["namespace"] = namespace
        self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding_kind,
                    "metadata": meta, "subjects": [subject],
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                                "name": role_name}})

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

    def logs(self) -> dict[str, str]:
        """The last lines of each component's log (for a failing test's report)."""
        return {name: component.log_tail() for name, component in self.components.items()}


# ---- self-test ------------------------------------------------------------------------------


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())
