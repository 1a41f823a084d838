"""`mlship ci github` and `mlship ci gitlab`: write the project's CI pipeline
(``mlship.render.ci`` decides what it holds)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from mlship.cli import output
from mlship.errors import BadInputError

if TYPE_CHECKING:
    from mlship.render.ci import Platform, RegistryMode

app = typer.Typer(name="ci", help="Write a CI pipeline: inspect, build, push, deploy to "
                  "staging, canary to production.", no_args_is_help=True)

_SOURCE_HELP = ('pip requirement the pipeline installs mlship from, e.g. "mlship @ '
                'git+https://github.com/ORG/mlship@v0.1.0" or ./vendor/mlship (default: how '
                "this mlship is installed: its git commit, or its checkout inside the project).")
_REGISTRY_HELP = ("platform: push to the platform's registry with its own credentials (GHCR, "
                  "the GitLab project registry); config: to mlship.yaml's image.registry with "
                  "MLSHIP_REGISTRY_USERNAME/PASSWORD secrets.")


def _write(platform: str, out: Path | None, config: Path, mlship_source: str | None,
           registry: str, branch: str, smoke: bool | None, force: bool,
           json_output: bool) -> None:
    from mlship.render.ci import DEFAULT_OUT, pipeline_context, render_pipeline

    if registry not in ("platform", "config"):
        raise BadInputError(f"--registry: {registry!r} is invalid: must be platform or config")
    to_stdout = output.to_stdout(out)
    if to_stdout:
        output.claim_stdout("--out", json_output)
    target = None if to_stdout else (out or DEFAULT_OUT[platform])
    if target is not None and target.exists() and not force:
        raise BadInputError(f"{target}: already exists; not overwritten",
                            hint="pass --force to replace it")
    context = pipeline_context(cast("Platform", platform), config, mlship_source=mlship_source,
                               registry_mode=cast("RegistryMode", registry), branch=branch,
                               smoke=smoke, project_root=Path.cwd())
    text = render_pipeline(context)
    if target is None:
        typer.echo(text, nl=False)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    if json_output:
        output.emit_json("ci", {"out": str(target), **context.to_dict()})
        return
    from rich.markup import escape

    output.stderr_console().print(escape(f"wrote {target}: {', '.join(context.commands)} "
                                         f"(mlship from {context.mlship_source})"),
                                  soft_wrap=True)


def github(
    out: Path | None = typer.Option(None, "--out", "-o", show_default=False,
                                    help="Where to write (default .github/workflows/mlship.yml;"
                                         " - for stdout)."),
    config: Path = typer.Option(Path("mlship.yaml"), "--config", "-c", help="Path of mlship.yaml."),
    mlship_source: str | None = typer.Option(None, "--mlship-source", help=_SOURCE_HELP,
                                             show_default=False),
    registry: str = typer.Option("platform", "--registry", help=_REGISTRY_HELP),
    branch: str = typer.Option("main", "--branch", help="Branch whose pushes run the pipeline."),
    smoke: bool = typer.Option(True, "--smoke/--no-smoke", help="Smoke-test the image in the "
                               "build job."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Write a GitHub Actions workflow for this project."""
    _write("github", out, config, mlship_source, registry, branch, smoke, force, json_output)


def gitlab(
    out: Path | None = typer.Option(None, "--out", "-o", show_default=False,
                                    help="Where to write (default .gitlab-ci.yml; - for "
                                         "stdout)."),
    config: Path = typer.Option(Path("mlship.yaml"), "--config", "-c", help="Path of mlship.yaml."),
    mlship_source: str | None = typer.Option(None, "--mlship-source", help=_SOURCE_HELP,
                                             show_default=False),
    registry: str = typer.Option("platform", "--registry", help=_REGISTRY_HELP),
    branch: str = typer.Option("main", "--branch", help="Branch whose pushes run the pipeline."),
    smoke: bool = typer.Option(False, "--smoke/--no-smoke", help="Smoke-test the image in the "
                               "build job (needs runners whose services share the job's "
                               "network, e.g. the Kubernetes executor)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Write a GitLab CI pipeline (.gitlab-ci.yml) for this project."""
    _write("gitlab", out, config, mlship_source, registry, branch, smoke, force, json_output)


app.command("github")(github)
app.command("gitlab")(gitlab)
