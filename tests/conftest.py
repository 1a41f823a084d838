"""Shared fixtures: tiny ONNX models, infra markers, and the golden-file switch.

Infra markers (docker, k8s, pods, prometheus, registry, s3, gcs, validators) skip a test with the
reason when the thing is missing on a laptop, but fail it under CI=true: CI must never go green
by skipping.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from mlship_testsupport import CASES, CONFIG_CASES, VALIDATOR_TOOLS, find_tool, make_model

# boto3 (and the runtime's credential chain) end at the instance metadata service, off
# loopback: never ask it from a test. A test that means it points it at loopback.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# The GCS credential chain ends at Google's metadata server: a refusing loopback port instead.
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:9")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="Rewrite tests/golden/ from the current render output.")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


# ---- infra markers ----------------------------------------------------------------------


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@functools.cache
def _missing(marker: str) -> str | None:  # noqa: PLR0911 - one probe per marker
    """None when the infrastructure behind ``marker`` is usable, else why not."""
    if marker == "validators":
        absent = [tool for tool in VALIDATOR_TOOLS if find_tool(tool) is None]
        if "kustomize" in absent and shutil.which("kubectl"):
            absent.remove("kustomize")  # `kubectl kustomize` does the same job
        return f"validators missing: {', '.join(absent)} (bash .ci/install-validators.sh)" \
            if absent else None
    if marker == "docker":
        if shutil.which("docker") is None:
            return "docker CLI not found"
        probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
        return None if probe.returncode == 0 else "Docker engine not reachable"
    if marker == "k8s":
        from controlplane import binaries_available

        return binaries_available()
    if marker == "pods":  # the real node beside the control plane, and what builds images
        from controlplane import bin_dir_default, binaries_available
        from controlplane.node import node_missing

        return binaries_available() or node_missing(bin_dir_default()) or _missing("docker") \
            or _missing("registry")
    if marker == "prometheus":
        return None if _prometheus_binary() else "prometheus not found (apt-get install " \
                                                 "prometheus, or bash .ci/install-prometheus.sh)"
    if marker == "registry":
        return None if _tcp_open("127.0.0.1", 5000) else "no registry on 127.0.0.1:5000"
    if marker == "s3":  # a moto server the tests start, or MLSHIP_TEST_S3_ENDPOINT's
        return _motoserver().moto_missing()
    if marker == "gcs":  # fake-gcs-server, built by .ci/install-gcs.sh
        return _gcsserver().gcs_missing()
    return None


INFRA_MARKERS = ("docker", "k8s", "pods", "prometheus", "registry", "s3", "gcs", "validators")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in INFRA_MARKERS:
        if item.get_closest_marker(marker) is None:
            continue
        reason = _missing(marker)
        if reason is None:
            continue
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"[{marker}] required under CI=true: {reason}", pytrace=False)
        pytest.skip(f"[{marker}] {reason}")


def _prometheus_binary() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)


@pytest.fixture(scope="session")
def control_plane():
    """One real loopback control plane (tests/k8s/controlplane/) for the whole session.

    Tests share it, so each works in its own namespace (see ``k8s_namespace``).
    """
    from controlplane import binaries_available

    missing = binaries_available()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"[k8s] required under CI=true: {missing}", pytrace=False)
        pytest.skip(f"[k8s] {missing}")
    plane = _started_control_plane()
    try:
        yield plane
    finally:
        plane.stop()


def _started_control_plane():
    """A second attempt after a failed start: a start-up hiccup of etcd or kube-apiserver on a
    loaded machine is not what any test is about. The first failure's logs are kept and named."""
    import warnings

    from controlplane import ControlPlane, ControlPlaneError

    try:
        return ControlPlane().start()
    except ControlPlaneError as first:
        warnings.warn(f"control plane start failed once, retrying: {first}", stacklevel=2)
        return ControlPlane().start()


