"""``mlship ci github|gitlab``: a CI pipeline for the project, from its mlship.yaml.

The pipeline is inspect -> build (size budget, smoke test) and push -> deploy to staging ->
canary to production with analysis. Every decision is made here, into a frozen
``PipelineContext``: how mlship is installed (never ``pip install mlship``: that PyPI name
belongs to another project), which registry and credentials, the mlship command of each step.
The templates in ``templates/ci/`` only lay those values out as YAML.

Every value in a step's shell line is one shell word (``mlship.render.jinja.shell_word``, the
``shell`` filter): quoted so the shell reads it back as it is, and refused when no quoting can
carry it (a line break; ``${{``, which GitHub expands before any shell runs). A refused value
from the command line or mlship.yaml is a BadInputError naming it, before anything is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlship.errors import BadInputError

Platform = Literal["github", "gitlab"]
RegistryMode = Literal["platform", "config"]
TEMPLATES = {"github": "ci/github-workflow.yml.jinja", "gitlab": "ci/gitlab-ci.yml.jinja"}
DEFAULT_OUT = {"github": Path(".github/workflows/mlship.yml"), "gitlab": Path(".gitlab-ci.yml")}
PYTHON_VERSION = "3.11"
# Every action the GitHub workflow uses, pinned by commit (a tag can be moved to other code):
# name -> (commit sha of the release, the release tag, printed as a comment next to it).
ACTIONS = {
    "checkout": ("actions/checkout", "11bd71901bbe5b1630ceea73d27597364c9af683", "v4.2.2"),
    "setup-python": ("actions/setup-python", "a26af69be951a213d495a4c3e4e4022e16d87065",
                     "v5.6.0"),
    "cache": ("actions/cache", "5a3ec84eff668545956fd18022155c47e93e2684", "v4.2.3"),
    "login": ("docker/login-action", "74a5d142397b4f367a81961eba4e8cd7edddf772", "v3.4.0"),
    "upload-artifact": ("actions/upload-artifact", "ea165f8d65b6e75b540449e92b4886f43607fa02",
                        "v4.6.2"),
}
# The pushed image pinned by digest (registry/repository@sha256:...), handed to the deploy jobs.
IMAGE_VARIABLE = "DEPLOY_IMAGE"
# Step reports written by `--json`: uploaded as artifacts, read by later steps.
REPORTS = {"inspect": "mlship-inspect.json", "build": "mlship-build.json",
           "deploy": "mlship-deploy.json", "canary": "mlship-canary.json"}


@dataclass(frozen=True)
class DeployJob:
    """One job after the build: where it deploys and with which mlship command."""

    id: str
    title: str
    needs: str  # YAML: a job id or a flow list
    environment: str
    timeout_minutes: int
    step: str
    command: str  # key of PipelineContext.commands


DEPLOY_JOBS = (
    DeployJob("staging", "deploy to staging", "[build]", "staging", 20, "Deploy", "deploy"),
    DeployJob("production", "canary to production", "[build, staging]", "production", 60,
              "Canary with analysis", "canary"),
)


@dataclass(frozen=True)
class PipelineContext:
    """Everything a CI template needs, computed; templates add layout only."""

    platform: Platform
    app: str
    mlship_version: str
    install: str  # the pip command installing mlship
    mlship_source: str
    registry_mode: RegistryMode
    registry: str | None  # the config's image.registry ("config" mode)
    base_image: str
    branch: str
    python_version: str
    smoke: bool
    lock_hash: str  # of the generating mlship's runtime lock (GitLab's cache key)
    lock_file: str | None  # the lock inside a vendored mlship checkout, if any
    commands: dict[str, str] = field(default_factory=dict)  # step -> mlship command line
    helpers: dict[str, str] = field(default_factory=dict)  # base image pull, digest hand-over
    deploy_jobs: tuple[DeployJob, ...] = DEPLOY_JOBS
    image_variable: str = IMAGE_VARIABLE

    def to_dict(self) -> dict[str, Any]:
        return {"platform": self.platform, "app": self.app, "mlship_source": self.mlship_source,
                "registry_mode": self.registry_mode, "smoke": self.smoke, "branch": self.branch,
                "commands": dict(self.commands)}


def pipeline_context(platform: Platform, config_path: Path, *, mlship_source: str | None,
                     registry_mode: RegistryMode, branch: str, smoke: bool | None,
                     project_root: Path) -> PipelineContext:
    """Read mlship.yaml and decide every value of the pipeline."""
    from mlship_runtime.manifest import sha256_file

    from mlship import __version__
    from mlship.config.load import load_config
    from mlship.resources import runtime_lock_file

    _check_branch(branch)
    # The pipeline sets its own overrides; the generating shell's must not leak into it.
    config = load_config(config_path, environ={})
    if registry_mode == "config" and not config.image.registry:
        raise BadInputError(f"{config_path}: image.registry is not set, and --registry config "
                            "pushes to it", hint="set image.registry, or use --registry platform "
                                                 "(ghcr.io / the GitLab project registry)")
    source = mlship_source or default_source(project_root)
    config_arg = _word(_relative(config_path, project_root), f"{config_path}: the config path")
    commands = {"build": _build_command(config_arg, smoke=_smoke(platform, smoke)),
                "deploy": f'mlship deploy --config {config_arg} --image '
                          f'"${IMAGE_VARIABLE}" --json > {REPORTS["deploy"]}',
                "canary": f'mlship rollout canary --config {config_arg} --image '
                          f'"${IMAGE_VARIABLE}" --json > {REPORTS["canary"]}'}
    model = _local_model(config, config_path, project_root)
    if model is not None:
        commands = {"inspect": f"mlship inspect {_word(model, 'model.source')} --json "
                               f"> {REPORTS['inspect']}", **commands}
    local = _local_checkout(source, project_root)
    digest = f"$(python -m mlship.cli.ci_steps field {REPORTS['build']} digest)"
    image = f"$(python -m mlship.cli.ci_steps image {REPORTS['build']})"
    base = _word(config.base_image, "image.base")
    helpers = {
        "github": {"pull": f"docker pull {base}",
                   "digest": f'echo "digest={digest}" >> "$GITHUB_OUTPUT"',
                   "image": f'echo "image={image}" >> "$GITHUB_OUTPUT"'},
        "gitlab": {"pull": f"python -m mlship.cli.ci_steps pull {base}",
                   "digest": f'echo "MLSHIP_IMAGE__DIGEST={digest}" > mlship-build.env',
                   "image": f'echo "{IMAGE_VARIABLE}={image}" >> mlship-build.env'},
    }[platform]
    return PipelineContext(
        platform=platform, app=config.name, mlship_version=__version__,
        install=f"python -m pip install {_word(source, '--mlship-source')}",
        mlship_source=source,
        registry_mode=registry_mode, registry=config.image.registry,
        base_image=config.base_image, branch=branch, python_version=PYTHON_VERSION,
        smoke=_smoke(platform, smoke), lock_hash=sha256_file(runtime_lock_file()),
        lock_file=f"{local}/runtime/requirements.lock".removeprefix("./") if local else None,
        commands=commands, helpers=helpers)


def _word(value: str, what: str) -> str:
    """``value`` as one shell word of a step; BadInputError naming ``what`` when it cannot be."""
    from mlship.render.jinja import UnsafeValueError, shell_word

    try:
        return shell_word(value)
    except UnsafeValueError as err:
        raise BadInputError(f"{what}: {value!r} cannot be written into a CI shell step: "
                            f"{err.reason}") from None


_BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")


def _check_branch(branch: str) -> None:
    """A branch name as git allows it, narrowed to what needs no quoting in a GitHub filter
    or a GitLab rule expression."""
    if not _BRANCH.fullmatch(branch) or ".." in branch or "//" in branch or \
            branch.endswith(("/", ".", ".lock")):
        raise BadInputError(f"--branch: {branch!r} is invalid: must be a branch name of "
                            "letters, digits, '_', '-', '.' and '/' (e.g. main, release/v2)")


def _smoke(platform: Platform, smoke: bool | None) -> bool:
    # GitLab builds on a docker:dind service: its containers are not on the job's loopback,
    # where the smoke test talks to the image (see docs/ci.md).
    return (platform == "github") if smoke is None else smoke


def _build_command(config_arg: str, *, smoke: bool) -> str:
    flags = "--push --smoke" if smoke else "--push"
    return f"mlship build --config {config_arg} {flags} --json > {REPORTS['build']}"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise BadInputError(f"{path}: outside the project ({root}); the pipeline runs from the "
                            "repository root", hint="run mlship ci from the repository root "
                                                    "with a config inside it") from None


def _local_model(config: Any, config_path: Path, root: Path) -> str | None:
    if config.model.kind != "image":
        return None  # remote models are fetched at run time, not inspected in CI
    source = Path(config.model.source)
    relative = _relative(source if source.is_absolute() else config_path.parent / source, root)
    # A file named like an option (-rf) must stay the argument it is.
    return f"./{relative}" if relative.startswith("-") else relative


def default_source(project_root: Path) -> str:
    """Where the pipeline installs mlship from: how this mlship was installed (PEP 610).

    A git install is pinned to its commit; a checkout inside the project is installed from
    that path. Anything else cannot be reproduced on a CI runner: ask for --mlship-source.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        direct = distribution("mlship").read_text("direct_url.json")
    except PackageNotFoundError:
        direct = None
    info = json.loads(direct) if direct else {}
    url = str(info.get("url", ""))
    vcs = info.get("vcs_info")
    if vcs and vcs.get("vcs") == "git" and vcs.get("commit_id"):
        return f"mlship @ git+{url}@{vcs['commit_id']}"
    if "dir_info" in info and url.startswith("file://"):
        checkout = Path(url.removeprefix("file://"))
        try:
            relative = checkout.resolve().relative_to(project_root.resolve()).as_posix()
        except ValueError:
            pass
        else:
            return "." if relative == "." else f"./{relative}"
    raise BadInputError(
        "cannot tell where the pipeline should install mlship from: this one is not a git "
        "install nor a checkout inside the project",
        hint='pass --mlship-source, e.g. "mlship @ git+https://github.com/ORG/mlship@v0.1.0" '
             "(never plain `mlship`: that PyPI name is another project)")


def _local_checkout(source: str, root: Path) -> str | None:
    """The relative path of a vendored mlship checkout, if ``source`` is one."""
    if not (source == "." or source.startswith("./")):
        return None
    return source if (root / source / "runtime" / "requirements.lock").is_file() else None


def render_pipeline(context: PipelineContext) -> str:
    """The pipeline file's text; it parses as YAML or this raises (a bug here)."""
    import yaml

    from mlship.render.jinja import render_template

    text = render_template(TEMPLATES[context.platform], ctx=context, reports=REPORTS,
                           action={key: f"{name}@{sha}  # {tag}"
                                   for key, (name, sha, tag) in ACTIONS.items()})
    yaml.safe_load(text)
    return text
