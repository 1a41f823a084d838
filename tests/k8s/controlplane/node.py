"""A real node beside the kwok ones: containerd runs the pods, kubelet drives it, kube-proxy
programs the Services, on a bridge network that cannot reach past this machine.

``ControlPlane.add_real_node()`` starts one; the pods' images come from the loopback registry
(``127.0.0.1:5000``), the sandbox image included (:func:`ensure_pause_image` builds it from the
static ``pause`` binary of ``.ci/install-node.sh``). The node is tainted ``mlship.test/real-node``
and labelled ``mlship.test/node=real``: only pods in a namespace made by
:meth:`RealNode.namespace_annotations` (PodNodeSelector + PodTolerationRestriction admission)
land there, so tests written for kwok nodes never meet it.

One real node per machine at a time (kube-proxy owns the host's KUBE-* iptables chains): a
second run waits for the first (``/run/mlship-node/lock``). Everything a node changes on the
host — bridge, firewall, cgroups, mounts, three kernel sysctls the kubelet sets — is undone at
``stop()``, and the next start undoes what a killed run left (its state file names it all).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import nodeconfig, nodenet
from .errors import ControlPlaneError
from .kubeconfig import write_kubeconfig
from .processes import Component, free_ports, wait_for

if TYPE_CHECKING:
    from .plane import ControlPlane

REGISTRY = "127.0.0.1:5000"
NODE_NAME = "real-node"
NODE_BINARIES = ("kubelet", "kube-proxy", "pause")
#: The kubelet sets these at start (its ``protectKernelDefaults: false`` behaviour); the node
#: puts them back at stop.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def node_missing(bin_dir: Path) -> str | None:
    """None when a real node can start here, else why not (for the ``pods`` marker)."""
    absent = [name for name in NODE_BINARIES if not os.access(bin_dir / name, os.X_OK)]
    if absent:
        return f"missing in {bin_dir}: {', '.join(absent)} (bash .ci/install-node.sh)"
    for tool in ("containerd", "runc", "iptables", "ip6tables", "ip", "ctr"):
        if shutil.which(tool) is None:
            return f"{tool} not found (bash .ci/install-node.sh)"
    if not os.access("/usr/lib/cni/bridge", os.X_OK):
        return "CNI plugins missing in /usr/lib/cni (bash .ci/install-node.sh)"
    if os.geteuid() != 0:
        return "a real node needs root (network namespaces, cgroups, iptables)"
    return None


# ---- the sandbox image ------------------------------------------------------------------------


def _registry_has(registry: str, repository: str, tag: str) -> bool:
    conn = http.client.HTTPConnection(registry, timeout=5)
    try:
        conn.request("HEAD", f"/v2/{repository}/manifests/{tag}", headers={"Accept": ", ".join([
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.manifest.v1+json"])})
        return conn.getresponse().status == 200
    finally:
        conn.close()


def ensure_pause_image(pause_binary: Path, registry: str = REGISTRY) -> str:
    """The sandbox image (``FROM scratch`` + the static pause binary) in ``registry``, built
    and pushed with the Docker CLI when it is not there yet; tagged by the binary's digest."""
    tag = hashlib.sha256(pause_binary.read_bytes()).hexdigest()[:16]
    reference = f"{registry}/mlship-test/pause:{tag}"
    if _registry_has(registry, "mlship-test/pause", tag):
        return reference
    with tempfile.TemporaryDirectory(prefix="mlship-pause-") as context:
        shutil.copy2(pause_binary, Path(context) / "pause")
        (Path(context) / "Dockerfile").write_text(
            'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n')
        for argv in (["docker", "build", "-q", "-t", reference, context],
                     ["docker", "push", "-q", reference]):
            result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                    timeout=300)
            if result.returncode != 0:
                raise ControlPlaneError(f"{' '.join(argv[:2])} of the pause image failed: "
                                        f"{result.stderr.strip() or result.stdout.strip()}")
    return reference


# ---- processes and host state of a node, live or left by a killed run ----------------------


