"""The real node's configuration files: containerd's, the registry hosts, kubelet's and
kube-proxy's. Pure functions of paths and addresses; ``node.py`` writes and uses them.

What keeps the node off the outside world before its first pod:

- containerd's sandbox image is ``pause_image`` in the loopback registry, and every registry
  name (``_default``) resolves to that registry, so nothing tries docker.io or registry.k8s.io;
- the kubelet's ``resolvConf`` and ``clusterDNS`` give pods only ``nameserver 127.0.0.1`` (the
  pod's own loopback, where nothing answers): no pod inherits this host's resolvers;
- kube-proxy opens NodePorts on the pod /24 only, never on localhost (``route_localnet`` stays
  off) and leaves conntrack sysctls alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .nodenet import PodNetwork

#: The taint and label of the real node: only pods that tolerate it (the ``pods`` tests'
#: namespaces, see ``node.py``) land there, so kwok-only tests never meet it.
REAL_NODE_TAINT = "mlship.test/real-node"
REAL_NODE_LABEL = "mlship.test/node"
#: The pods' resolv.conf: their own loopback, where no DNS server runs.
POD_RESOLV_CONF = "nameserver 127.0.0.1\noptions ndots:1 attempts:1 timeout:1\n"


def containerd_toml(*, root: Path, state: Path, cni_conf: Path, hosts: Path,
                    pause_image: str) -> str:
    """containerd 1.6's config (version 2 schema): its own root, state, socket and CNI."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'

    def q(value: object) -> str:
        return json.dumps(str(value))  # a JSON string is a TOML basic string

    return "\n".join([
        "version = 2",
        f"root = {q(root)}",
        f"state = {q(state)}",
        "oom_score = 0",
        'disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", '
        '"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", '
        '"io.containerd.snapshotter.v1.devmapper"]',
        "[grpc]", f"  address = {q(state / 'containerd.sock')}",
        "[ttrpc]", f"  address = {q(state / 'containerd.sock.ttrpc')}",
        "[debug]", '  address = ""', '  level = "info"',
        "[metrics]", '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]', f"  path = {q(root / 'opt')}",
        f"[{cri}]",
        f"  sandbox_image = {q(pause_image)}",
        "  disable_apparmor = true",
        "  enable_selinux = false",
        # The machine's root lacks CAP_SYS_RESOURCE: no process may lower its OOM score, so
        # containerd keeps the kubelet's (negative, for sandboxes) scores at its own.
        "  restrict_oom_score_adj = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "  netns_mounts_under_state_dir = true",
        "  max_concurrent_downloads = 3",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        '  BinaryName = "/usr/sbin/runc"',
        "  SystemdCgroup = false",
        f"[{cri}.cni]",
        '  bin_dir = "/usr/lib/cni"',
        f"  conf_dir = {q(cni_conf)}",
        "  max_conf_num = 1",
        f"[{cri}.registry]",
        f"  config_path = {q(hosts)}",
        "",
    ])


def registry_hosts(registry: str) -> dict[str, str]:
    """certs.d layout: ``registry`` over plain HTTP, and every other name (``_default``) sent
    to it too, so a typo'd or public image name fails here instead of going out."""
    here = (f'server = "http://{registry}"\n'
            f'[host."http://{registry}"]\n  capabilities = ["pull", "resolve"]\n')
    return {registry: here, "_default": here}


def kubelet_config(*, node: str, network: PodNetwork, port: int, healthz_port: int,
                   client_ca: Path, serving_cert: Path, serving_key: Path,
                   runtime_socket: Path, resolv_conf: Path, cgroup_root: str,
                   root: Path) -> dict[str, Any]:
    """KubeletConfiguration: cgroupfs on this cgroup v1 host, webhook authn/z, no swap, the
    taint, loopback-only DNS, and no image garbage collection mid-test."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": network.gateway, "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "tlsCertFile": str(serving_cert), "tlsPrivateKeyFile": str(serving_key),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "Webhook"},
        # This machine kind boots cgroup v1 (hybrid) and runs no systemd.
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": cgroup_root,
        "cgroupsPerQOS": True, "enforceNodeAllocatable": ["pods"],
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "resolvConf": str(resolv_conf), "clusterDNS": ["127.0.0.1"],
        "clusterDomain": "cluster.local",
        "registerNode": True,
        "registerWithTaints": [{"key": REAL_NODE_TAINT, "value": "true",
                                "effect": "NoSchedule"}],
        "maxPods": 30, "podPidsLimit": 4096, "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "nodeStatusUpdateFrequency": "2s", "nodeStatusReportFrequency": "10s",
        "syncFrequency": "5s", "fileCheckFrequency": "20s",
        "volumePluginDir": str(root / "volume-plugins"),
        "podLogsDir": str(root / "pod-logs"),
        "containerLogMaxSize": "5Mi", "containerLogMaxFiles": 2,
        "rotateCertificates": False, "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s", "shutdownGracePeriodCriticalPods": "0s",
        "staticPodPath": "", "failSwapOn": True,
        # No KUBE-FIREWALL / canary chains of the kubelet's own; kube-proxy makes what it needs.
        "makeIPTablesUtilChains": False,
    }


def kube_proxy_config(*, node: str, network: PodNetwork, kubeconfig: Path, healthz_port: int,
                      metrics_port: int) -> dict[str, Any]:
    """KubeProxyConfiguration: iptables mode for the pod /24, touching no host sysctl."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig), "qps": 20, "burst": 40},
        "hostnameOverride": node, "mode": "iptables",
        "clusterCIDR": str(network.subnet), "detectLocalMode": "ClusterCIDR",
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [str(network.subnet)],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False,
                     "syncPeriod": "30s", "minSyncPeriod": "0s"},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
        "oomScoreAdj": 0,
        "configSyncPeriod": "0s",
    }
