"""Rendered objects for gs:// models (mlship.render.storage): the runtime's env, the cache, a
key-file Secret or GKE Workload Identity, egress; and the objects accepted by a real API
server."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from mlship.config.load import validate_config
from mlship.config.paths import GCP_CREDENTIALS_DIR, MODEL_CACHE_DIR
from mlship.errors import ConfigError
from mlship.render.bundle import render
from mlship.render.storage import cache_bytes

SHA = "cd" * 32
GSA = "ranker-models@acme-ml.iam.gserviceaccount.com"


def _gs(**gcs: object) -> dict:
    return {"source": "gs://acme-models/ranker/v7/model.onnx", "sha256": SHA,
            "size_bytes": 10**9, "gcs": gcs}


def _bundle(**sections: object):
    return render(validate_config({"name": "ranker", **sections}), None)


def _env(bundle) -> dict[str, str]:
    return yaml.safe_load(bundle.files["k8s/configmap.yaml"])["data"]


def _pod(bundle) -> dict:
    return yaml.safe_load(bundle.files["k8s/deployment.yaml"])["spec"]["template"]["spec"]


def _egress(bundle) -> list[dict[str, Any]]:
    return yaml.safe_load(bundle.files["k8s/networkpolicy.yaml"])["spec"]["egress"]


def test_workload_identity_annotates_the_service_account_and_opens_the_metadata_server():
    bundle = _bundle(model=_gs(workload_identity=GSA))
    account = yaml.safe_load(bundle.files["k8s/serviceaccount.yaml"])
    assert account["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": GSA}
    env = _env(bundle)
    assert env["MLSHIP_RUNTIME_MODEL"] == "gs://acme-models/ranker/v7/model.onnx"
    assert env["MLSHIP_RUNTIME_MODEL_SHA256"] == SHA
    assert env["MLSHIP_RUNTIME_CACHE_DIR"] == MODEL_CACHE_DIR
    assert not [key for key in env if key.startswith(("AWS_", "GOOGLE_", "STORAGE_"))]
    pod = _pod(bundle)
    assert pod["serviceAccountName"] == "ranker"
    assert pod["automountServiceAccountToken"] is False  # GKE's metadata server needs none
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert cache["emptyDir"]["sizeLimit"] == f"{-(-cache_bytes(10**9) // 2**20)}Mi"
    assert "gcp-credentials" not in {v["name"] for v in pod["volumes"]}
    assert _egress(bundle)[1:] == [
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 443}]},
        {"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}],
         "ports": [{"protocol": "TCP", "port": 80}]},
        {"to": [{"ipBlock": {"cidr": "169.254.169.252/32"}}],
         "ports": [{"protocol": "TCP", "port": 988}]}]
    probe = pod["containers"][0]["startupProbe"]
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 2 * 10**9 / 50e6


def test_a_key_file_secret_is_mounted_as_a_file_never_as_env():
    bundle = _bundle(model=_gs(credentials_secret="ranker-gcs-key", egress_cidrs=["10.1.0.0/16"],
                               egress_port=8443))
    env = _env(bundle)
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == f"{GCP_CREDENTIALS_DIR}/key.json"
    pod = _pod(bundle)
    secret = next(v for v in pod["volumes"] if v["name"] == "gcp-credentials")
    assert secret["secret"] == {"secretName": "ranker-gcs-key", "defaultMode": 0o440,
                                "items": [{"key": "key.json", "path": "key.json"}]}
    container = pod["containers"][0]
    assert {"name": "gcp-credentials", "mountPath": GCP_CREDENTIALS_DIR, "readOnly": True} in \
        container["volumeMounts"]
    assert not [item for item in container.get("env", []) if "valueFrom" in item
                and "secretKeyRef" in item["valueFrom"]]
    assert "annotations" not in yaml.safe_load(bundle.files["k8s/serviceaccount.yaml"])[
        "metadata"]
    assert _egress(bundle)[1:] == [{"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}],
                                    "ports": [{"protocol": "TCP", "port": 8443}]}]


def test_endpoints_an_emulator_or_private_service_connect():
    emulator = _env(_bundle(model=_gs(endpoint_url="http://gcs.test.svc:4443", emulator=True)))
    assert emulator["STORAGE_EMULATOR_HOST"] == "http://gcs.test.svc:4443"
    assert "MLSHIP_GCS_ENDPOINT_URL" not in emulator
    private = _env(_bundle(model=_gs(endpoint_url="https://storage-acme.p.googleapis.com")))
    assert private["MLSHIP_GCS_ENDPOINT_URL"] == "https://storage-acme.p.googleapis.com"
    assert "STORAGE_EMULATOR_HOST" not in private


@pytest.mark.parametrize(("model", "where"), [
    ({"source": "gs://UPPER/m.onnx"}, "model.source"),
    ({"source": "gs://goog-models/m.onnx"}, "model.source"),
    ({"source": "gs://acme-models/"}, "model.source"),
    (_gs(workload_identity="not-an-account"), "model.gcs.workload_identity"),
    (_gs(workload_identity=GSA, credentials_secret="key"), "model.gcs.workload_identity"),
    (_gs(emulator=True), "model.gcs.emulator"),
])
def test_bad_gcs_settings_name_the_key(model, where):
    with pytest.raises(ConfigError) as err:
        validate_config({"name": "ranker", "model": model})
    assert where in str(err.value)


def test_models_of_a_repository_come_from_one_store():
    with pytest.raises(ConfigError, match=r"models\[0\]\.source.*\(gs://\)"):
        validate_config({"name": "ranker", "model": _gs(),
                         "models": [{"name": "other", "source": "s3://lake/other.onnx"}]})
    config = validate_config({"name": "ranker", "model": _gs(), "models": [
        {"name": "other", "source": "gs://acme-models/other/m.onnx", "sha256": "ef" * 32}]})
    document = yaml.safe_load(_env(render(config, None))["MLSHIP_RUNTIME_MODELS"])
    assert [(m["path"], m.get("sha256")) for m in document["models"]] == [
        ("gs://acme-models/ranker/v7/model.onnx", SHA),
        ("gs://acme-models/other/m.onnx", "ef" * 32)]


@pytest.mark.k8s
@pytest.mark.parametrize("gcs", [{"workload_identity": GSA},
                                 {"credentials_secret": "ranker-gcs-key"}],
                         ids=["workload-identity", "key-file"])
def test_rendered_gcs_objects_are_accepted_by_the_api_server(control_plane, k8s_namespace, gcs):
    """Every object, strictly validated by a real kube-apiserver (unknown or misplaced fields
    are refused), then created: the ServiceAccount keeps its Workload Identity annotation."""
    from mlship.cluster.apply import plan

    bundle = _bundle(model=_gs(**gcs), namespace={"name": k8s_namespace})
    objects = [obj for obj in plan(bundle) if obj["kind"] != "Namespace"]
    assert {"ServiceAccount", "Deployment", "NetworkPolicy", "ConfigMap"} <= \
        {obj["kind"] for obj in objects}
    for obj in objects:
        path = control_plane.resource_path(obj["apiVersion"], obj["kind"], k8s_namespace,
                                           obj["metadata"]["name"])
        control_plane.request("PATCH", path, obj, content_type="application/apply-patch+yaml",
                              query={"fieldManager": "mlship", "fieldValidation": "Strict",
                                     "force": "true"})
    account_path = control_plane.resource_path("v1", "ServiceAccount", k8s_namespace, "ranker")
    _, account = control_plane.request("GET", account_path)
    annotations = account["metadata"].get("annotations") or {}
    assert annotations.get("iam.gke.io/gcp-service-account") == gcs.get("workload_identity")
    _, deployment = control_plane.request("GET", control_plane.resource_path(
        "apps/v1", "Deployment", k8s_namespace, "ranker"))
    volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert ("gcp-credentials" in volumes) == ("credentials_secret" in gcs)


def test_a_gs_model_with_an_s3_batch_job_gets_both_stores():
    bundle = _bundle(model=_gs(workload_identity=GSA, egress_cidrs=["10.1.0.0/16"]),
                     batch={"enabled": True, "input": "s3://lake/in/", "output": "s3://lake/out/"})
    env = _env(bundle)
    assert env["MLSHIP_RUNTIME_MODEL"].startswith("gs://")
    assert env["AWS_REGION"] == "us-east-1"
    assert env["MLSHIP_RUNTIME_CACHE_DIR"] == MODEL_CACHE_DIR
    assert "model-cache" in {v["name"] for v in _pod(bundle)["volumes"]}
    cidrs = [rule["to"][0]["ipBlock"]["cidr"] for rule in _egress(bundle)[1:]]
    assert cidrs == ["0.0.0.0/0", "10.1.0.0/16", "169.254.169.254/32", "169.254.169.252/32"]