def _owner() -> str:
    return f"pid:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _cgroup_dirs(cgroup_root: str) -> list[Path]:
    """The node's cgroup directories in every hierarchy, deepest first."""
    found: list[Path] = []
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / cgroup_root.strip("/")
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _kill_cgroup_processes(cgroup_root: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set()
        for directory in _cgroup_dirs(cgroup_root):
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _kill_shims(socket: str) -> None:
    """containerd-shim processes serving ``socket``'s containerd (they outlive it)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"containerd-shim-runc-v2") and socket.encode() in argv:
                os.kill(int(proc.name), signal.SIGKILL)


def _unmount_under(directory: str) -> None:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == directory or point.startswith(directory.rstrip("/") + "/"):
            mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


#: Chains kube-proxy (and a kubelet) leave behind even after ``kube-proxy --cleanup``.
_KUBE_CHAINS = (("filter", "KUBE-FIREWALL"), ("filter", "KUBE-KUBELET-CANARY"),
                ("nat", "KUBE-KUBELET-CANARY"), ("mangle", "KUBE-KUBELET-CANARY"),
                ("mangle", "KUBE-IPTABLES-HINT"))


def _remove_kube_chains() -> None:
    """The KUBE-* chains left on the host: the machine's one node (the lock) owned them."""
    for command in ("iptables", "ip6tables"):
        for hook in ("INPUT", "OUTPUT"):
            subprocess.run([command, "-w", "-D", hook, "-j", "KUBE-FIREWALL"],
                           capture_output=True, check=False)
        for table, chain in _KUBE_CHAINS:
            for action in ("-F", "-X"):
                subprocess.run([command, "-w", "-t", table, action, chain],
                               capture_output=True, check=False)


def purge(state: dict[str, Any]) -> None:
    """Undo everything a node did on the host, given its state file (idempotent)."""
    cgroup_root, root = str(state["cgroup_root"]), str(state["root"])
    _kill_cgroup_processes(cgroup_root)
    _kill_shims(str(state["socket"]))
    _unmount_under(root)
    for directory in _cgroup_dirs(cgroup_root):
        with contextlib.suppress(OSError):
            directory.rmdir()
    if state.get("kube_proxy_config"):
        subprocess.run([str(state["kube_proxy"]), "--cleanup",
                        f"--config={state['kube_proxy_config']}"],
                       capture_output=True, check=False, timeout=60)
        _remove_kube_chains()
    for name, value in dict(state.get("sysctls") or {}).items():
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/{name}").write_text(f"{value}\n")
    nodenet.network_of(int(state["index"])).remove()
    # Images and snapshots go; the config files and logs stay with the workdir.
    for sub in ("containerd", "state", "kubelet"):
        shutil.rmtree(Path(root) / sub, ignore_errors=True)


def _lock(timeout: float) -> IO[str]:
    """The machine's one-node lock; a killed holder's lock is free again (flock)."""
    nodenet.STATE_DIR.mkdir(parents=True, exist_ok=True)
    handle = (nodenet.STATE_DIR / "lock").open("a+")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise ControlPlaneError(
                    f"another run's real node holds {nodenet.STATE_DIR / 'lock'} "
                    f"for over {timeout:.0f}s") from None
            time.sleep(1)


class RealNode:
    """containerd + kubelet + kube-proxy for ``plane``, as Node ``name``; see the module doc."""

    def __init__(self, plane: ControlPlane, *, name: str = NODE_NAME,
                 registry: str = REGISTRY, verbosity: int = 0) -> None:
        self.plane = plane
        self.name = name
        self.registry = registry
        self.verbosity = verbosity
        self.root = plane.workdir / "node"
        self.network: nodenet.PodNetwork | None = None
        self.components: list[Component] = []
        self.pause_image = ""
        self._lock: IO[str] | None = None
        self._state: dict[str, Any] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "state" / "containerd.sock"

    @property
    def label(self) -> dict[str, str]:
        return {nodeconfig.REAL_NODE_LABEL: "real"}

    def namespace_annotations(self) -> dict[str, str]:
        """Annotations that send a namespace's pods to this node and only there."""
        selector = ",".join(f"{k}={v}" for k, v in self.label.items())
        return {"scheduler.alpha.kubernetes.io/node-selector": selector,
                "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps([{
                    "key": nodeconfig.REAL_NODE_TAINT, "operator": "Exists",
                    "effect": "NoSchedule"}])}

    def start(self, timeout: float = 120) -> RealNode:
        self._lock = _lock(timeout=600)
        for stale in nodenet.states().values():
            purge(stale)  # we hold the lock: whoever wrote it is gone
        self.pause_image = ensure_pause_image(self.plane.bin_dir / "pause", self.registry)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        plane, root = self.plane, self.root
        assert plane.ca is not None
        network = self.network = nodenet.PodNetwork.choose()
        cgroup_root = f"/mlship-node-{network.index}"
        kubelet_port, healthz_port, proxy_healthz, proxy_metrics = free_ports(4)
        for sub in ("containerd", "state", "net.d", "ipam", "certs.d", "kubelet", "pki"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        files = {
            "containerd.toml": nodeconfig.containerd_toml(
                root=root / "containerd", state=root / "state", cni_conf=root / "net.d",
                hosts=root / "certs.d", pause_image=self.pause_image),
            "net.d/10-mlship.conflist": json.dumps(network.cni_config(root / "ipam")),
            "resolv.conf": nodeconfig.POD_RESOLV_CONF,
        }
        for host, text in nodeconfig.registry_hosts(self.registry).items():
            files[f"certs.d/{host}/hosts.toml"] = text
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        ca = plane.ca
        kubelet_client = ca.issue("kubelet", f"system:node:{self.name}", ["system:nodes"])
        serving = ca.issue("kubelet-serving", self.name, server_names=[self.name],
                           server_ips=[network.gateway, "127.0.0.1"])
        proxy_client = ca.issue("kube-proxy", "system:kube-proxy")
        kubelet_kubeconfig = write_kubeconfig(root / "kubelet.kubeconfig", plane.server,
                                              ca.cert, "kubelet", client=kubelet_client)
        proxy_kubeconfig = write_kubeconfig(root / "kube-proxy.kubeconfig", plane.server,
                                            ca.cert, "kube-proxy", client=proxy_client)
        kubelet_config = root / "kubelet.json"
        kubelet_config.write_text(json.dumps(nodeconfig.kubelet_config(
            node=self.name, network=network, port=kubelet_port, healthz_port=healthz_port,
            client_ca=ca.cert, serving_cert=serving.cert, serving_key=serving.key,
            runtime_socket=self.socket, resolv_conf=root / "resolv.conf",
            cgroup_root=cgroup_root, root=root / "kubelet"), indent=2))
        proxy_config = root / "kube-proxy.json"
        proxy_config.write_text(json.dumps(nodeconfig.kube_proxy_config(
            node=self.name, network=network, kubeconfig=proxy_kubeconfig,
            healthz_port=proxy_healthz, metrics_port=proxy_metrics), indent=2))

        sysctls = {}
        for name in KUBELET_SYSCTLS:
            with contextlib.suppress(OSError):
                sysctls[name] = Path(f"/proc/sys/{name}").read_text().strip()
        self._state = {"owner": _owner(), "index": network.index, "root": str(root),
                       "cgroup_root": cgroup_root, "socket": str(self.socket),
                       "sysctls": sysctls, "kube_proxy": str(plane.bin_dir / "kube-proxy"),
                       "kube_proxy_config": str(proxy_config)}
        # The firewall is in place before containerd (and so any pod) starts.
        network.install(self._state)
        self._make_cgroup_root(cgroup_root)

        t = time.monotonic()
        self._spawn("containerd", ["--config", str(root / "containerd.toml")],
                    binary=shutil.which("containerd") or "/usr/bin/containerd")
        wait_for(self._containerd_ready, 30, "containerd to answer", 0.1)
        plane.timings["node-containerd"] = time.monotonic() - t
        self._spawn("kubelet", [
            f"--config={kubelet_config}", f"--kubeconfig={kubelet_kubeconfig}",
            f"--root-dir={root / 'kubelet'}", f"--cert-dir={root / 'pki'}",
            f"--hostname-override={self.name}", f"--node-ip={network.gateway}",
            f"--node-labels={','.join(f'{k}={v}' for k, v in self.label.items())}",
            f"--v={max(self.verbosity, 1)}"])
        self._spawn("kube-proxy", [f"--config={proxy_config}", f"--v={self.verbosity}"])
        plane.wait_node_ready(self.name, timeout)
        wait_for(lambda: self._healthy(proxy_healthz), timeout, "kube-proxy /healthz", 0.2)
        plane.timings["node-ready"] = time.monotonic() - t

    def _spawn(self, name: str, args: list[str], binary: str | None = None) -> None:
        self.components.append(self.plane._spawn(name, args, binary=binary))

    @staticmethod
    def _make_cgroup_root(cgroup_root: str) -> None:
        """The kubelet wants its cgroup root to exist; cpuset needs its cpus and mems set."""
        for hierarchy in CGROUP_ROOT.iterdir():
            if hierarchy.name == "unified" or not (hierarchy / "cgroup.procs").exists():
                continue
            directory = hierarchy / cgroup_root.strip("/")
            directory.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                for key in ("cpuset.cpus", "cpuset.mems"):
                    (directory / key).write_text((hierarchy / key).read_text())

    def _containerd_ready(self) -> bool:
        self.check_alive()
        result = subprocess.run(["ctr", "--address", str(self.socket), "version"],
                                capture_output=True, check=False, timeout=10)
        return result.returncode == 0

    def _healthy(self, port: int) -> bool:
        self.check_alive()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def check_alive(self) -> None:
        for component in self.components:
            component.check_alive()

    def stop(self) -> None:
        """Stop kubelet and kube-proxy, kill every pod, stop containerd, undo host changes."""
        for component in reversed(self.components):
            if component.name != "containerd":
                component.stop()
        if self._state is not None:
            _kill_cgroup_processes(str(self._state["cgroup_root"]))
        for component in self.components:
            if component.name == "containerd":
                component.stop()
        for component in self.components:
            self.plane.components.pop(component.name, None)
        self.components.clear()
        if self._state is not None:
            purge(self._state)
            self._state = None
        elif self.network is not None:
            self.network.remove()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
