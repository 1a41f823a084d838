"""Hostile values in every text field of mlship.yaml (issue 16): each is refused at the config
edge with exit code 2 and a line naming its key, or it renders inert.

The fields come from the MlshipConfig schema itself (``mlship_hostile.string_fields``): a new
text field is in the table without anyone adding it. Each field is set, in a scenario where it
reaches the outputs, to each value of ``HOSTILE`` (line breaks, quotes, ``$()``, backticks,
``${{ }}``, ``{{ }}``, ``[[ ]]``, YAML anchors, aliases and flow syntax, ``: ``, `` #``, NUL,
invisible characters, bytes that are not UTF-8), written into mlship.yaml, and taken through
what ``mlship render`` and ``mlship ci github|gitlab`` do. An accepted value must leave every
output file parsing to the structure the scenario's own value gives (keys, list lengths, kinds
of leaves, which Dockerfile words expand), must arrive intact where it lands, and must leave
every CI shell line valid bash (``bash -n``) and inert: each pipeline's steps run in a sandbox
whose programs are stubs, and the marker the values try to create (``touch PWNED``) must not
exist afterwards.
"""

from __future__ import annotations

import functools
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlship_hostile import (
    HOSTILE,
    ITEM,
    KEY,
    VALUE,
    FieldPath,
    Missing,
    bash_syntax_ok,
    dotted,
    dump,
    github_scripts,
    gitlab_scripts,
    leaves,
    parsed_outputs,
    run_sandboxed,
    shape,
    string_fields,
    with_value,
)
from mlship_testsupport import CONFIG_CASES, make_model

from mlship.config.schema import MlshipConfig
from mlship.errors import ExitCode, MlshipError

MLSHIP_SOURCE = "mlship @ git+https://github.com/acme/mlship@v0.1.0"
MARKER = "PWNED"

