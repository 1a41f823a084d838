"""`mlship ci github|gitlab`: the generated pipelines validate against the platforms' schemas
(check-jsonschema's vendored copies, no network) and actionlint, and say what docs/ci.md says.

tests/render/test_ci_pipeline_run.py runs the GitHub workflow's steps on this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlship_contract import check_success, mlship
from mlship_testsupport import find_tool

from mlship.cli.ci_steps import field_of
from mlship.errors import BadInputError
from mlship.render.ci import default_source

REPO = Path(__file__).resolve().parents[2]
SOURCE = "mlship @ git+https://github.com/acme/mlship@0123456789abcdef0123456789abcdef01234567"
BUILTIN = {"github": "vendor.github-workflows", "gitlab": "vendor.gitlab-ci"}
OUT = {"github": ".github/workflows/mlship.yml", "gitlab": ".gitlab-ci.yml"}


@pytest.fixture
def project(tmp_path: Path, iris_model: Path) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "iris.onnx").write_bytes(iris_model.read_bytes())
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "mlship.yaml").write_text(yaml.safe_dump(
        {"name": "iris", "model": {"source": "../models/iris.onnx"},
         "image": {"registry": "registry.example.com/ml", "size_budget_mb": 90}}))
    return tmp_path


def generate(project: Path, platform: str, *args: str) -> tuple[dict, dict, str]:
    run = mlship("ci", platform, "--config", "deploy/mlship.yaml", "--json", *args, cwd=project)
    assert run.code == 0, run.stderr
    document = check_success(("ci", platform), run.stdout)
    text = (project / document["out"]).read_text()
    return document, yaml.safe_load(text), text


def _tool(name: str) -> str:
    path = find_tool(name) or shutil.which(name)
    if path is None:
        message = f"{name} not installed (pip install '.[test]' / bash .ci/install-validators.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def check_schema(platform: str, path: Path) -> None:
    result = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", BUILTIN[platform],
                             str(path)], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("registry", ["platform", "config"])
def test_github_workflow_validates_and_lints(project: Path, registry: str) -> None:
    document, _, _ = generate(project, "github", "--mlship-source", SOURCE,
                              "--registry", registry)
    assert document["out"] == OUT["github"]
    check_schema("github", project / OUT["github"])
    lint = subprocess.run([_tool("actionlint"), OUT["github"]], cwd=project, capture_output=True,
                          text=True, check=False, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_github_actions_are_pinned_by_commit_with_the_tag_as_a_comment(project: Path) -> None:
    """A tag can be moved to other code; a commit sha cannot. actionlint (above) checks the
    pinned workflow; here every `uses:` is a sha of the one table, with its release tag."""
    import re

    from mlship.render.ci import ACTIONS

    generate(project, "github", "--mlship-source", SOURCE)
    text = (project / OUT["github"]).read_text()
    uses = re.findall(r"uses: (\S+)@(\S+)(.*)$", text, re.MULTILINE)
    assert uses
    table = {name: (sha, tag) for name, sha, tag in ACTIONS.values()}
    for name, ref, comment in uses:
        assert re.fullmatch(r"[0-9a-f]{40}", ref), (name, ref)
        assert (ref, comment.strip()) == (table[name][0], f"# {table[name][1]}"), name
    assert {name for name, _, _ in uses} == set(table)  # the table holds nothing unused
    for _name, _sha, tag in ACTIONS.values():
        assert re.fullmatch(r"v\d+\.\d+\.\d+", tag)


@pytest.mark.parametrize("registry", ["platform", "config"])
@pytest.mark.parametrize("smoke", ["--smoke", "--no-smoke"])
def test_gitlab_pipeline_validates(project: Path, registry: str, smoke: str) -> None:
    document, _, _ = generate(project, "gitlab", "--mlship-source", SOURCE,
                              "--registry", registry, smoke)
    assert document["smoke"] is (smoke == "--smoke")
    check_schema("gitlab", project / OUT["gitlab"])


def test_github_stages_credentials_cache_and_environments(project: Path) -> None:
    document, workflow, text = generate(project, "github", "--mlship-source", SOURCE)
    assert list(document["commands"]) == ["inspect", "build", "deploy", "canary"]
    assert document["commands"]["inspect"] == ("mlship inspect models/iris.onnx --json "
                                               "> mlship-inspect.json")
    assert document["commands"]["build"] == ("mlship build --config deploy/mlship.yaml --push "
                                             "--smoke --json > mlship-build.json")
    jobs = workflow["jobs"]
    assert list(jobs) == ["build", "staging", "production"]
    assert jobs["staging"]["needs"] == ["build"]
    assert jobs["production"]["needs"] == ["build", "staging"]
    assert jobs["staging"]["environment"] == "staging"
    assert jobs["production"]["environment"] == "production"
    runs = {job: "\n".join(step.get("run", "") for step in spec["steps"])
            for job, spec in jobs.items()}
    for name, command in document["commands"].items():
        job = {"deploy": "staging", "canary": "production"}.get(name, "build")
        assert command in runs[job], (name, job)
    # mlship comes from the pinned source, never from the unrelated PyPI project
    assert text.count(f"python -m pip install '{SOURCE}'") == 3
    assert "pip install mlship\n" not in text
    build = jobs["build"]
    assert build["permissions"]["packages"] == "write"
    assert build["env"]["MLSHIP_REGISTRY_PASSWORD"] == "${{ secrets.GITHUB_TOKEN }}"
    uses = {step.get("uses", "").split("@")[0]: step for step in build["steps"]}
    assert uses["docker/login-action"]["with"]["password"] == \
        "${{ env.MLSHIP_REGISTRY_PASSWORD }}"
    cache = uses["actions/cache"]["with"]
    assert cache["path"] == "~/.cache/mlship/wheelhouse"
    assert cache["key"] == "mlship-wheelhouse-${{ steps.lock.outputs.hash }}"
    assert "docker pull python:3.11-slim-bookworm" in runs["build"]
    for job in ("staging", "production"):
        assert jobs[job]["env"]["MLSHIP_IMAGE__DIGEST"] == "${{ needs.build.outputs.digest }}"
        kubeconfig = next(s for s in jobs[job]["steps"] if s.get("name") == "Kubeconfig")
        assert kubeconfig["env"]["KUBECONFIG_DATA"] == "${{ secrets.KUBECONFIG }}"


def test_gitlab_stages_credentials_cache_and_environments(project: Path) -> None:
    from mlship_runtime.manifest import sha256_file

    from mlship.resources import runtime_lock_file

    document, pipeline, _ = generate(project, "gitlab", "--mlship-source", SOURCE)
    assert pipeline["stages"] == ["inspect", "build", "staging", "production"]
    assert pipeline["variables"]["MLSHIP_IMAGE__REGISTRY"] == "$CI_REGISTRY_IMAGE"
    assert pipeline["variables"]["MLSHIP_REGISTRY_USERNAME"] == "$CI_REGISTRY_USER"
    assert pipeline["variables"]["MLSHIP_REGISTRY_PASSWORD"] == "$CI_REGISTRY_PASSWORD"
    assert pipeline["default"]["before_script"] == [f"python -m pip install '{SOURCE}'"]
    build = pipeline["build"]
    assert build["cache"]["key"] == f"mlship-wheelhouse-{sha256_file(runtime_lock_file())[:16]}"
    assert build["cache"]["paths"] == [".mlship-wheelhouse/"]
    assert pipeline["variables"]["MLSHIP_WHEELHOUSE"] == "$CI_PROJECT_DIR/.mlship-wheelhouse"
    assert build["artifacts"]["reports"]["dotenv"] == "mlship-build.env"
    assert build["script"][1] == document["commands"]["build"]
    assert "--smoke" not in document["commands"]["build"]  # dind: not on the job's loopback
    assert pipeline["staging"]["environment"]["name"] == "staging"
    assert pipeline["production"]["environment"]["name"] == "production"
    assert pipeline["production"]["needs"] == ["build", "staging"]
    assert pipeline["production"]["script"] == [document["commands"]["canary"]]


def test_config_registry_uses_registry_secrets(project: Path) -> None:
    _, workflow, text = generate(project, "github", "--mlship-source", SOURCE,
                                 "--registry", "config")
    assert workflow["jobs"]["build"]["env"]["MLSHIP_REGISTRY_USERNAME"] == \
        "${{ secrets.MLSHIP_REGISTRY_USERNAME }}"
    assert 'echo registry=registry.example.com/ml >> "$GITHUB_OUTPUT"' in text
    assert "GITHUB_TOKEN" not in text
    _, pipeline, _ = generate(project, "gitlab", "--mlship-source", SOURCE, "--registry",
                              "config", "--force")
    assert "MLSHIP_IMAGE__REGISTRY" not in pipeline["variables"]


def test_vendored_checkout_is_installed_from_its_path_and_keys_the_cache(tmp_path: Path) -> None:
    """Run inside this checkout: mlship is installed from `.` and GitLab keys on the lock."""
    try:
        installed_here = default_source(REPO) == "."
    except BadInputError:
        installed_here = False  # e.g. installed from another copy of the sources
    if not (REPO / "runtime" / "requirements.lock").is_file() or not installed_here:
        pytest.skip("mlship is not installed from this checkout")
    out = tmp_path / "gitlab.yml"
    config = REPO / "tests" / "data" / "configs" / "cpu.yaml"
    run = mlship("ci", "gitlab", "--config", str(config), "--out", str(out), cwd=REPO)
    assert run.code == 0, run.stderr
    pipeline = yaml.safe_load(out.read_text())
    assert pipeline["default"]["before_script"] == ["python -m pip install ."]
    assert pipeline["build"]["cache"]["key"] == {"files": ["runtime/requirements.lock"],
                                                 "prefix": "mlship-wheelhouse"}
    check_schema("gitlab", out)


def test_unknown_install_source_asks_for_mlship_source(project: Path) -> None:
    with pytest.raises(BadInputError, match="cannot tell where the pipeline should install"):
        default_source(project)
    run = mlship("ci", "github", "--config", "deploy/mlship.yaml", cwd=project)
    assert run.code == 2
    assert "pass --mlship-source" in run.stderr
    assert not (project / OUT["github"]).exists()


def test_refuses_to_overwrite_and_stdout_output(project: Path) -> None:
    generate(project, "gitlab", "--mlship-source", SOURCE)
    again = mlship("ci", "gitlab", "-c", "deploy/mlship.yaml", "--mlship-source", SOURCE,
                   cwd=project)
    assert again.code == 2
    assert again.stderr.splitlines()[0] == "error: .gitlab-ci.yml: already exists; not overwritten"
    printed = mlship("ci", "gitlab", "-c", "deploy/mlship.yaml", "--mlship-source", SOURCE,
                     "--out", "-", cwd=project)
    assert printed.code == 0, printed.stderr
    assert printed.stdout == (project / OUT["gitlab"]).read_text()


def test_field_helper_reads_a_report(tmp_path: Path) -> None:
    report = tmp_path / "mlship-build.json"
    report.write_text('{"schema": "mlship.build/v1", "ok": true, "digest": null}')
    with pytest.raises(BadInputError, match="has no 'digest'"):
        field_of(report, "digest")
    report.write_text('{"schema": "mlship.build/v1", "ok": true, "digest": "sha256:ab"}')
    assert field_of(report, "digest") == "sha256:ab"
    run = subprocess.run([sys.executable, "-m", "mlship.cli.ci_steps", "field",
                          str(tmp_path / "absent.json"),
                          "digest"], capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 2
    assert "not a readable mlship --json report" in run.stderr
