"""After a promote, mlship's view of the app is the cluster's: `diff` finds no differences and
`deploy` changes nothing (no new generation, no pod rolled), against the real API server and
the open loopback registry, where mlship.yaml's tag resolves to the promoted digest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mlship_contract import check_success, mlship
from mlship_rollout import NAME, deployment, image_of

pytestmark = [pytest.mark.k8s, pytest.mark.registry]

REGISTRY = "127.0.0.1:5000"
REPOSITORY = f"mlship-tests/deployed-{os.getpid()}"


def push_manifest(tag: str, content: str) -> str:
    """An image manifest (one small config blob, no layers) under ``tag``; its digest. Pods
    never pull it (kwok runs no containers): the registry only has to name its digest."""
    base = f"http://{REGISTRY}/v2/{REPOSITORY}"
    blob = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": []},
                       "history": [{"comment": content}]}).encode()
    blob_digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
    with httpx.Client(timeout=10) as client:
        start = client.post(f"{base}/blobs/uploads/")
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        location = location if location.startswith("http") else f"http://{REGISTRY}{location}"
        put = client.put(httpx.URL(location).copy_merge_params({"digest": blob_digest}),
                         content=blob,
                         headers={"Content-Type": "application/octet-stream"})
        assert put.status_code == 201, put.text
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": blob_digest, "size": len(blob)},
            "layers": []}).encode()
        sent = client.put(f"{base}/manifests/{tag}", content=manifest,
                          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert sent.status_code == 201, sent.text
    return f"sha256:{hashlib.sha256(manifest).hexdigest()}"


def write_config(directory: Path, model: Path, namespace: str, tag: str) -> Path:
    config = directory / "mlship.yaml"
    config.write_text(yaml.safe_dump({
        "name": NAME, "model": {"source": str(model), "version": "1"}, "replicas": 2,
        "image": {"registry": REGISTRY, "repository": REPOSITORY, "tag_policy": "fixed",
                  "tag": tag},
        "namespace": {"name": namespace, "create": False},
        "rollout": {"traffic": "replicas"}}))
    return config


def run(config: Path, kubeconfig: Path, *argv: str) -> Any:
    return mlship(*argv, "-c", str(config), "--kubeconfig", str(kubeconfig), cwd=config.parent)


def test_after_a_promote_diff_finds_nothing_and_deploy_changes_nothing(
        control_plane, k8s_namespace, iris_model, tmp_path):
    kubeconfig = control_plane.kubeconfig
    push_manifest("1", "one")
    config = write_config(tmp_path, iris_model, k8s_namespace, "1")
    first = run(config, kubeconfig, "deploy")
    assert first.code == 0, first
    # v2 is built and pushed under the tag mlship.yaml will name; the canary gets the digest
    # `mlship push --json` printed, and is promoted.
    digest = push_manifest("2", "two")
    pinned = f"{REGISTRY}/{REPOSITORY}@{digest}"
    promoted = run(config, kubeconfig, "rollout", "bluegreen", "--image", pinned, "--promote")
    assert promoted.code == 0, promoted
    live = deployment(control_plane, k8s_namespace, NAME)
    assert image_of(live) == pinned
    record = json.loads(live["metadata"]["annotations"]["mlship.dev/deployed"])
    assert (record["image"], record["digest"], record["action"]) == (pinned, digest, "promote")

    config = write_config(tmp_path, iris_model, k8s_namespace, "2")  # the user's next edit
    # A server dry run takes back the rollout's fields as the real deploy does: no exit 7.
    dry = run(config, kubeconfig, "deploy", "--dry-run", "server", "--json")
    assert dry.code == 0, dry
    assert f"image: {REGISTRY}/{REPOSITORY}:2 is {digest}, the image promote put there" \
        in dry.stderr
    assert "would take back the fields a finished rollout changed on Deployment" in dry.stderr
    assert check_success(("deploy",), dry.stdout)["changed"] is False
    same = run(config, kubeconfig, "diff", "--exit-code")
    assert same.code == 0, same
    assert same.stdout == ""
    assert "no differences" in same.stderr
    document = check_success(("diff",), run(config, kubeconfig, "diff", "--json").stdout)
    assert {entry["action"] for entry in document["objects"]} == {"none"}

    again = run(config, kubeconfig, "deploy", "--json")
    assert again.code == 0, again
    assert check_success(("deploy",), again.stdout)["changed"] is False
    after = deployment(control_plane, k8s_namespace, NAME)
    assert after["metadata"]["generation"] == live["metadata"]["generation"]
    assert image_of(after) == pinned
    managers = {entry["manager"] for entry in after["metadata"]["managedFields"]}
    assert "mlship-rollout" not in managers  # taken back: the next deploy owns it all again


def test_a_tag_that_moved_on_is_a_change(control_plane, k8s_namespace, iris_model, tmp_path):
    kubeconfig = control_plane.kubeconfig
    first = push_manifest("3", "three")
    config = write_config(tmp_path, iris_model, k8s_namespace, "3")
    assert run(config, kubeconfig, "deploy").code == 0
    live = deployment(control_plane, k8s_namespace, NAME)
    record = json.loads(live["metadata"]["annotations"]["mlship.dev/deployed"])
    tagged = f"{REGISTRY}/{REPOSITORY}:3"
    assert (record["image"], record["digest"], record["action"]) == (tagged, first, "deploy")
    # The template names the tag: the recorded digest never replaces it.
    same = run(config, kubeconfig, "diff", "--exit-code")
    assert same.code == 0, same
    assert "keeping" not in same.stderr
    pinned = f"{REGISTRY}/{REPOSITORY}@{first}"
    assert run(config, kubeconfig, "rollout", "bluegreen", "--image", pinned,
               "--promote").code == 0
    assert run(config, kubeconfig, "diff", "--exit-code").code == 0
    push_manifest("3", "three, rebuilt")  # the tag now names another image
    moved = run(config, kubeconfig, "diff", "--exit-code")
    assert moved.code == 12, moved
    assert f"-        image: {pinned}\n" in moved.stdout
    assert f"+        image: {tagged}\n+        imagePullPolicy: Always\n" in moved.stdout
    assert "mlship.dev/deployed" not in moved.stdout
    assert "mlship.dev/rollout" not in moved.stdout
