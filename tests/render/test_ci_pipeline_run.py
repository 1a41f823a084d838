"""The generated GitHub workflow, run here the way the runner would run it.

`mlship ci github` writes the workflow; ``WorkflowRunner`` then runs its jobs in order: every
``run:`` step in bash with the env the workflow declares, ``${{ }}`` expressions resolved
(secrets, step and job outputs), and ``$GITHUB_OUTPUT`` / ``$GITHUB_ENV`` / ``$RUNNER_TEMP``
as the runner provides them. Only these steps are not run here:

- ``uses:`` steps (checkout, setup-python, the cache, registry login, artifact upload) are the
  platform's: the project is the working directory, Python is this one, the wheelhouse is the
  local cache, and credentials reach mlship as MLSHIP_REGISTRY_* anyway;
- ``SKIPPED`` below: installing mlship (it is installed here) and pulling the base image
  (Docker Hub; the test base image is local).

The build job builds, smoke-tests and pushes to the htpasswd registry on 127.0.0.1:5001 with
the registry secrets; the staging and production jobs deploy to the loopback control plane
with its kubeconfig as the KUBECONFIG secret. Every step's --json report is validated against
its schema (tests/cli/test_contract.py runs the other commands).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlship_contract import check_failure, check_success, clean_env, mlship

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test/base:bookworm")
AUTH_REGISTRY = os.environ.get("MLSHIP_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
AUTH_USER = os.environ.get("MLSHIP_TEST_REGISTRY_USER", "mlship")
AUTH_PASSWORD = os.environ.get("MLSHIP_TEST_REGISTRY_PASSWORD", "mlship-test-password")
REPOSITORY = f"mlship-test/pipeline-{os.getpid()}"
NAMESPACE = f"pipeline-{uuid.uuid4().hex[:6]}"
SKIPPED = {
    "Install mlship": "mlship is installed in this environment",
    "Pull the base image": "would pull from Docker Hub; the test base image is local",
}
_EXPRESSION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.slow]


@dataclass
class StepRun:
    name: str
    code: int
    stderr: str


@dataclass
class JobRun:
    steps: list[StepRun] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(step.code == 0 for step in self.steps)

    def ran(self) -> list[str]:
        return [step.name for step in self.steps]

    def failure(self) -> str:
        return "\n".join(f"--- {s.name}: exit {s.code}\n{s.stderr[-3000:]}" for s in self.steps
                         if s.code != 0)


class WorkflowRunner:
    """Runs a workflow's jobs here like a GitHub runner; see the module docstring."""

    def __init__(self, workflow: dict[str, Any], project: Path, secrets: dict[str, str]) -> None:
        self.workflow = workflow
        self.project = project
        self.secrets = secrets
        self.jobs: dict[str, JobRun] = {}
        self.temp = project / ".runner-temp"
        self.temp.mkdir(exist_ok=True)

    def expand(self, text: str, steps: dict[str, dict[str, str]], env: dict[str, str]) -> str:
        def value(match: re.Match[str]) -> str:
            namespace, _, rest = match.group(1).partition(".")
            if namespace == "secrets":
                return self.secrets.get(rest, "")
            if namespace == "github":
                return {"ref": "refs/heads/main", "actor": "mlship-test",
                        "repository_owner": "mlship-test"}[rest]
            if namespace == "env":
                return env.get(rest, "")
            if namespace in ("steps", "needs"):
                source, _, output = rest.partition(".outputs.")
                outputs = steps.get(source, {}) if namespace == "steps" else \
                    self.jobs[source].outputs
                return outputs.get(output, "")
            raise AssertionError(f"expression not understood here: {match.group(0)}")

        return _EXPRESSION.sub(value, text)

    def run(self, job_id: str) -> JobRun:
        spec = self.workflow["jobs"][job_id]
        needs = spec.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            assert self.jobs[need].ok, f"{job_id} needs {need}, which failed"
        result = JobRun()
        steps: dict[str, dict[str, str]] = {}
        env = clean_env({"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                         "RUNNER_TEMP": str(self.temp), "GITHUB_REPOSITORY_OWNER": "mlship-test",
                         "CI": "true", "GITHUB_ACTIONS": "true"})
        for scope in (self.workflow.get("env", {}), spec.get("env", {})):
            env.update({key: self.expand(str(val), steps, env) for key, val in scope.items()})
        for index, step in enumerate(spec["steps"]):
            name = step.get("name", step.get("uses", f"step {index}"))
            if "run" not in step or name in SKIPPED:
                continue
            outputs, added = self.temp / f"output-{index}", self.temp / f"env-{index}"
            outputs.write_text("")
            added.write_text("")
            step_env = {**env, "GITHUB_OUTPUT": str(outputs), "GITHUB_ENV": str(added)}
            step_env.update({key: self.expand(str(val), steps, env)
                             for key, val in step.get("env", {}).items()})
            script = self.temp / f"step-{index}.sh"
            script.write_text(self.expand(step["run"], steps, env))
            process = subprocess.run(["bash", "--noprofile", "--norc", "-e", "-o", "pipefail",
                                      str(script)], cwd=self.project, env=step_env,
                                     capture_output=True, text=True, timeout=900, check=False)
            result.steps.append(StepRun(name, process.returncode, process.stderr))
            if process.returncode != 0:
                return self._finish(job_id, result)
            steps[step.get("id", f"step-{index}")] = _key_values(outputs)
            env.update(_key_values(added))
        result.outputs = {key: self.expand(str(val), steps, env)
                          for key, val in spec.get("outputs", {}).items()}
        return self._finish(job_id, result)

    def _finish(self, job_id: str, result: JobRun) -> JobRun:
        self.jobs[job_id] = result
        return result


