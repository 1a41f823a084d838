"""render(config, signature) -> Bundle: what is rendered, and the rules behind the values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mlship.config.load import validate_config
from mlship.render.bundle import render, write_bundle
from mlship.render.context import startup_budget_s
from mlship.resources import templates_dir

DIGEST = "sha256:" + "ab" * 32
RUNTIME_FIELDS = ("model", "model_name", "host", "port", "workers", "provider",
                  "intra_op_threads", "inter_op_threads", "max_batch_size",
                  "max_queue_delay_ms", "max_queue_size", "batching", "max_body_bytes",
                  "request_timeout_s", "drain_grace_s", "log_format", "log_level")


def _config(**sections: object):
    return validate_config({"name": "iris", "model": {"source": "iris.onnx"}, **sections})


def _docs(bundle, path: str) -> dict:
    return yaml.safe_load(bundle.files[path])


def _pod(bundle) -> dict:
    return _docs(bundle, "k8s/deployment.yaml")["spec"]["template"]["spec"]


def test_templates_are_found() -> None:
    assert (templates_dir() / "k8s" / "deployment.yaml.jinja").is_file()


def test_default_bundle_has_the_hardened_set(iris_signature) -> None:
    bundle = render(_config(), iris_signature)
    assert sorted(bundle.files) == [
        ".dockerignore", "Dockerfile", "k8s/configmap.yaml", "k8s/deployment.yaml",
        "k8s/kustomization.yaml", "k8s/namespace/kustomization.yaml",
        "k8s/namespace/namespace.yaml", "k8s/networkpolicy.yaml",
        "k8s/poddisruptionbudget.yaml", "k8s/service.yaml", "k8s/serviceaccount.yaml"]
    kustomization = _docs(bundle, "k8s/kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        p.removeprefix("k8s/") for p in bundle.files
        if p.startswith("k8s/") and p.count("/") == 1 and p != "k8s/kustomization.yaml")
    assert _docs(bundle, "k8s/namespace/kustomization.yaml")["resources"] == ["namespace.yaml"]


def test_render_is_deterministic(iris_signature) -> None:
    assert render(_config(), iris_signature) == render(_config(), iris_signature)


def test_every_object_is_labelled_and_namespaced(iris_signature) -> None:
    bundle = render(_config(labels={"team": "fraud-core"}), iris_signature)
    for path in bundle.files:
        if not path.startswith("k8s/") or path.endswith("kustomization.yaml"):
            continue
        doc = _docs(bundle, path)
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "mlship", path
        if doc["kind"] != "Namespace":  # shared by every app in it: no app's labels
            assert labels["team"] == "fraud-core", path
            assert doc["metadata"]["namespace"] == "mlship", path


def test_namespace_carries_pod_security_restricted(iris_signature) -> None:
    labels = _docs(render(_config(), iris_signature),
                   "k8s/namespace/namespace.yaml")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    bundle = render(_config(namespace={"name": "shared", "create": False}), iris_signature)
    assert not [path for path in bundle.files if path.startswith("k8s/namespace")]


def test_pod_meets_restricted_security(iris_signature) -> None:
    pod = _pod(render(_config(), iris_signature))
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["runAsUser"] == security["runAsGroup"] == 10001
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_probes_tell_ready_from_live(iris_signature) -> None:
    container = _pod(render(_config(), iris_signature))["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


@pytest.mark.parametrize(("size_mb", "kind", "expected"), [
    (1, "image", 30),           # floor: (5 + 0.01) * 2 rounds below 30
    (2000, "image", 50),        # (5 + 20) * 2
    (2000, "s3", 140),          # (5 + 20 + 2000 MB / 50 MB/s + 2000 MB / 400 MB/s sha256) * 2
])
def test_startup_budget_follows_model_size(size_mb: int, kind: str, expected: int) -> None:
    source = "s3://bucket/model.onnx" if kind == "s3" else "iris.onnx"
    config = validate_config({"name": "iris", "model": {"source": source}})
    assert startup_budget_s(config, size_mb * 10**6) == expected


@pytest.mark.parametrize(("load_s", "kind", "expected"), [
    (120.0, "image", 250),      # (5 + 120 measured) * 2: the 1 MB file alone would give 30
    (0.4, "image", 30),         # a fast model keeps the floor
    (120.0, "s3", 340),         # (5 + 120 + 2000 MB / 50 MB/s + 2000 MB / 400 MB/s) * 2
])
def test_startup_budget_follows_the_measured_load_time(load_s: float, kind: str,
                                                       expected: int) -> None:
    source = "s3://bucket/model.onnx" if kind == "s3" else "iris.onnx"
    size = 2000 * 10**6 if kind == "s3" else 10**6
    config = validate_config({"name": "iris", "model": {
        "source": source, "load_seconds": load_s, "size_bytes": size}})
    assert startup_budget_s(config, size) == expected
    if kind == "s3":  # no local file: the rendered probe is sized from model.size_bytes
        startup = _pod(render(config, None))["containers"][0]["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] == expected


def test_each_model_adds_its_own_measured_or_estimated_load() -> None:
    config = validate_config({"name": "iris", "model": {"source": "iris.onnx",
                                                        "load_seconds": 40.0},
                              "models": [{"name": "rank", "source": "rank.onnx"}]})
    # (5 + 40 measured + 1 s per 100 MB of rank's 1000 MB) * 2
    assert startup_budget_s(config, {"iris": 10**6, "rank": 10**9}) == 110


def test_startup_probe_covers_budget_for_big_remote_model() -> None:
    config = validate_config({"name": "big", "model": {
        "source": "s3://bucket/big.onnx", "size_bytes": 4 * 10**9}})
    startup = _pod(render(config, None))["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= startup_budget_s(
        config, 4 * 10**9) == 270


def test_termination_grace_covers_drain(iris_signature) -> None:
    pod = _pod(render(_config(runtime={"drain_grace_s": 40}), iris_signature))
    sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    # SIGKILL only after the preStop sleep and the whole drain, with room to spare.
    assert pod["terminationGracePeriodSeconds"] > sleep + 40


def test_rolling_update_never_drops_capacity(iris_signature) -> None:
    spec = _docs(render(_config(), iris_signature), "k8s/deployment.yaml")["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert spec["replicas"] == 2


def test_configmap_carries_every_runtime_setting(iris_signature) -> None:
    data = _docs(render(_config(runtime={"port": 9000}), iris_signature),
                 "k8s/configmap.yaml")["data"]
    for field in RUNTIME_FIELDS:
        assert f"MLSHIP_RUNTIME_{field.upper()}" in data
    assert data["MLSHIP_RUNTIME_PORT"] == "9000"
    assert data["MLSHIP_RUNTIME_MODEL"] == "/models/iris.onnx"
    assert all(isinstance(value, str) for value in data.values())


def test_image_pull_policy_follows_digest_and_registry(iris_signature) -> None:
    tagged = render(_config(image={"registry": "ghcr.io/acme"}), iris_signature)
    container = _pod(tagged)["containers"][0]
    assert container["image"] == f"ghcr.io/acme/iris:model-{iris_signature.sha256[:12]}"
    assert container["imagePullPolicy"] == "Always"
    assert tagged.warnings == ()
    pinned = render(_config(image={"registry": "ghcr.io/acme", "digest": DIGEST}),
                    iris_signature)
    container = _pod(pinned)["containers"][0]
    assert container["image"] == f"ghcr.io/acme/iris@{DIGEST}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert "annotations" not in _docs(pinned, "k8s/deployment.yaml")["metadata"]


def test_an_image_with_no_registry_is_never_pulled_and_render_says_so(iris_signature) -> None:
    """As `init` writes it: a local image (kind load, k3d image import). Always would send
    every node to Docker Hub for it."""
    local = render(_config(), iris_signature)
    container = _pod(local)["containers"][0]
    assert container["image"] == f"iris:model-{iris_signature.sha256[:12]}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    annotations = _docs(local, "k8s/deployment.yaml")["metadata"]["annotations"]
    assert annotations["checkov.io/skip2"].startswith("CKV_K8S_15=")
    [warning] = local.warnings
    for words in ("image.registry is unset", container["image"], "kind load docker-image",
                  "k3d image import"):
        assert words in warning
    kserve = render(_config(), iris_signature, target="kserve")
    spec = _docs(kserve, "k8s/inferenceservice.yaml")["spec"]["predictor"]["containers"][0]
    assert spec["imagePullPolicy"] == "IfNotPresent"


def test_network_policy_allows_only_serving_port_and_dns(iris_signature) -> None:
    spec = _docs(render(_config(), iris_signature), "k8s/networkpolicy.yaml")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert [rule["ports"] for rule in spec["ingress"]] == [[{"protocol": "TCP", "port": 8080}]]
    assert len(spec["egress"]) == 1
    assert {p["port"] for p in spec["egress"][0]["ports"]} == {53}


def test_s3_source_downloads_into_sized_cache_with_secret_file() -> None:
    config = validate_config({"name": "fraud", "model": {
        "source": "s3://models/fraud.onnx", "size_bytes": 500 * 2**20,
        "s3": {"credentials_secret": "fraud-s3", "egress_cidrs": ["10.0.0.0/8"],
               "egress_port": 9000, "endpoint_url": "http://minio:9000"}}})
    bundle = render(config, None)
    assert "model/" not in bundle.files[".dockerignore"]
    assert "COPY model/" not in bundle.files["Dockerfile"]
    pod = _pod(bundle)
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["sizeLimit"] == "64Mi"  # scratch only
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert cache["emptyDir"]["sizeLimit"] == "566Mi"  # 1.1 x 500 MiB + 16 MiB (render_storage)
    assert {"name": "aws-credentials", "secret": {"secretName": "fraud-s3",
                                                  "defaultMode": 0o440}} in pod["volumes"]
    data = _docs(bundle, "k8s/configmap.yaml")["data"]
    assert data["MLSHIP_RUNTIME_MODEL"] == "s3://models/fraud.onnx"
    assert data["AWS_ENDPOINT_URL"] == "http://minio:9000"
    egress = _docs(bundle, "k8s/networkpolicy.yaml")["spec"]["egress"]
    assert egress[1] == {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                         "ports": [{"protocol": "TCP", "port": 9000}]}


def test_irsa_role_annotates_service_account() -> None:
    config = validate_config({"name": "fraud", "model": {
        "source": "s3://models/fraud.onnx",
        "s3": {"role_arn": "arn:aws:iam::123456789012:role/r"}}})
    account = _docs(render(config, None), "k8s/serviceaccount.yaml")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn":
                                                  "arn:aws:iam::123456789012:role/r"}
    assert account["automountServiceAccountToken"] is False


def test_no_secret_object_or_value_is_ever_rendered(iris_signature) -> None:
    bundle = render(_config(env={"secrets": [{"name": "api-key", "mount_path": "/secrets"}]}),
                    iris_signature)
    for path, text in bundle.files.items():
        if path.endswith(".yaml"):
            assert all(doc["kind"] != "Secret" for doc in yaml.safe_load_all(text)), path
    mounts = _pod(bundle)["containers"][0]["volumeMounts"]
    assert {"name": "secret-0-api-key", "mountPath": "/secrets", "readOnly": True} in mounts


def test_hpa_replaces_fixed_replicas_and_reads_custom_metrics(iris_signature) -> None:
    bundle = render(_config(autoscaling={"enabled": True, "queue_depth_target": 4,
                                         "p99_latency_ms_target": 250}), iris_signature)
    assert "replicas" not in _docs(bundle, "k8s/deployment.yaml")["spec"]
    metrics = _docs(bundle, "k8s/horizontalpodautoscaler.yaml")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods", "Pods"]
    assert metrics[1]["pods"]["metric"]["name"] == "mlship_queue_depth"
    assert metrics[2]["pods"]["target"]["averageValue"] == "250m"


def test_gpu_schedules_on_gpu_nodes(iris_signature) -> None:
    bundle = render(_config(gpu={"enabled": True}, runtime={"provider": "cuda"}),
                    iris_signature)
    pod = _pod(bundle)
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    froms = re.findall(r"^FROM (\S+) AS", bundle.files["Dockerfile"], flags=re.MULTILINE)
    assert froms == ["nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"] * 2


def test_dockerfile_bakes_model_last_and_runs_unprivileged(iris_signature) -> None:
    dockerfile = render(_config(), iris_signature).files["Dockerfile"]
    layers = [line.split()[0] for line in dockerfile.splitlines()
              if line.split() and line.split()[0] in ("RUN", "COPY", "ADD")]
    assert layers[-1] == "COPY"
    assert dockerfile.splitlines()[[i for i, line in enumerate(dockerfile.splitlines())
                                    if line.startswith(("RUN", "COPY"))][-1]] == \
        "COPY model/ /models/"
    assert "USER 10001:10001" in dockerfile
    assert 'HEALTHCHECK' in dockerfile
    assert '"mlship_runtime.healthcheck"' in dockerfile
    assert 'ENTRYPOINT ["/opt/venv/bin/python", "-m", "mlship_runtime"]' in dockerfile
    assert "--no-index \\\n        --find-links /wheels" in dockerfile
    assert "--require-hashes" in dockerfile
    assert "curl" not in dockerfile
    assert "gcc" not in dockerfile
    assert f'dev.mlship.model.sha256="{iris_signature.sha256}"' in dockerfile


def test_index_install_mode_uses_an_index(iris_signature) -> None:
    dockerfile = render(_config(image={"install_from": "index"}), iris_signature).files[
        "Dockerfile"]
    assert "--no-index" not in dockerfile
    assert '--index-url "${PIP_INDEX_URL}"' in dockerfile


def test_dockerignore_is_an_allow_list(iris_signature) -> None:
    lines = render(_config(), iris_signature).files[".dockerignore"].splitlines()
    entries = [line for line in lines if line and not line.startswith("#")]
    assert entries == ["*", "!requirements.lock", "!wheels/", "!model/"]


def test_kserve_target_renders_inference_service(iris_signature) -> None:
    bundle = render(_config(), iris_signature, target="kserve")
    assert "k8s/deployment.yaml" not in bundle.files
    service = _docs(bundle, "k8s/inferenceservice.yaml")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    container = service["spec"]["predictor"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == _pod(render(_config(), iris_signature))["containers"][0]["image"]


def test_batch_cronjob_is_hardened_like_the_deployment(iris_signature) -> None:
    bundle = render(_config(batch={"enabled": True, "input": "s3://b/in",
                                   "output": "s3://b/out"}), iris_signature)
    job = _docs(bundle, "k8s/cronjob.yaml")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = job["containers"][0]
    assert container["command"][-1] == "mlship_runtime.batch"
    assert container["args"] == ["--input", "s3://b/in", "--output", "s3://b/out"]
    assert container["securityContext"] == _pod(bundle)["containers"][0]["securityContext"]


def test_monitoring_objects_and_dashboard(iris_signature) -> None:
    bundle = render(_config(monitoring={"service_monitor": True, "prometheus_rule": True,
                                        "dashboard": "configmap"}), iris_signature)
    rules = _docs(bundle, "k8s/prometheusrule.yaml")["spec"]["groups"][0]["rules"]
    assert "mlship_requests_total" in rules[0]["expr"]
    assert "mlship_request_duration_seconds_bucket" in rules[1]["expr"]
    dashboard = _docs(bundle, "k8s/grafana-dashboard.yaml")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    as_file = render(_config(monitoring={"dashboard": "file"}), iris_signature)
    assert "grafana/dashboard.json" in as_file.files


def test_write_bundle_removes_objects_no_longer_rendered(tmp_path: Path, iris_signature) -> None:
    write_bundle(render(_config(autoscaling={"enabled": True}), iris_signature), tmp_path)
    assert (tmp_path / "k8s" / "horizontalpodautoscaler.yaml").exists()
    write_bundle(render(_config(), iris_signature), tmp_path)
    assert not (tmp_path / "k8s" / "horizontalpodautoscaler.yaml").exists()
    assert (tmp_path / "Dockerfile").read_text().startswith("# Rendered by mlship")


def test_from_is_pinned_by_the_base_digest_once_known(iris_signature) -> None:
    froms = [line for line in render(_config(), iris_signature, base_digest=DIGEST)
             .files["Dockerfile"].splitlines() if line.startswith("FROM ")]
    assert froms == [f"FROM python:3.11-slim-bookworm@{DIGEST} AS builder",
                     f"FROM python:3.11-slim-bookworm@{DIGEST} AS runtime"]
    written = f"python:3.11-slim-bookworm@sha256:{'cd' * 32}"  # pinned in image.base: kept
    dockerfile = render(_config(image={"base": written}), iris_signature,
                        base_digest=DIGEST).files["Dockerfile"]
    assert f"FROM {written} AS builder" in dockerfile
    assert DIGEST not in dockerfile
