"""Command lines of etcd, kube-apiserver, kube-controller-manager and kube-scheduler.

Everything listens on 127.0.0.1 only; the callers choose the ports and paths.
"""

from __future__ import annotations

from pathlib import Path

from .certs import CertPair

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


def etcd(data_dir: Path, client_url: str, peer_url: str) -> list[str]:
    return [
        "--name=default", f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=default={peer_url}", "--initial-cluster-state=new",
        "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=2147483648",
    ]  # fmt: skip


def kube_apiserver(
    *,
    etcd_url: str,
    port: int,
    serving: CertPair,
    client_ca: Path,
    service_accounts: CertPair,
    cert_dir: Path,
    kubelet_client: CertPair,
    verbosity: int,
) -> list[str]:
    return [
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
        f"--client-ca-file={client_ca}",
        f"--service-account-key-file={service_accounts.cert}",
        f"--service-account-signing-key-file={service_accounts.key}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=RBAC,Node",
        # PodNodeSelector and PodTolerationRestriction act only on annotated namespaces: those
        # of the pods tests, whose pods go to the real node (node.py).
        "--enable-admission-plugins=NodeRestriction,PodSecurity,PodNodeSelector,"
        "PodTolerationRestriction",
        f"--kubelet-client-certificate={kubelet_client.cert}",
        f"--kubelet-client-key={kubelet_client.key}",
        "--kubelet-preferred-address-types=InternalIP",
        "--allow-privileged=true",
        # The lease reconciler refuses a loopback advertise address; nothing in the tests
        # talks to the "kubernetes" Service from inside the cluster anyway.
        "--endpoint-reconciler-type=none",
        "--anonymous-auth=true",
        "--profiling=false",
        f"--cert-dir={cert_dir}",
        f"--v={verbosity}",
    ]  # fmt: skip


def kube_controller_manager(
    *,
    kubeconfig: Path,
    port: int,
    cert_dir: Path,
    service_account_key: Path,
    root_ca: Path,
    verbosity: int,
) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={service_account_key}",
        f"--root-ca-file={root_ca}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--leader-elect=false",
        f"--controllers={','.join(['*', *(f'-{c}' for c in UNUSED_CONTROLLERS)])}",
        f"--v={verbosity}",
    ]  # fmt: skip


def kube_scheduler(*, kubeconfig: Path, port: int, cert_dir: Path, verbosity: int) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        "--leader-elect=false",
        f"--v={verbosity}",
    ]  # fmt: skip
