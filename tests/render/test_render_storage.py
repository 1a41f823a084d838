"""Rendered objects for S3 models and S3 batch jobs (mlship.render_storage)."""

from __future__ import annotations

import shlex

import pytest
import yaml
from mlship_testsupport import CASES, CONFIG_CASES

from mlship.config.load import validate_config
from mlship.config.paths import MODEL_CACHE_DIR, TOKEN_DIR
from mlship.render.bundle import render
from mlship.render.storage import cache_bytes

SHA = "ab" * 32


def _s3(**s3: object) -> dict:
    return {"source": "s3://models/fraud/v3/model.onnx", "sha256": SHA,
            "size_bytes": 5 * 10**9, "s3": s3}


def _bundle(**sections: object):
    return render(validate_config({"name": "fraud", **sections}), None)


def _pod(bundle, path: str = "k8s/deployment.yaml") -> dict:
    doc = yaml.safe_load(bundle.files[path])
    return doc["spec"]["template"]["spec"] if "template" in doc["spec"] else \
        doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_irsa_renders_role_annotation_projected_token_and_env() -> None:
    role = "arn:aws:iam::123456789012:role/fraud-models"
    bundle = _bundle(model=_s3(role_arn=role))
    env = yaml.safe_load(bundle.files["k8s/configmap.yaml"])["data"]
    assert env["AWS_ROLE_ARN"] == role
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == f"{TOKEN_DIR}/token"
    assert "AWS_SHARED_CREDENTIALS_FILE" not in env
    assert env["MLSHIP_RUNTIME_MODEL_SHA256"] == SHA
    assert env["MLSHIP_RUNTIME_CACHE_DIR"] == MODEL_CACHE_DIR
    account = yaml.safe_load(bundle.files["k8s/serviceaccount.yaml"])
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role
    pod = _pod(bundle)
    assert pod["automountServiceAccountToken"] is False  # only the STS-audience token
    token = next(v for v in pod["volumes"] if v["name"] == "aws-iam-token")
    assert token["projected"]["sources"] == [{"serviceAccountToken": {
        "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["aws-iam-token"] == {"name": "aws-iam-token", "mountPath": TOKEN_DIR,
                                       "readOnly": True}


def test_cache_size_and_startup_probe_follow_the_model_size() -> None:
    small, large = _bundle(model={**_s3(), "size_bytes": 10**8}), _bundle(model=_s3())
    for bundle, size in ((small, 10**8), (large, 5 * 10**9)):
        pod = _pod(bundle)
        cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
        assert cache["emptyDir"]["sizeLimit"] == f"{-(-cache_bytes(size) // 2**20)}Mi"
        tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
        assert tmp["emptyDir"]["sizeLimit"] == "64Mi"  # downloads go to the cache, not /tmp
    probe = [_pod(b)["containers"][0]["startupProbe"] for b in (small, large)]
    # 5 GB at the assumed 50 MB/s is 100 s of download alone, doubled for safety.
    assert probe[0]["failureThreshold"] * probe[0]["periodSeconds"] == 30
    assert probe[1]["failureThreshold"] * probe[1]["periodSeconds"] >= 2 * 100


def test_s3_batch_job_runs_the_runtime_batch_module_with_s3_access() -> None:
    import importlib.util

    from mlship_runtime.batch import _parser

    bundle = _bundle(
        model={"source": "pvc://models/v1/fraud.onnx", "s3": {"credentials_secret": "lake"}},
        batch={"enabled": True, "input": "s3://lake/in/", "output": "s3://lake/out/"})
    container = _pod(bundle, "k8s/cronjob.yaml")["containers"][0]
    command = container["command"]
    assert command[-2:] == ["-m", "mlship_runtime.batch"]
    assert importlib.util.find_spec("mlship_runtime.batch") is not None
    args = _parser().parse_args(container["args"])  # the image's runner accepts them
    assert (args.input, args.output) == ("s3://lake/in/", "s3://lake/out/")
    env = yaml.safe_load(bundle.files["k8s/configmap.yaml"])["data"]
    assert env["AWS_SHARED_CREDENTIALS_FILE"].endswith("/credentials")
    assert "MLSHIP_RUNTIME_CACHE_DIR" not in env  # the model is on a volume
    names = [m["name"] for m in container["volumeMounts"]]
    assert "aws-credentials" in names
    assert "model-cache" not in names
    egress = yaml.safe_load(bundle.files["k8s/networkpolicy.yaml"])["spec"]["egress"]
    assert {"protocol": "TCP", "port": 443} in egress[-1]["ports"]
    assert shlex.join(command).startswith("/opt/venv/bin/python")


def test_no_s3_means_no_aws_anything(iris_signature) -> None:
    bundle = render(validate_config({"name": "iris", "model": {"source": "iris.onnx"}}),
                    iris_signature)
    env = yaml.safe_load(bundle.files["k8s/configmap.yaml"])["data"]
    assert not [key for key in env if key.startswith("AWS_")]
    assert "MLSHIP_RUNTIME_CACHE_DIR" not in env
    egress = yaml.safe_load(bundle.files["k8s/networkpolicy.yaml"])["spec"]["egress"]
    assert len(egress) == 1  # DNS only


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_mount_render_adds_is_a_path_users_may_not_mount_over(case, render_case) -> None:
    """mlship.config.paths is the list a user's mount_path is checked against: every mount
    render itself adds is in it (or is the model volume the config chose)."""
    from mlship.config.paths import MODEL_DIR, RUNTIME_PATHS

    bundle = render_case(case)
    config = yaml.safe_load((CONFIG_CASES / f"{case}.yaml").read_text())
    chosen = {secret["mount_path"] for secret in config.get("env", {}).get("secrets", [])}
    chosen.add(config.get("model", {}).get("volume", {}).get("mount_path", MODEL_DIR))
    checked = 0
    for obj in bundle.objects:
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec") or \
            spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec") or \
            spec.get("predictor") or {}
        for container in pod.get("containers", []):
            for mount in container.get("volumeMounts", []):
                path = mount["mountPath"]
                assert path in chosen or path in RUNTIME_PATHS, (case, obj["kind"], path)
                checked += 1
    assert checked, "no volumeMounts found: the test no longer reads the pod specs"


def test_pod_identity_opens_egress_to_the_node_agent_only() -> None:
    """EKS Pod Identity: the runtime fetches credentials from the node's agent on port 80,
    which the default-deny NetworkPolicy must let through, and nothing else more."""
    plain = yaml.safe_load(_bundle(model=_s3()).files["k8s/networkpolicy.yaml"])["spec"]["egress"]
    bundle = _bundle(model=_s3(pod_identity=True))
    egress = yaml.safe_load(bundle.files["k8s/networkpolicy.yaml"])["spec"]["egress"]
    assert egress[:-1] == plain
    assert egress[-1] == {"to": [{"ipBlock": {"cidr": "169.254.170.23/32"}},
                                 {"ipBlock": {"cidr": "fd00:ec2::23/128"}}],
                          "ports": [{"protocol": "TCP", "port": 80}]}