def _key_values(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False,
                          timeout=600)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, iris_model: Path,
             ) -> Iterator[tuple[Path, WorkflowRunner]]:
    """The project, its generated workflow, and the build job already run."""
    if _docker("image", "inspect", BASE_IMAGE).returncode != 0:
        message = f"base image {BASE_IMAGE} missing (.ci/install-docker.sh makes it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    project = tmp_path_factory.mktemp("pipeline")
    (project / "model.onnx").write_bytes(iris_model.read_bytes())
    (project / "mlship.yaml").write_text(yaml.safe_dump({
        "name": "iris", "model": {"source": "model.onnx"}, "replicas": 1,
        "image": {"base": BASE_IMAGE, "registry": AUTH_REGISTRY, "repository": REPOSITORY},
        "namespace": {"name": NAMESPACE}}))
    generated = mlship("ci", "github", "--registry", "config", "--mlship-source", str(REPO),
                       "--json", cwd=project)
    assert generated.code == 0, generated.stderr
    document = check_success(("ci", "github"), generated.stdout)
    workflow = yaml.safe_load((project / document["out"]).read_text())
    runner = WorkflowRunner(workflow, project, {"MLSHIP_REGISTRY_USERNAME": AUTH_USER,
                                                "MLSHIP_REGISTRY_PASSWORD": AUTH_PASSWORD})
    runner.run("build")
    yield project, runner
    build = project / "mlship-build.json"
    if build.is_file():
        for tag in check_success(("build",), build.read_text())["tags"]:
            _docker("image", "rm", "-f", tag)


def test_build_job_inspects_builds_smoke_tests_and_pushes(pipeline) -> None:
    from mlship.image.wheelhouse import cache_root

    project, runner = pipeline
    job = runner.jobs["build"]
    assert job.ok, job.failure()
    assert job.ran() == ["Runtime lock hash", "Image registry", "Inspect the model",
                         "Build and push"]
    inspect = check_success(("inspect",), (project / "mlship-inspect.json").read_text())
    assert inspect["name"] == "model"
    build = check_success(("build",), (project / "mlship-build.json").read_text())
    assert build["smoke"]["passed"] is True
    assert build["added_bytes"] <= build["size_budget_bytes"]
    assert build["tags"][0].startswith(f"{AUTH_REGISTRY}/{REPOSITORY}:")
    assert build["pushed"][0]["digest"] == build["digest"]
    # the job hands the verified digest and the registry to the deploy jobs
    repository = f"{AUTH_REGISTRY}/{REPOSITORY}"
    assert job.outputs == {"registry": AUTH_REGISTRY, "digest": build["digest"],
                           "image": f"{repository}@{build['digest']}"}
    # the cache key is the directory the build's wheels are in: what actions/cache keeps
    lock_hash = (runner.temp / "output-3").read_text().strip().removeprefix("hash=")
    assert (cache_root() / lock_hash).is_dir()
    assert any(cache_root().glob(f"{lock_hash}/*.whl"))


