"""KUBECONFIG with several files, as kubectl reads it: merged by the kubernetes client's own
loader, against the real loopback control plane, with files as `kubectl config` writes them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlship_contract import check_failure, check_success, mlship

from mlship.errors import ClusterError
from mlship.kube import connect

pytestmark = pytest.mark.k8s


def _kubeconfig(path: Path, context: str, cluster: dict[str, Any], user: dict[str, Any],
                *, current: bool = True, namespace: str | None = None) -> Path:
    """One file as `kubectl config set-cluster/set-credentials/set-context` leaves it: names of
    its own, so several files merge without clashing."""
    entry: dict[str, Any] = {"cluster": f"{context}-cluster", "user": f"{context}-user"}
    if namespace:
        entry["namespace"] = namespace
    document: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": f"{context}-cluster", "cluster": cluster}],
        "users": [{"name": f"{context}-user", "user": user}],
        "contexts": [{"name": context, "context": entry}]}
    if current:
        document["current-context"] = context
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)
    return path


@pytest.fixture
def two_files(tmp_path: Path, control_plane) -> tuple[Path, Path]:
    """a.yaml: a dead cluster (ctx-a); b.yaml: the control plane (ctx-b), in another directory,
    with its CA next to it under a relative path (resolved against b.yaml, as kubectl does)."""
    admin = json.loads(control_plane.kubeconfig.read_text())
    cluster, user = admin["clusters"][0]["cluster"], admin["users"][0]["user"]
    second = tmp_path / "team"
    second.mkdir()
    shutil.copyfile(cluster["certificate-authority"], second / "ca.crt")
    a = _kubeconfig(tmp_path / "a.yaml", "ctx-a",
                    {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True},
                    {"token": "not-a-real-token"})
    b = _kubeconfig(second / "b.yaml", "ctx-b",
                    {"server": cluster["server"], "certificate-authority": "ca.crt"}, user,
                    namespace="team-b")
    return a, b


def _project(directory: Path, model: Path) -> Path:
    directory.mkdir()
    shutil.copyfile(model, directory / "model.onnx")
    (directory / "mlship.yaml").write_text(yaml.safe_dump(
        {"name": "iris", "model": {"source": "model.onnx"}, "namespace": {"name": "kcfg"}}))
    return directory


def _joined(*paths: Path | str) -> str:
    return os.pathsep.join(str(path) for path in paths)


def test_diff_finds_a_context_that_lives_in_the_second_file(tmp_path, two_files, iris_model,
                                                            control_plane):
    a, b = two_files
    project = _project(tmp_path / "project", iris_model)
    run = mlship("diff", "--context", "ctx-b", "--json", cwd=project,
                 env={"KUBECONFIG": _joined(a, b)})
    assert run.code == 0, run
    document = check_success(("diff",), run.stdout)
    assert document["server"] == control_plane.server
    assert all(entry["action"] == "create" for entry in document["objects"])


def test_the_first_file_that_sets_current_context_wins(two_files, control_plane, monkeypatch):
    """kubectl's merge rule. The client's merger alone would take the last file's (ctx-a, a
    dead cluster): mlship passes the first one's explicitly."""
    a, b = two_files
    monkeypatch.setenv("KUBECONFIG", _joined(tmp := b.parent / "absent.yaml", b, a))
    assert not tmp.exists()  # listed files that do not exist are skipped, as kubectl does
    cluster = connect(None)
    assert (cluster.context, cluster.server) == ("ctx-b", control_plane.server)
    assert cluster.default_namespace == "team-b"
    monkeypatch.setenv("KUBECONFIG", _joined(a, b))
    with pytest.raises(ClusterError, match="cannot reach the Kubernetes API"):
        connect(None, timeout=2)  # a.yaml first: its ctx-a is current


def test_an_unknown_context_lists_those_of_every_file(tmp_path, two_files, iris_model):
    a, b = two_files
    project = _project(tmp_path / "project", iris_model)
    run = mlship("diff", "--context", "ctx-c", "--json", cwd=project,
                 env={"KUBECONFIG": _joined(a, b)})
    document = check_failure(("diff",), run.stdout, 7)
    assert document["error"]["message"].startswith(f"KUBECONFIG={_joined(a, b)}: ")
    assert "ctx-c" in document["error"]["message"]
    assert document["error"]["hint"] == "contexts in it: ctx-a, ctx-b"
    assert "Traceback" not in run.stderr