SCENARIOS: dict[str, dict[str, Any]] = {
    # A local model and a second one chained into a pipeline, with every section switched on
    # that renders text: registry and repository, labels, env, Secrets, annotations, network
    # policy selectors, monitoring, a batch job, Istio routing and the rollout's analysis.
    "local": {
        "name": "iris", "labels": {"team": "ml"},
        "model": {"source": "model.onnx", "version": "1"},
        "models": [{"name": "extra", "source": "extra.onnx"}],
        "pipelines": [{"name": "chain", "steps": [
            {"model": "iris"}, {"model": "extra", "name": "second", "inputs": {"x": "iris.y"}}],
            "outputs": {"y": "second.y"}}],
        "image": {"base": "python:3.11-slim-bookworm", "registry": "ghcr.io/acme",
                  "repository": "acme/iris", "tag_policy": "fixed", "tag": "v1",
                  "source_url": "https://github.com/acme/iris", "pull_secrets": ["regcred"]},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                      "limits": {"cpu": "2", "memory": "512Mi"}},
        "env": {"vars": {"GREETING": "hello"}, "config_maps": ["settings"],
                "secrets": [{"name": "api-key", "mount_path": "/var/run/secrets/api"}]},
        "namespace": {"name": "ml"},
        "service_account": {"annotations": {"example.com/owner": "ml"}},
        "network_policy": {"allow_namespaces": [{"team": "web"}], "allow_pods": [{"app": "web"}],
                           "prometheus_namespace": "monitoring"},
        "monitoring": {"service_monitor": True, "prometheus_rule": True,
                       "dashboard": "configmap", "scrape_interval": "30s"},
        "batch": {"enabled": True, "schedule": "0 2 * * *", "input": "/data/in",
                  "output": "/data/out"},
        "rollout": {"traffic": "istio", "interval": "1m",
                    "istio": {"hosts": ["iris.example.com"], "gateways": ["gateways/public"]},
                    "ab_match": [{"name": "x-canary", "value": "yes"}],
                    "analysis": {"prometheus_url": "http://prometheus.monitoring:9090",
                                 "window": "1m", "failure_codes": "5..",
                                 "selector": {"cluster": "prod"},
                                 "synthetic_traffic": {"url": "http://127.0.0.1:8080"}},
                    "bandit": {"reward": "custom", "query": "sum(up)", "interval": "30s"}},
    },
    # Models from S3 (endpoint, region, credentials Secret), a batch job on S3, Gateway API.
    "s3": {
        "name": "search",
        "model": {"source": "s3://models/search/embed.onnx", "version": "2",
                  "sha256": "a" * 64, "size_bytes": 1000,
                  "s3": {"endpoint_url": "https://minio.storage.svc:9000", "region": "us-east-1",
                         "credentials_secret": "search-s3", "egress_cidrs": ["10.20.0.0/16"]}},
        "models": [{"name": "rank", "source": "s3://models/search/rank.onnx", "version": "5"}],
        "pipelines": [{"name": "search-rank", "steps": [
            {"model": "search"}, {"model": "rank", "inputs": {"query": "search.embedding"}}],
            "outputs": {"scores": "rank.scores"}}],
        "batch": {"enabled": True, "input": "s3://warehouse/in/", "output": "s3://warehouse/out/"},
        "rollout": {"traffic": "gateway", "gateway": {
            "parent_refs": [{"name": "public", "namespace": "gateways", "kind": "Gateway",
                             "group": "gateway.networking.k8s.io", "section_name": "https"}],
            "hostnames": ["search.example.com"]}},
    },
    # S3 through the ServiceAccount's role (IRSA) rather than a Secret.
    "irsa": {
        "name": "fraud",
        "model": {"source": "s3://models/fraud.onnx",
                  "s3": {"role_arn": "arn:aws:iam::123456789012:role/fraud"}},
        "service_account": {"role_arn": "arn:aws:iam::123456789012:role/fraud",
                            "annotations": {"example.com/owner": "risk"}},
    },
    # A model on a volume claim mlship creates.
    "volume": {
        "name": "iris",
        "model": {"source": "pvc://models-claim/iris/model.onnx",
                  "volume": {"mount_path": "/data/models", "create_claim": True,
                             "storage_class": "fast-ssd", "size": "2Gi"}},
    },
    # GPU nodes: an extended resource, a node selector and a toleration with a value.
    "gpu": {
        "name": "resnet", "model": {"source": "model.onnx"}, "runtime": {"provider": "cuda"},
        "gpu": {"enabled": True, "resource": "nvidia.com/gpu", "onnxruntime_gpu_version": "1.20.1",
                "node_selector": {"nvidia.com/gpu.present": "true"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal",
                                 "value": "present"}]},
    },
    # Google Cloud Storage: as a Workload Identity account, or with a key-file Secret.
    "gcs-wi": {
        "name": "ranker",
        "model": {"source": "gs://acme-models/ranker.onnx",
                  "gcs": {"workload_identity": "ranker@acme-ml.iam.gserviceaccount.com",
                          "egress_cidrs": ["199.36.153.8/30"]}},
    },
    "gcs-key": {
        "name": "ranker",
        "model": {"source": "gs://acme-models/ranker.onnx",
                  "gcs": {"credentials_secret": "ranker-gcs",
                          "endpoint_url": "https://storage.example.com"}},
    },
    # Prometheus behind auth: one scheme each (they all set the Authorization header).
    "prom-basic": {
        "name": "iris", "model": {"source": "model.onnx"},
        "rollout": {"analysis": {"prometheus_url": "https://prometheus.example.com",
                                 "prometheus": {"basic_auth": {"username": "ml",
                                                               "password_file": "pw"},
                                                "ca_file": "ca.pem",
                                                "headers": {"X-Scope-OrgID": "ml"}}}},
    },
    "prom-token": {
        "name": "iris", "model": {"source": "model.onnx"},
        "rollout": {"analysis": {"prometheus_url": "https://prometheus.example.com",
                                 "prometheus": {"bearer_token_file": "token"}}},
    },
    "prom-sigv4": {
        "name": "iris", "model": {"source": "model.onnx"},
        "rollout": {"analysis": {"prometheus_url": "https://aps.example.com",
                                 "prometheus": {"sigv4": {"region": "eu-west-1",
                                                          "profile": "ml"}}}},
    },
    # Drift: the baseline shipped in a ConfigMap, alert rules with their windows.
    "drift": {
        "name": "iris", "model": {"source": "iris.onnx"},
        "monitoring": {"service_monitor": True},
        "drift": {"enabled": True, "baseline": "drift-baseline.json", "window": "30m",
                  "for_duration": "15m", "severity": "warning"},
    },
}
# Where a field reaches the outputs; the first matching prefix wins, "local" otherwise.
SCENARIOS_OF: list[tuple[FieldPath, tuple[str, ...]]] = [
    (("model", "source"), ("local", "s3", "volume", "gcs-wi")),
    (("model", "sha256"), ("s3",)),
    (("model", "s3", "role_arn"), ("irsa",)),
    (("service_account", "role_arn"), ("irsa",)),
    (("model", "s3"), ("s3",)),
    (("model", "gcs", "workload_identity"), ("gcs-wi",)),
    (("model", "gcs", "egress_cidrs"), ("gcs-wi",)),
    (("model", "gcs"), ("gcs-key",)),
    (("model", "volume"), ("volume",)),
    (("models",), ("local", "s3")),
    (("pipelines",), ("local", "s3")),
    (("batch",), ("local", "s3")),
    (("gpu",), ("gpu",)),
    (("runtime", "provider"), ("gpu",)),
    (("drift",), ("drift",)),
    (("rollout", "gateway"), ("s3",)),
    (("rollout", "analysis", "prometheus", "sigv4"), ("prom-sigv4",)),
    (("rollout", "analysis", "prometheus", "bearer_token_file"), ("prom-token",)),
    (("rollout", "analysis", "prometheus"), ("prom-basic",)),
]
# Where a scenario needs the value inside its own form (an S3 URI stays an S3 URI).
WRAPPED = {
    (("model", "source"), "s3"): "s3://models/{}",
    (("model", "source"), "volume"): "pvc://models-claim/{}",
    (("models", ITEM, "source"), "s3"): "s3://models/{}",
    (("model", "source"), "gcs-wi"): "gs://acme-models/{}",
    (("batch", "input"), "s3"): "s3://warehouse/{}",
    (("batch", "output"), "s3"): "s3://warehouse/{}",
}
# Text fields no rendered file carries (mlship reads them at rollout or render time); their
# values are still checked above, and their hostile values must not reach an output.
NOT_RENDERED = {
    "rollout.analysis.prometheus_url": "the Prometheus API mlship rollout queries",
    "rollout.analysis.prometheus": "how mlship rollout reaches Prometheus (files, headers)",
    "rollout.analysis.failure_codes": "a regex in the rollout's PromQL (JSON-quoted there)",
    "rollout.analysis.selector": "label matchers of the rollout's PromQL (JSON-quoted there)",
    "rollout.analysis.synthetic_traffic.url": "where mlship rollout sends synthetic requests",
    "rollout.bandit.query": "the bandit's reward PromQL",
    "rollout.bandit.interval": "the bandit's round length",
    "rollout.interval": "the time between canary steps",
    "rollout.ab_match": "header matches patched into the route by mlship rollout ab",
    "drift.baseline": "a local file; its content ships, not its path",
    "model.profile.sample": "a local file read by local runs (serve -c, build --smoke); "
                            "never shipped",
    "models.profile.sample": "a local file read by local runs; never shipped",
}
FIELDS = sorted(set(string_fields(MlshipConfig)))


