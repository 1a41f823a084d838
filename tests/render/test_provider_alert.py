"""The rendered MlshipCpuFallback alert: a GPU pod that serves on CPU is not a healthy pod.

The runtime exports ``mlship_execution_provider`` (the provider onnxruntime uses, and the one
asked for); the rule is checked by promtool, then evaluated by promtool's rule tests over the
series exactly as the runtime writes them (its own exposition, with the labels a
ServiceMonitor adds): a pod on CPU fires after 5 minutes, a pod on CUDA never does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlship_runtime.metrics import Metrics

from mlship.config.load import validate_config
from mlship.render.bundle import render

pytestmark = [pytest.mark.prometheus]
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def _rules(gpu: bool) -> dict:
    config = validate_config({
        "name": "resnet", "model": {"source": "iris.onnx"},
        "runtime": {"provider": "cuda" if gpu else "cpu", "provider_fallback": "allow"},
        "gpu": {"enabled": gpu}, "monitoring": {"prometheus_rule": True}})
    bundle = render(config, None)
    return {"groups": yaml.safe_load(bundle.files["k8s/prometheusrule.yaml"])["spec"]["groups"]}


def _alerts(rules: dict) -> dict[str, dict]:
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}


def _series(pod: str, used: str) -> tuple[str, str]:
    """The runtime's own sample line, with the target labels Prometheus adds to it."""
    metrics = Metrics("resnet")
    metrics.load_seconds = 1.0
    metrics.execution_provider = (CUDA, used)
    line = next(line for line in metrics.render().decode().splitlines()
                if line.startswith("mlship_execution_provider{"))
    name_labels, value = line.rsplit(" ", 1)
    scraped = name_labels.replace("{", f'{{namespace="mlship",job="resnet",pod="{pod}",', 1)
    return scraped, value


def test_only_gpu_configs_alert_on_cpu_fallback() -> None:
    assert "MlshipCpuFallback" not in _alerts(_rules(gpu=False))
    rule = _alerts(_rules(gpu=True))["MlshipCpuFallback"]
    assert rule["expr"] == ('max by (namespace, pod) (mlship_execution_provider'
                            '{namespace="mlship",job="resnet",provider="CPUExecutionProvider"}'
                            ') == 1')


def test_promtool_checks_and_evaluates_the_alert(tmp_path: Path) -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(_rules(gpu=True), sort_keys=False))
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                           text=True, check=False, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    on_cpu, one = _series("resnet-a", CPU)
    on_gpu, _ = _series("resnet-b", CUDA)
    summary = ("Pod resnet-a of resnet runs the model on CPU: its GPU provider did not load "
               "(provider_fallback: allow); the pod's log names the missing library or driver "
               "mismatch")
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": on_cpu, "values": f"{one}x10"},
                         {"series": on_gpu, "values": f"{one}x10"}],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "MlshipCpuFallback", "exp_alerts": []},
            {"eval_time": "6m", "alertname": "MlshipCpuFallback", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "namespace": "mlship",
                               "pod": "resnet-a"},
                "exp_annotations": {"summary": summary}}]}]}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    run = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests.yml")],
                         capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
