"""`mlship serve`, `mlship predict` and `mlship demo`: run the runtime locally and talk to it.

`serve` takes the runtime's own options (``python -m mlship_runtime --help``), so the local
server and the one in the image are configured identically, flags and ``MLSHIP_RUNTIME_*``
environment variables alike. ``--models FILE`` serves a model repository file; the runtime reads
JSON only, so a YAML file is read here and handed over as the same document.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mlship.cli import output, profile_options
from mlship.config.quantities import human_bytes
from mlship.errors import BadInputError, ServerError

if TYPE_CHECKING:
    import numpy as np
    from mlship_runtime.repository import Repository
    from mlship_runtime.settings import RuntimeSettings

    from mlship.serving.client import Prediction

def serve(
    ctx: typer.Context,
    model: str | None = typer.Argument(None, help="The .onnx model file to serve.",
                                       show_default=False, metavar="MODEL"),
    config: Path | None = typer.Option(None, "--config", "-c", show_default=False,
                                       help="Serve what mlship.yaml describes instead: its "
                                            "models, pipelines and runtime settings, as the "
                                            "pod would, on loopback."),
    shape: list[str] = profile_options.SHAPE,
    **runtime: str | None,
) -> None:
    """Serve MODEL over HTTP with the mlship runtime (no Docker needed).

    Every option below is the runtime's own, as in the image (MLSHIP_RUNTIME_<OPTION> sets it
    too); given here they override -c mlship.yaml. --models FILE (YAML or JSON) serves several
    models and pipelines instead (docs/runtime-api.md).
    """
    from mlship_runtime.options import parse_settings

    runtime_args = [arg for name, value in runtime.items()
                    if value is not None and _explicit(ctx, name)
                    for arg in (f"--{name.removeprefix(_RT).replace('_', '-')}", value)]
    runtime_args = _shape_options(runtime_args, shape)
    base: dict[str, Any] = {}
    if config is not None:
        if model is not None:
            raise BadInputError("mlship serve: give MODEL or --config, not both")
        base = _config_settings(config)
    given = model is not None or bool(base) or any(
        arg in ("--model", "--models") or arg.startswith(("--model=", "--models="))
        for arg in runtime_args) or bool(os.environ.get("MLSHIP_RUNTIME_MODEL")
                                         or os.environ.get("MLSHIP_RUNTIME_MODELS"))
    if not given:
        raise BadInputError("mlship serve: missing MODEL", hint="mlship serve path/to/model.onnx "
                            "(or --models FILE for several models, or -c mlship.yaml)")
    try:
        settings = parse_settings(([] if model is None else ["--model", model]) + runtime_args,
                                  base=base, prog="mlship serve MODEL")
    except ValueError as err:
        raise BadInputError(f"mlship serve: {err}") from None
    except SystemExit as exit_:  # argparse has printed the usage error
        raise typer.Exit(int(exit_.code or 2)) from None
    if settings.model and not settings.models and "://" not in settings.model:
        from mlship.model.inspect import inspect_model

        inspect_model(Path(settings.model))  # a broken file fails here: one clear line, exit 2
    repository = _read_repository(settings) if settings.models else None

    from mlship_runtime.server import run

    raise typer.Exit(run(settings, repository))


def _shape_options(args: list[str], shapes: list[str]) -> list[str]:
    """``--shape NAME=DIMS`` (repeatable, as on inspect and init) -> the runtime's one
    ``--input-shapes NAME=DIMS,...``."""
    return [*args, "--input-shapes", ",".join(shapes)] if shapes else args


def _explicit(ctx: typer.Context, name: str) -> bool:
    """Given on the command line or by an environment variable, not a default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


_RT = "runtime_"  # the Python names of the runtime's options, apart from MODEL and --config


def _runtime_options() -> None:
    """Declare every runtime setting (mlship_runtime.settings) as an option of ``serve``:
    one help style with the rest, click's "did you mean", the runtime's own env variables."""
    import inspect

    from mlship_runtime.options import option_help, option_metavar
    from mlship_runtime.settings import DECLARED

    signature = inspect.signature(serve)
    fixed = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    added = [inspect.Parameter(
        _RT + declared.name, inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
        default=typer.Option(None, declared.flag, metavar=option_metavar(declared),
                             envvar=declared.env, show_default=False,
                             help=option_help(declared)))
        for declared in DECLARED if declared.name != "input_shapes"]
    serve.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*fixed, *added])


_runtime_options()


def _config_settings(path: Path) -> dict[str, Any]:
    """The runtime settings mlship.yaml gives the pod, for a process here (options and
    MLSHIP_RUNTIME_* variables go over them). Only the AWS SDK's own variables for the
    config's S3 endpoint are set in this process's environment, and only where unset."""
    from mlship.config.load import load_config
    from mlship.render.runtime_env import local_environment, local_settings

    loaded = load_config(path)
    for key, value in local_environment(loaded).items():
        os.environ.setdefault(key, value)
    return local_settings(loaded, path.parent)


def _read_repository(settings: RuntimeSettings) -> Repository:
    """The repository file, YAML or JSON, checked as the runtime checks it; every local model
    file is inspected so a broken one fails with one line before any server starts."""
    from mlship_runtime.fetch import is_remote
    from mlship_runtime.repository import RepositoryError, parse, read

    from mlship.model.inspect import inspect_model

    path = Path(str(settings.models))
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            repository = parse(_yaml(path), str(path), path.parent, settings)
        else:
            repository = read(str(path), settings)
    except RepositoryError as err:
        raise BadInputError(f"mlship serve: {err}") from None
    for entry in repository.models:
        if not is_remote(entry.settings.model):
            inspect_model(Path(entry.settings.model))
    return repository