@pytest.fixture
def k8s_namespace(control_plane, request: pytest.FixtureRequest) -> str:
    """A fresh namespace named after the test, labelled for PodSecurity 'restricted'."""
    import re
    import uuid

    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    control_plane.create_namespace(name, pod_security="restricted")
    return name


@pytest.fixture(scope="session")
def real_node(control_plane):
    """The control plane's real node (containerd, kubelet, kube-proxy; see
    tests/k8s/controlplane/node.py), started beside the kwok nodes by the first test that asks;
    use with @pytest.mark.pods. It stops with the control plane."""
    return control_plane.add_real_node()


@pytest.fixture
def pods_namespace(control_plane, real_node, request: pytest.FixtureRequest) -> str:
    """A fresh PodSecurity-'restricted' namespace whose pods run on the real node."""
    import re
    import uuid

    from controlplane import wait_for

    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    control_plane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "annotations": real_node.namespace_annotations(),
        "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                   "pod-security.kubernetes.io/enforce-version": "latest"}}})
    wait_for(lambda: control_plane.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
             30, f"the default ServiceAccount of {name}")
    yield name
    # Pods hold the node's memory and CPU: a finished test's go at once.
    control_plane.request("DELETE", f"/api/v1/namespaces/{name}", allow_error=True)


# ---- models ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def iris_model(model_dir: Path) -> Path:
    return make_model(model_dir / "iris.onnx")


@pytest.fixture(scope="session")
def fixed_batch_model(model_dir: Path) -> Path:
    return make_model(model_dir / "fixed.onnx", dynamic_batch=False)


@pytest.fixture(scope="session")
def iris_signature(iris_model: Path):
    from mlship.model.inspect import inspect_model

    return inspect_model(iris_model)


# ---- representative configs (golden files, validators) ------------------------------------

@pytest.fixture(scope="session")
def render_case(iris_signature):
    """case name -> rendered Bundle, from tests/data/configs/<case>.yaml and the iris model."""
    import yaml

    from mlship.config.load import validate_config
    from mlship.render.bundle import render

    def _render(case: str):
        raw = yaml.safe_load((CONFIG_CASES / f"{case}.yaml").read_text())
        # File paths in a config (drift.baseline) are relative to it, as load_config makes them.
        config = validate_config(raw, label=f"{case}.yaml").with_drift_baseline_from(CONFIG_CASES)
        signature = iris_signature if config.model.kind == "image" else None
        return render(config, signature, target=CASES[case])

    return _render


# ---- S3 (moto's server on loopback) ------------------------------------------------------


def _motoserver():
    """runtime/tests/motoserver.py: one implementation for both test trees."""
    import importlib.util
    import sys

    if "motoserver" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "runtime" / "tests" / "motoserver.py"
        spec = importlib.util.spec_from_file_location("motoserver", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["motoserver"] = module
        spec.loader.exec_module(module)
    return sys.modules["motoserver"]


def _gcsserver():
    """runtime/tests/gcsserver.py, loaded by path as motoserver is."""
    import importlib.util
    import sys

    if "gcsserver" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "runtime" / "tests" / "gcsserver.py"
        spec = importlib.util.spec_from_file_location("gcsserver", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gcsserver"] = module
        spec.loader.exec_module(module)
    return sys.modules["gcsserver"]


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server on a free 127.0.0.1 port with IAM auth on; use with @pytest.mark.s3."""
    server = _motoserver().start(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def node_moto(real_node, tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server for pods: on the real node's bridge address (pods reach this host
    there and nowhere else), IAM auth on; ``log_path`` is its request log."""
    log_path = tmp_path_factory.mktemp("moto-node") / "moto.log"
    server = _motoserver().start(log_path, host=real_node.network.gateway)
    server.log_path = log_path
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory):
    """fake-gcs-server on a free 127.0.0.1 port, in memory; use with @pytest.mark.gcs."""
    server = _gcsserver().start(tmp_path_factory.mktemp("gcs") / "gcs.log")
    yield server
    server.stop()