def test_push_success_and_registry_failures(pipeline) -> None:
    """`mlship push --json` on the built image: verified, refused with wrong credentials."""
    project, _ = pipeline
    tag = check_success(("build",), (project / "mlship-build.json").read_text())["tags"][0]
    auth = {"MLSHIP_REGISTRY_USERNAME": AUTH_USER, "MLSHIP_REGISTRY_PASSWORD": AUTH_PASSWORD}
    pushed = mlship("push", tag, "--json", cwd=project, env=auth)
    assert pushed.code == 0, pushed.stderr
    assert check_success(("push",), pushed.stdout)["pushed"][0]["image"] == tag
    refused = mlship("push", tag, "--registry-username", AUTH_USER, "--registry-password-stdin",
                     "--json", cwd=project, stdin="wrong")
    assert refused.code == 6, refused.stderr
    check_failure(("push",), refused.stdout, 6)
    unreachable = "127.0.0.1:9/mlship-test/none:1"  # nothing listens on the discard port
    subprocess.run(["docker", "tag", tag, unreachable], check=True, capture_output=True)
    try:
        closed = mlship("push", unreachable, "--json", cwd=project,
                        env={"MLSHIP_REGISTRY_ATTEMPTS": "1"})
    finally:
        subprocess.run(["docker", "image", "rm", unreachable], check=False, capture_output=True)
    assert closed.code == 6, closed.stderr
    assert "unreachable" in check_failure(("push",), closed.stdout, 6)["error"]["message"]


def test_over_the_size_budget_is_exit_5_with_its_document(pipeline, tmp_path: Path) -> None:
    project, _ = pipeline
    config = yaml.safe_load((project / "mlship.yaml").read_text())
    config["image"].update(size_budget_mb=1, tag_policy="fixed", tag="over-budget")
    (tmp_path / "model.onnx").write_bytes((project / "model.onnx").read_bytes())
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump(config))
    run = mlship("build", "--json", cwd=tmp_path)
    _docker("image", "rm", "-f", f"{AUTH_REGISTRY}/{REPOSITORY}:over-budget")
    assert run.code == 5, run.stderr
    assert check_failure(("build",), run.stdout, 5)["error"]["type"] == "SizeBudgetError"


@pytest.mark.k8s
def test_staging_and_production_jobs_deploy_to_the_control_plane(pipeline, control_plane,
                                                                 ) -> None:
    project, runner = pipeline
    assert runner.jobs["build"].ok, runner.jobs["build"].failure()
    control_plane.create_namespace(NAMESPACE, pod_security="restricted")
    runner.secrets["KUBECONFIG"] = Path(control_plane.kubeconfig).read_text()
    digest = runner.jobs["build"].outputs["digest"]

    staging = runner.run("staging")
    assert staging.ok, staging.failure()
    assert staging.ran() == ["Kubeconfig", "Deploy"]
    deployment = control_plane.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/iris")
    assert deployment is not None
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{AUTH_REGISTRY}/{REPOSITORY}@{digest}"
    assert check_success(("deploy",), (project / "mlship-deploy.json").read_text())["image"] == \
        image

    # What a person checks next, with the same kubeconfig: nothing left to change, and the
    # rollout state of the app.
    kubeconfig = {"KUBECONFIG": str(control_plane.kubeconfig)}
    diff = mlship("diff", "--image", image, "--json", cwd=project, env=kubeconfig)
    assert diff.code == 0, diff.stderr
    check_success(("diff",), diff.stdout)
    status = mlship("rollout", "status", "--json", cwd=project, env=kubeconfig)
    assert status.code == 0, status.stderr
    check_success(("rollout", "status"), status.stdout)

    # Production: the canary connects with the environment's kubeconfig and the pinned image,
    # and refuses to start without analysis: this project configures no Prometheus.
    production = runner.run("production")
    assert production.ran() == ["Kubeconfig", "Canary with analysis"]
    assert production.steps[-1].code == 2, production.failure()
    error = check_failure(("rollout", "canary"), (project / "mlship-canary.json").read_text(), 2)
    assert "cannot be judged without Prometheus" in error["error"]["message"]