def _yaml(path: Path) -> Any:
    """A repository file, read as strictly as mlship.yaml (UTF-8, no duplicate keys, no
    aliases, bounded depth)."""
    from mlship.config.source import SourceError, read

    try:
        return read(path)[1]
    except SourceError as err:
        raise BadInputError(f"mlship serve: {err}") from None


def predict(
    url: str = typer.Option("http://127.0.0.1:8080", "--url", envvar="MLSHIP_URL",
                            help="Base URL of a running mlship runtime."),
    model: str = typer.Option(None, "--model", "-m", help="Model name (default: the only one)."),
    inputs_file: Path = typer.Option(None, "--input", "-i", show_default=False,
                                     help="Inputs: .json ({name: values} or a V2 request), .npy "
                                          "(single-input models) or .npz. Default: generated "
                                          "at the input profile the server warmed up at."),
    batch_size: int = typer.Option(1, "--batch-size", min=1,
                                   help="Rows to generate when no --input is given."),
    shape: list[str] = profile_options.SHAPE,
    binary: bool = typer.Option(False, "--binary", help="Use the V2 binary tensor extension."),
    timeout_s: float = typer.Option(30.0, "--timeout", help="Seconds to wait for the answer."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Send a prediction request to a running server and print the outputs."""
    from mlship.model.inputs import load_inputs
    from mlship.serving.client import RuntimeClient

    client = RuntimeClient(url, timeout_s=timeout_s)
    name = model or client.model_name()
    metadata = client.metadata(name)
    if shape and inputs_file is None:
        metadata = _at_shapes(metadata, shape)
    inputs = load_inputs(inputs_file, metadata, batch_size, note=output.info)
    prediction = client.infer(name, inputs, binary=binary)
    if json_output:
        output.emit_json("predict", _prediction_payload(prediction))
    else:
        _print_prediction(prediction)


def _at_shapes(metadata: dict[str, Any], options: list[str]) -> dict[str, Any]:
    """The server's metadata with ``--shape`` as the profile generated inputs take."""
    from mlship_runtime.profile import ProfileError, given

    from mlship.model.probe import ProfileRequest

    request = ProfileRequest.from_options(options, None)
    try:
        profile = given(metadata["inputs"], request.shapes, source="--shape")
    except ProfileError as err:
        raise BadInputError(str(err)) from None
    parameters = {**(metadata.get("parameters") or {}), "input_profile": profile.to_dict()}
    return {**metadata, "parameters": parameters}


def demo(
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Serve the bundled example model on loopback, answer one prediction, and stop cleanly."""
    import json
    import time

    from mlship.model.inputs import inputs_from_json
    from mlship.model.inspect import inspect_model
    from mlship.resources import example_model, examples_dir
    from mlship.serving.client import RuntimeClient
    from mlship.serving.local_server import LocalServer

    model_path = example_model()
    signature = inspect_model(model_path)
    output.info(f"[bold]1/4 inspect[/bold]  {model_path.name}: {len(signature.inputs)} input(s), "
                f"{len(signature.outputs)} output(s), {human_bytes(signature.size_bytes)}, "
                f"sha256 {signature.sha256[:12]}…")
    with LocalServer(model_path) as server:
        started = time.perf_counter()
        output.info(f"[bold]2/4 serve[/bold]    mlship runtime on {server.url} (pid {server.pid})")
        client = RuntimeClient(server.url)
        if not client.wait_ready(timeout_s=60):
            raise ServerError(f"the runtime did not become ready: {server.stderr_tail()}")
        ready_s = time.perf_counter() - started
        output.info(f"             ready in {ready_s:.2f} s (model loaded, warm-up inference ok)")
        request = json.loads((examples_dir() / "iris-request.json").read_text())
        name = client.model_name()
        inputs = inputs_from_json(request, client.metadata(name), "iris-request.json")
        prediction = client.infer(name, inputs)
        output.info(f"[bold]3/4 predict[/bold]  POST /v2/models/{name}/infer "
                    f"({prediction.latency_ms:.1f} ms)")
        if not json_output:
            _print_prediction(prediction)
        exit_code = server.stop()
    output.info(f"[bold]4/4 stop[/bold]     SIGTERM → drained, exit code {exit_code}")
    if exit_code != 0:
        raise ServerError(f"the runtime exited with code {exit_code} after SIGTERM: "
                          f"{server.stderr_tail()}")
    output.info(f"next: [bold]mlship init {model_path} && mlship render[/bold] writes the "
                "Dockerfile and Kubernetes manifests")
    if json_output:
        output.emit_json("demo", {"model": signature.to_dict(), "url": server.url,
                                  "ready_seconds": round(ready_s, 3),
                                  "prediction": _prediction_payload(prediction),
                                  "server_exit_code": exit_code})


def _plain(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [item.decode(errors="replace") if isinstance(item, bytes) else item
                for item in array.ravel().tolist()]
    return array.tolist()


def _prediction_payload(prediction: Prediction) -> dict[str, Any]:
    from mlship_runtime.signature import v2_datatype_of

    return {
        "model": prediction.model,
        "latency_ms": round(prediction.latency_ms, 3),
        "outputs": {name: {"datatype": v2_datatype_of(value), "shape": list(value.shape),
                           "data": _plain(value)}
                    for name, value in prediction.outputs.items()},
    }


def _print_prediction(prediction: Prediction) -> None:
    import numpy as np
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"outputs of {escape(prediction.model)}", title_justify="left")
    for column in ("name", "dtype", "shape", "values"):
        table.add_column(column, overflow="fold")
    for name, value in prediction.outputs.items():
        text = np.array2string(value, threshold=20, precision=4, max_line_width=60)
        table.add_row(escape(name), str(value.dtype), str(list(value.shape)), escape(text))
    output.stdout_console().print(table)
    sys.stdout.flush()
