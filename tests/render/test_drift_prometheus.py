"""Drift alerts end to end: `mlship baseline`, `mlship render`, the runtime and a real Prometheus.

The rule file Prometheus loads is exactly the rendered PrometheusRule's ``spec.groups``, the
runtime runs with the rendered ConfigMap's settings and the baseline the rendered drift
ConfigMap holds, and Prometheus scrapes it every second on loopback with the labels a
ServiceMonitor gives (namespace, job). In-distribution traffic leaves the drift alerts
inactive; shifting one feature by five standard deviations fires both, for that feature only.
Polls have generous deadlines and nothing asserts a duration. Load: a few hundred requests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from mlship_testsupport import make_model
from typer.testing import CliRunner

from mlship.cli import app

pytestmark = [pytest.mark.prometheus]

MEANS = np.array([5.8, 3.0, 3.7, 1.2])
STDS = np.array([0.8, 0.4, 1.7, 0.7])
ROWS_PER_REQUEST = 16
MIN_VALUES = 200
WINDOW = "20s"
DRIFT_ALERTS = {"MlshipInputDrift", "MlshipInputOutOfRange"}
runner = CliRunner()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], what: str, timeout: float, log: Path | None = None,
             step: Callable[[], None] | None = None) -> Any:
    """``check()``'s first truthy result; ``step`` runs between checks (e.g. sends traffic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if step is not None:
            step()
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise AssertionError(f"{what}: not within {timeout:.0f}s\n{tail}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Prometheus:
    """Prometheus on a free loopback port with a throwaway TSDB; queries over its HTTP API."""

    def __init__(self, workdir: Path, targets: list[str], job: str, namespace: str,
                 rules: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": job, "static_configs": [
                {"targets": targets, "labels": {"namespace": namespace}}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(self.url + path, params=params, timeout=10)
        response.raise_for_status()
        return response.json()["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/query", query=expr)["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return [alert for alert in self.get("/api/v1/alerts")["alerts"]
                if alert["labels"]["alertname"] in DRIFT_ALERTS]

    def drift_rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.get("/api/v1/rules")["groups"]
                for rule in group["rules"] if rule["name"] in DRIFT_ALERTS]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(self.url + "/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False


@pytest.fixture
def rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with a baseline and drift on (short window, `for: 0s`), rendered by the CLI."""
    make_model(tmp_path / "drifty.onnx")
    rng = np.random.default_rng(11)
    np.savez(tmp_path / "samples.npz",
             x=rng.normal(MEANS, STDS, size=(4000, 4)).astype(np.float32))
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump({
        "name": "drifty", "model": {"source": "drifty.onnx"},
        "monitoring": {"prometheus_rule": True, "service_monitor": True},
        "drift": {"enabled": True, "baseline": "baseline.json", "window": WINDOW,
                  "for_duration": "0s", "min_values": MIN_VALUES}}))
    monkeypatch.chdir(tmp_path)
    for variable in [v for v in os.environ if v.startswith("MLSHIP_")]:
        monkeypatch.delenv(variable)
    result = runner.invoke(app, ["baseline", "-i", "samples.npz", "-m", "drifty.onnx"])
    assert result.exit_code == 0, result.stderr
    result = runner.invoke(app, ["render", "--out", "out"])
    assert result.exit_code == 0, result.stderr
    return tmp_path / "out"


def rule_file(rendered: Path, target: Path) -> Path:
    """Exactly the rendered PrometheusRule's groups, as a Prometheus rule file."""
    rule = yaml.safe_load((rendered / "k8s" / "prometheusrule.yaml").read_text())
    target.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return target


def test_promtool_accepts_the_rendered_rules(rendered: Path, render_case,
                                             tmp_path: Path) -> None:
    from mlship.render.bundle import write_bundle

    write_bundle(render_case("drift"), tmp_path / "golden-case")
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    for out, rules in ((rendered, 4), (tmp_path / "golden-case", 2)):
        path = rule_file(out, tmp_path / f"rules-{rules}.yml")
        check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                               text=True, check=False, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"SUCCESS: {rules} rules found" in check.stdout


@pytest.fixture
def stack(rendered: Path, tmp_path: Path) -> Iterator[tuple[Prometheus, str]]:
    """The runtime (rendered settings, rendered baseline) and Prometheus scraping it."""
    configmap = yaml.safe_load((rendered / "k8s" / "configmap.yaml").read_text())
    env = {**os.environ, **{key: value for key, value in configmap["data"].items()
                            if key.startswith("MLSHIP_RUNTIME_")}}
    shipped = yaml.safe_load((rendered / "k8s" / "drift-baseline.yaml").read_text())
    baseline = tmp_path / "from-configmap.json"
    baseline.write_text(shipped["data"]["baseline.json"])
    port = free_port()
    runtime_log = tmp_path / "runtime.log"
    with runtime_log.open("wb") as log:
        # The pod's settings, but a local model and baseline path, and loopback only.
        runtime = subprocess.Popen(
            [sys.executable, "-m", "mlship_runtime", "--model", str(tmp_path / "drifty.onnx"),
             "--baseline", str(baseline), "--host", "127.0.0.1", "--port", str(port),
             "--intra-op-threads", "1"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{port}"], job="drifty", namespace="mlship",
                            rules=rule_file(rendered, tmp_path / "rules.yml"))
    try:
        wait_for(lambda: _ready(url, runtime), "runtime ready", 60, runtime_log)
        wait_for(prometheus.ready, "prometheus ready", 60, prometheus.log)
        wait_for(lambda: prometheus.query('up{job="drifty",namespace="mlship"} == 1'),
                 "runtime scraped", 60, prometheus.log)
        yield prometheus, url
    finally:
        stop(prometheus.proc)
        stop(runtime)


def _ready(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"runtime exited with {proc.returncode}"
    try:
        return httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


class Traffic:
    """Sends batches of rows drawn around MEANS (+ shift) to the runtime, up to a budget."""

    def __init__(self, url: str, budget: int) -> None:
        self.client = httpx.Client(base_url=url, timeout=10)
        self.rng = np.random.default_rng(5)
        self.budget = budget
        self.sent = 0
        self.shift = np.zeros(4)

    def send(self, requests: int = 1) -> None:
        for _ in range(min(requests, self.budget - self.sent)):
            rows = self.rng.normal(MEANS + self.shift, STDS, size=(ROWS_PER_REQUEST, 4))
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [ROWS_PER_REQUEST, 4],
                                "data": rows.astype(np.float32).ravel().tolist()}]}
            response = self.client.post("/v2/models/drifty/infer", json=body)
            assert response.status_code == 200, response.text
            self.sent += 1


def window_counts(prometheus: Prometheus) -> dict[str, float]:
    result = prometheus.query(
        f'sum by (feature) (increase(mlship_input_feature_count_total{{job="drifty"}}'
        f"[{WINDOW}]))")
    return {item["metric"]["feature"]: float(item["value"][1]) for item in result}


def window_means(prometheus: Prometheus) -> dict[str, float]:
    selector = '{job="drifty"}'
    result = prometheus.query(
        f"sum by (feature) (increase(mlship_input_feature_sum_total{selector}[{WINDOW}])) / "
        f"sum by (feature) (increase(mlship_input_feature_count_total{selector}[{WINDOW}]))")
    return {item["metric"]["feature"]: float(item["value"][1]) for item in result}


@pytest.mark.slow
def test_shifted_inputs_fire_the_rendered_drift_alerts(stack, rendered: Path) -> None:
    prometheus, url = stack
    traffic = Traffic(url, budget=400)
    try:
        _in_distribution_then_shifted(prometheus, traffic, rendered)
    finally:
        traffic.client.close()


def _in_distribution_then_shifted(prometheus: Prometheus, traffic: Traffic,
                                  rendered: Path) -> None:
    rules = yaml.safe_load((rendered / "k8s" / "prometheusrule.yaml").read_text())
    exprs = {rule["alert"]: rule["expr"] for group in rules["spec"]["groups"]
             for rule in group["rules"] if rule["alert"] in DRIFT_ALERTS}

    # 1. In distribution: enough values in the window for the alerts to apply, none firing.
    traffic.send(40)  # 640 values per feature
    wait_for(lambda: window_counts(prometheus) and
             min(window_counts(prometheus).values()) >= 2 * MIN_VALUES,
             "in-distribution values in the window", 60, prometheus.log,
             step=lambda: traffic.send(2))
    seen = time.time()
    # A rule evaluation that saw those values, then the rendered expressions themselves.
    wait_for(lambda: all(_evaluated_after(rule, seen) for rule in prometheus.drift_rules()),
             "a rule evaluation after the traffic", 30, prometheus.log)
    for rule in prometheus.drift_rules():
        assert rule["health"] == "ok", rule
        assert rule["state"] == "inactive", rule
    assert prometheus.alerts() == []
    for alert, expr in exprs.items():
        assert prometheus.query(expr) == [], alert
    means = window_means(prometheus)
    for feature, mean in means.items():  # the counters carry the traffic's mean
        assert abs(mean - MEANS[int(feature)]) < STDS[int(feature)] / 2, (feature, mean)

    # 2. Feature 2 moves by five baseline standard deviations: both alerts fire for it.
    traffic.shift = np.array([0.0, 0.0, 5 * STDS[2], 0.0])

    def firing() -> set[tuple[str, str]]:
        return {(a["labels"]["alertname"], a["labels"]["feature"]) for a in prometheus.alerts()
                if a["state"] == "firing"}

    wait_for(lambda: {("MlshipInputDrift", "2"), ("MlshipInputOutOfRange", "2")} <= firing(),
             "both drift alerts firing for feature 2", 90, prometheus.log,
             step=lambda: traffic.send(2))
    alerts = prometheus.alerts()
    assert {a["labels"]["feature"] for a in alerts} == {"2"}, alerts  # only the shifted one
    for alert in alerts:
        assert alert["labels"]["input"] == "x"
        assert alert["labels"]["namespace"] == "mlship"
        assert alert["labels"]["severity"] == "warning"
        assert "input x feature 2 of drifty" in alert["annotations"]["description"]
    assert window_means(prometheus)["2"] > MEANS[2] + STDS[2]
    assert traffic.sent <= traffic.budget


def _evaluated_after(rule: dict[str, Any], moment: float) -> bool:
    from datetime import datetime

    stamp = rule.get("lastEvaluation", "")
    if not stamp or stamp.startswith("0001"):
        return False
    # RFC 3339 with nanoseconds; seconds are enough here
    whole = stamp.split(".")[0].rstrip("Z")
    offset = stamp[-6:] if stamp[-6] in "+-" else "+00:00"
    return datetime.fromisoformat(whole + offset).timestamp() > moment
