"""The ``mlship`` command line: a root Typer app joining one small module per pipeline stage.

Heavy libraries (onnx, onnxruntime, docker, kubernetes, boto3) are imported inside command
bodies so that ``mlship --help`` stays fast. Errors become exit codes in exactly one place:
``_Group.invoke``.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from mlship import __version__
from mlship.cli import output
from mlship.errors import ExitCode, MlshipError


class _Group(TyperGroup):
    """Root group: maps every MlshipError to its stderr line and exit code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from mlship.cli.contract import assign_envvars
        from mlship.cli.examples import assign_examples

        assign_envvars(self)  # MLSHIP_<COMMAND>_<OPTION> for every option, later commands too
        assign_examples(self)

    # typer hands its own Context subclass; the base class annotates click's.
    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        ctx.meta["mlship.argv"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        output.reset(command=ctx.invoked_subcommand or ctx.info_name or "mlship")
        output.state.no_color = bool(ctx.params.get("no_color"))
        output.state.debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except MlshipError as err:
            output.report_error(err)
            raise typer.Exit(int(err.exit_code)) from None
        except KeyboardInterrupt:
            output.info("interrupted")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except Exception as err:
            if _is_usage_error(err) and _json_requested(ctx):
                output.report_usage_error(err)  # the JSON error document; click prints the rest
            # Usage errors and exits belong to click (vendored by newer typer): let them through.
            if output.state.debug or type(err).__module__.split(".")[0] in ("click", "typer"):
                raise
            output.report_error(_internal(err))
            raise typer.Exit(int(ExitCode.INTERNAL)) from None


def _is_usage_error(err: Exception) -> bool:
    # click's UsageError, from click itself or the copy newer typer vendors
    return any(cls.__name__ == "UsageError" for cls in type(err).__mro__)


def _json_requested(ctx: typer.Context) -> bool:
    argv = ctx.meta.get("mlship.argv", [])
    return "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv


def _internal(err: Exception) -> MlshipError:
    wrapped = MlshipError(f"internal error: {type(err).__name__}: {err}",
                          hint="rerun with --debug for a traceback, and report it")
    wrapped.exit_code = ExitCode.INTERNAL
    return wrapped


app = typer.Typer(
    cls=_Group,
    name="mlship",
    help="Ship an ONNX model to production: inspect, serve, render, build, push, deploy, canary.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    def _dist_version(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    from mlship_runtime import __version__ as runtime_version

    sys.stdout.write(
        f"mlship {__version__}\nmlship-runtime {runtime_version}\n"
        f"onnxruntime {_dist_version('onnxruntime')}\n"
    )
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print mlship's, the runtime's and onnxruntime's versions."),
    debug: bool = typer.Option(False, "--debug", envvar="MLSHIP_DEBUG",
                               help="Show tracebacks for internal errors."),
    no_color: bool = typer.Option(False, "--no-color", envvar="MLSHIP_NO_COLOR",
                                  help="No colours (NO_COLOR is honoured too)."),
) -> None:
    """Ship an ONNX model to production."""


def _register() -> None:
    from mlship.cli import build as build_cmd
    from mlship.cli import inspect as inspect_cmd
    from mlship.cli import optimize as optimize_cmd
    from mlship.cli import render as render_cmd
    from mlship.cli import serve as serve_cmd

    app.command("inspect")(inspect_cmd.inspect)
    app.command("optimize")(optimize_cmd.optimize)
    from mlship.cli import compare as compare_cmd

    app.command("compare")(compare_cmd.compare)
    app.command("serve")(serve_cmd.serve)
    app.command("predict")(serve_cmd.predict)
    app.command("demo")(serve_cmd.demo)
    app.command("init")(render_cmd.init)
    app.command("render")(render_cmd.render)
    app.command("schema")(render_cmd.schema)
    app.command("build")(build_cmd.build)
    app.command("push")(build_cmd.push)
    from mlship.cli import deploy as deploy_cmd

    app.command("deploy")(deploy_cmd.deploy)
    app.command("diff")(deploy_cmd.diff)
    from mlship.cli import delete as delete_cmd

    app.command("delete")(delete_cmd.delete)
    from mlship.cli import ci as ci_cmd

    app.add_typer(ci_cmd.app, name="ci")
    from mlship.cli import batch as batch_cmd
    from mlship.cli import model as model_cmd

    app.add_typer(model_cmd.app, name="model")
    app.command("batch")(batch_cmd.batch)
    from mlship.cli import baseline as baseline_cmd

    app.command("baseline")(baseline_cmd.baseline)
    from mlship.cli import rollout as rollout_cmd

    app.add_typer(rollout_cmd.app, name="rollout")
    from mlship.cli import rollout_manage

    app.command("history")(rollout_manage.history)


_register()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="mlship")