def scenarios_of(path: FieldPath) -> tuple[str, ...]:
    return next((names for prefix, names in SCENARIOS_OF if path[:len(prefix)] == prefix),
                ("local",))


def _id(path: FieldPath) -> str:
    return ".".join(path)


@dataclass
class Outcome:
    refused: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    landed: set[str] = field(default_factory=set)  # output files an accepted value reached
    problems: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model files the scenarios name, made once."""
    directory = tmp_path_factory.mktemp("hostile-models")
    make_model(directory / "model.onnx")
    make_model(directory / "extra.onnx")
    shutil.copy(CONFIG_CASES.parent.parent.parent / "examples" / "iris.onnx",
                directory / "iris.onnx")
    shutil.copy(CONFIG_CASES / "drift-baseline.json", directory / "drift-baseline.json")
    return directory


def _project(root: Path, files: Path, raw: dict[str, Any], text: bytes) -> Path:
    """A project directory: mlship.yaml as ``text``, the local files it names (a model named
    by a hostile value is written under that name)."""
    root.mkdir(parents=True)
    main = "iris.onnx" if "drift" in raw else "model.onnx"
    for model, template in [(raw["model"], main),
                            *((model, "extra.onnx") for model in raw.get("models", []))]:
        if _file_name(model.get("source")):
            shutil.copy(files / template, root / model["source"])
    if _file_name(raw.get("drift", {}).get("baseline")):
        shutil.copy(files / "drift-baseline.json", root / raw["drift"]["baseline"])
    (root / "mlship.yaml").write_bytes(text)
    return root


def _file_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "://" not in value and "/" not in value \
        and "\x00" not in value and value not in (".", "..") and len(value.encode()) < 200


def generate(project: Path) -> dict[str, str]:
    """What `mlship render` and `mlship ci github|gitlab` write for the project."""
    from mlship.config.load import load_config
    from mlship.model.signatures import model_signatures
    from mlship.render.bundle import render
    from mlship.render.ci import pipeline_context, render_pipeline

    config_path = project / "mlship.yaml"
    config = load_config(config_path, environ={})
    signature, extras = model_signatures(config, config_path)
    bundle = render(config, signature, extras=extras)
    files = {f"bundle/{name}": text for name, text in bundle.files.items()}
    registry = "config" if config.image.registry else "platform"
    for platform in ("github", "gitlab"):
        context = pipeline_context(platform, config_path, mlship_source=MLSHIP_SOURCE,
                                   registry_mode=registry, branch="main", smoke=None,
                                   project_root=project)
        files[f"ci/{platform}.yml"] = render_pipeline(context)
    return files


@functools.cache
def _benign(scenario: str, files: Path, root: Path) -> tuple[dict[str, str], dict[str, Any]]:
    raw = SCENARIOS[scenario]
    project = _project(root / f"benign-{scenario}", files, raw, dump(raw, ""))
    outputs = generate(project)
    return outputs, parsed_outputs(outputs)


def _structure(parsed: dict[str, Any]) -> dict[str, Any]:
    return {name: [(instruction, [expands for _, expands in words])
                   for instruction, words in value] if name.endswith("Dockerfile")
            else shape(value) for name, value in parsed.items()}


def _check_shell(name: str, scripts: list[str], value: str, sandbox: Path,
                 problems: list[str]) -> None:
    for index, script in enumerate(scripts):
        if "${{" in script:
            problems.append(f"{name}: a run line holds ${{{{ }}}}, which GitHub expands: "
                            f"{script!r}")
        error = bash_syntax_ok(script)
        if error:
            problems.append(f"{name}: not valid bash: {script!r}: {error}")
            continue
        if value not in script and not any(part in script for part in (MARKER,)):
            continue
        place = sandbox / f"{name.replace('/', '-')}-{index}"
        code, stderr, calls = run_sandboxed(script, place)
        if (place / MARKER).exists():
            problems.append(f"{name}: the value ran a command: {script!r}")
        arrived = any(value in argument for call in calls for argument in call[1:]) or \
            any(value in (place / out).read_text() for out in ("github-output", "github-env")
                if (place / out).exists())
        if not arrived:
            problems.append(f"{name}: the value did not reach the program intact: {script!r} "
                            f"(calls {calls}, exit {code}: {stderr.strip()[-300:]})")


def _try(path: FieldPath, scenario: str, label: str, value: str | bytes, files: Path,
         root: Path, outcome: Outcome) -> None:
    form = WRAPPED.get((path, scenario))
    if form is not None:
        prefix = form.replace("{}", "")
        value = prefix.encode() + value if isinstance(value, bytes) else form.format(value)
    raw = with_value(SCENARIOS[scenario], path, value)
    project = _project(root / f"{scenario}-{label}", files, raw, dump(raw, value))
    key = dotted(path)
    try:
        outputs = generate(project)
    except MlshipError as err:
        message = re.sub(r"\[(\d+)\]", r".\1", err.message)
        if err.exit_code != ExitCode.BAD_INPUT or \
                not re.search(rf"(^|[ .]){re.escape(key)}([.:\[ ]|$)", message):
            outcome.problems.append(f"{label}: refused, but not with exit 2 naming {key}: "
                                    f"exit {int(err.exit_code)}: {err.message!r}")
        outcome.refused.append(label)
        return
    except Exception as err:  # what this test exists to catch
        outcome.problems.append(f"{label}: {type(err).__name__}: {err}")
        return
    assert isinstance(value, str), "bytes that are not UTF-8 cannot be accepted"
    outcome.accepted.append(label)
    benign, benign_parsed = _benign(scenario, files, root)
    try:
        parsed = parsed_outputs(outputs)
    except Exception as err:
        outcome.problems.append(f"{label}: an output no longer parses: {err}")
        return
    expected, actual = _structure(benign_parsed), _structure(parsed)
    for name in sorted(set(expected) | set(actual)):
        if expected.get(name) != actual.get(name):
            outcome.problems.append(f"{label}: {name} changed structure")
    for name, data in parsed.items():
        if any(value in leaf for leaf in leaves(data)) and outputs[name] != benign[name]:
            outcome.landed.add(name)
    for name, scripts in (("ci/github.yml", github_scripts(parsed["ci/github.yml"][0])),
                          ("ci/gitlab.yml", gitlab_scripts(parsed["ci/gitlab.yml"][0]))):
        if outputs[name] != benign[name]:
            _check_shell(name, scripts, value, root / "sandbox" / f"{scenario}-{label}",
                         outcome.problems)


def test_the_table_covers_every_text_field() -> None:
    """Every text field of the schema can be set in its scenarios, and the fields listed as
    not rendered exist."""
    assert len(FIELDS) > 80
    for path in FIELDS:
        for scenario in scenarios_of(path):
            try:
                with_value(SCENARIOS[scenario], path, "x")
            except Missing:
                pytest.fail(f"{_id(path)}: scenario {scenario} has no element to set it in")
    plain = {".".join(part for part in path if part not in (ITEM, KEY, VALUE)) for path in FIELDS}
    for name in NOT_RENDERED:
        assert any(field == name or field.startswith(f"{name}.") for field in plain), name


@pytest.mark.parametrize("path", FIELDS, ids=_id)
def test_hostile_values_are_refused_or_inert(path: FieldPath, files_dir: Path,
                                             tmp_path: Path) -> None:
    outcome = Outcome()
    for scenario in scenarios_of(path):
        for label, value in HOSTILE.items():
            _try(path, scenario, label, value, files_dir, tmp_path, outcome)
    assert not outcome.problems, "\n".join(outcome.problems)
    # Line breaks, NUL, invisible characters and bytes that are not UTF-8 fit nowhere.
    for label in ("newline", "carriage-return", "nul", "line-separator", "bidi-override",
                  "non-utf8"):
        assert label in outcome.refused, f"{label} was accepted"
    plain = ".".join(part for part in path if part not in (ITEM, KEY, VALUE))
    listed = next((reason for name, reason in NOT_RENDERED.items()
                   if plain == name or plain.startswith(f"{name}.")), None)
    if outcome.accepted and listed is None:
        assert outcome.landed, (f"{_id(path)} accepted {outcome.accepted} but none reached an "
                                "output: add a scenario where it does, or list it in "
                                "NOT_RENDERED with the reason")
    if listed is not None:
        assert not outcome.landed, f"{_id(path)} is listed as not rendered ({listed}) but " \
                                   f"reached {sorted(outcome.landed)}"


def test_the_sandbox_catches_an_injection(tmp_path: Path) -> None:
    """The inertness check can fail: an unquoted substitution does create the marker."""
    code, _, calls = run_sandboxed(f"mlship inspect $(touch {MARKER}) --json\n", tmp_path)
    assert code == 0
    assert (tmp_path / MARKER).exists()
    assert calls == [["mlship", "inspect", "--json"]]


def test_hostile_file_names_reach_the_inspect_step_as_one_argument(files_dir: Path,
                                                                   tmp_path: Path) -> None:
    """A model file named like an option or a command stays one argument of `mlship inspect`."""
    for label in ("leading-dash", "command-substitution", "single-quote-break-out"):
        value = HOSTILE[label]
        assert isinstance(value, str)
        raw = with_value(SCENARIOS["local"], ("model", "source"), value)
        project = _project(tmp_path / label, files_dir, raw, dump(raw, value))
        workflow = yaml.safe_load(generate(project)["ci/github.yml"])
        inspect = next(step["run"] for step in workflow["jobs"]["build"]["steps"]
                       if step.get("name") == "Inspect the model")
        _, _, calls = run_sandboxed(inspect, tmp_path / f"run-{label}")
        assert calls[0][:2] == ["mlship", "inspect"]
        assert Path(calls[0][2]).name == value
        assert not calls[0][2].startswith("-"), calls


@pytest.mark.docker
def test_docker_reads_the_values_back_unexpanded(files_dir: Path, tmp_path: Path) -> None:
    """The Dockerfile's ENV and LABEL words, built by the Docker engine: hostile model file
    names and a URL with ``$`` come back exactly, nothing expanded (no base image is pulled:
    the rendered instructions are built on ``scratch``)."""
    import json
    import os
    import subprocess

    names = [value for label, value in HOSTILE.items() if isinstance(value, str)
             and _file_name(value) and label not in ("github-expression",)
             and "\n" not in value and "\r" not in value and "\x00" not in value
             and "\u2028" not in value and "\u202e" not in value]
    url = "https://example.com/$HOME/$(id)/$REVISION'x'"
    for index, name in enumerate(names):
        raw = with_value(with_value(SCENARIOS["local"], ("model", "source"), name),
                         ("image", "source_url"), url)
        raw.pop("models"), raw.pop("pipelines")
        project = _project(tmp_path / f"p{index}", files_dir, raw, dump(raw, name))
        dockerfile = generate(project)["bundle/Dockerfile"]
        logical = re.sub(r"\\\n", "", dockerfile).splitlines()
        runtime_env = [line for line in logical if line.startswith("ENV ")][-1]
        label = next(line for line in logical if line.startswith("LABEL "))
        context = tmp_path / f"context-{index}"
        context.mkdir()
        (context / "Dockerfile").write_text(
            "FROM scratch\nARG REVISION=unknown\nARG CREATED=unknown\nARG RUNTIME_LOCK=unknown\n"
            f"{runtime_env}\n{label}\n")
        tag = f"mlship-test/hostile-{os.getpid()}:{index}"
        built = subprocess.run(["docker", "build", "-q", "-t", tag, str(context)],
                               capture_output=True, text=True, timeout=300, check=False)
        assert built.returncode == 0, built.stderr
        try:
            inspected = subprocess.run(["docker", "image", "inspect", tag], capture_output=True,
                                       text=True, timeout=60, check=True)
        finally:
            subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True,
                           timeout=60, check=False)
        config = json.loads(inspected.stdout)[0]["Config"]
        env = dict(item.split("=", 1) for item in config["Env"])
        assert env["MLSHIP_RUNTIME_MODEL"] == f"/models/{name}", name
        assert config["Labels"]["org.opencontainers.image.source"] == url
