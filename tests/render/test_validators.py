"""Rendered output against the tools a platform team would run: kubernetes-validate --strict
(every Kubernetes minor from 1.29 to the newest schema shipped), checkov, hadolint, kustomize.

CRD kinds the tools have no schema for (ServiceMonitor, PrometheusRule, InferenceService,
VirtualService, HTTPRoute, PeerAuthentication, AuthorizationPolicy) are checked against the
structural schemas in tests/data/crd-schemas/, and the InferenceService's predictor pod is
validated as a v1 Pod.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from mlship_testsupport import CASES, find_tool

pytestmark = pytest.mark.validators

DATA = Path(__file__).resolve().parents[1] / "data"
OLDEST_K8S_MINOR = 29
CRD_SCHEMAS = {"ServiceMonitor": "servicemonitor.json", "PrometheusRule": "prometheusrule.json",
               "InferenceService": "inferenceservice.json",
               "VirtualService": "virtualservice.json", "HTTPRoute": "httproute.json",
               "PeerAuthentication": "peerauthentication.json",
               "AuthorizationPolicy": "authorizationpolicy.json"}
NOT_OBJECTS = {"Kustomization"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    # checkov must stay offline: no Prisma Cloud look-ups (also set by the install wrapper).
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    return subprocess.run(list(args), capture_output=True, text=True, check=False, env=env,
                          timeout=600)


def _tool(name: str) -> str:
    path = find_tool(name)
    assert path, f"{name} not installed"
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, render_case) -> Path:
    """Every representative case rendered under one directory: <root>/<case>/..."""
    from mlship.render.bundle import write_bundle

    root = tmp_path_factory.mktemp("rendered")
    for case in CASES:
        write_bundle(render_case(case), root / case)
    return root


def _manifests(root: Path) -> list[tuple[Path, dict]]:
    found = []
    for path in sorted([*root.glob("*/k8s/*.yaml"), *root.glob("*/k8s/namespace/*.yaml")]):
        for document in yaml.safe_load_all(path.read_text()):
            found.append((path, document))
    return found


def _kubernetes_versions() -> list[str]:
    help_text = _run(_tool("kubernetes-validate"), "--help").stdout
    newest = re.search(r"Defaults to 1\.(\d+)", help_text)
    assert newest, help_text
    return [f"1.{minor}.0" for minor in range(OLDEST_K8S_MINOR, int(newest[1]) + 1)]


def test_builtin_kinds_pass_kubernetes_validate_strict(rendered: Path) -> None:
    files = sorted({str(path) for path, doc in _manifests(rendered)
                    if doc["kind"] not in CRD_SCHEMAS and doc["kind"] not in NOT_OBJECTS})
    kinds = {doc["kind"] for _, doc in _manifests(rendered)}
    assert {"Deployment", "Service", "NetworkPolicy", "HorizontalPodAutoscaler", "CronJob",
            "PodDisruptionBudget", "PersistentVolumeClaim", "Namespace"} <= kinds
    versions = _kubernetes_versions()
    assert versions[0] == "1.29.0"
    assert len(versions) >= 2
    for version in versions:
        result = _run(_tool("kubernetes-validate"), "--strict", "-k", version, *files)
        assert result.returncode == 0, f"{version}:\n{result.stdout}{result.stderr}"
        assert "Couldn't find schema" not in result.stdout + result.stderr, version
        assert result.stdout.count("passed for resource") == len(files), version


def test_kubernetes_validate_catches_an_unknown_field(tmp_path: Path) -> None:
    """Control: the strict mode used above does reject what it should."""
    bad = tmp_path / "service.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
                   "spec: {bogus: 1, ports: [{port: 80}]}\n")
    result = _run(_tool("kubernetes-validate"), "--strict", "-k", "1.29.0", str(bad))
    assert result.returncode != 0
    assert "'bogus' was unexpected" in result.stdout + result.stderr


def test_crd_kinds_match_their_structural_schemas(rendered: Path) -> None:
    import jsonschema

    seen = set()
    for _path, doc in _manifests(rendered):
        if doc["kind"] in CRD_SCHEMAS:
            schema = json.loads((DATA / "crd-schemas" / CRD_SCHEMAS[doc["kind"]]).read_text())
            jsonschema.validate(doc, schema)
            seen.add(doc["kind"])
    assert seen == set(CRD_SCHEMAS)


def test_inference_service_predictor_is_a_valid_pod(rendered: Path, tmp_path: Path) -> None:
    (_path, service), = [(p, d) for p, d in _manifests(rendered)
                        if d["kind"] == "InferenceService"]
    pod_spec = {k: v for k, v in service["spec"]["predictor"].items()
                if k not in ("minReplicas", "maxReplicas")}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": pod_spec}
    target = tmp_path / "predictor-pod.yaml"
    target.write_text(yaml.safe_dump(pod))
    result = _run(_tool("kubernetes-validate"), "--strict", "-k", "1.29.0", str(target))
    assert result.returncode == 0, result.stdout + result.stderr


def _checkov(directory: Path, *frameworks: str) -> list[dict]:
    result = _run(_tool("checkov"), "-d", str(directory), "--framework", *frameworks,
                  "--compact", "--skip-download", "-o", "json")
    assert result.stdout.strip(), result.stderr
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def test_checkov_finds_nothing_in_rendered_output(rendered: Path) -> None:
    reports = _checkov(rendered, "kubernetes", "dockerfile")
    by_type = {report["check_type"]: report for report in reports}
    assert set(by_type) == {"kubernetes", "dockerfile"}
    failed = [(check["check_id"], check["file_path"], check["resource"])
              for report in reports for check in report["results"]["failed_checks"]]
    assert failed == []
    assert by_type["dockerfile"]["summary"]["resource_count"] == len(CASES)
    # The only skips: the digest check on workloads whose digest is not yet known, and the
    # pull-policy check on images with no registry (loaded onto the nodes, never pulled).
    skipped = {check["check_id"] for report in reports
               for check in report["results"]["skipped_checks"]}
    assert skipped <= {"CKV_K8S_43", "CKV_K8S_15"}


def test_tutorial_manifests_fail_checkov_where_ours_pass(rendered: Path) -> None:
    tutorial = _checkov(DATA / "tutorial", "kubernetes")[0]["summary"]
    ours = _checkov(rendered, "kubernetes")[0]["summary"]
    print(f"checkov {tutorial['checkov_version']}: tutorial failed {tutorial['failed']}, "
          f"mlship failed {ours['failed']}")
    assert tutorial["failed"] >= 10
    assert ours["failed"] == 0


@pytest.mark.parametrize("case", CASES)
def test_hadolint_is_clean(rendered: Path, case: str) -> None:
    result = _run(_tool("hadolint"), "--failure-threshold", "style", "--no-color",
                  str(rendered / case / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    result = _run(_tool("hadolint"), "--no-color", str(bad))
    assert result.returncode != 0
    assert "DL3006" in result.stdout


@pytest.mark.parametrize("case", CASES)
def test_kustomize_builds_every_listed_object(rendered: Path, case: str) -> None:
    k8s = rendered / case / "k8s"
    kustomize = find_tool("kustomize")
    command = [kustomize, "build", str(k8s)] if kustomize else ["kubectl", "kustomize", str(k8s)]
    result = _run(*command)
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    listed = yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
    assert len(built) == len(listed)
    # The Namespace is never the app's (`kubectl delete -k` would take every app in it).
    assert "Namespace" not in {doc["kind"] for doc in built}
    if (k8s / "namespace").is_dir():
        shared = _run(*command[:-1], str(k8s / "namespace"))
        assert shared.returncode == 0, shared.stderr
        assert [doc["kind"] for doc in yaml.safe_load_all(shared.stdout) if doc] == ["Namespace"]
