"""`mlship model push|pull|ls`: model artifacts in S3 (or an S3-compatible store) or Google
Cloud Storage, chosen by the URI's scheme (s3:// or gs://).

S3 credentials come from the standard AWS chain (environment, AWS_PROFILE and the shared files,
web identity, instance roles), the endpoint from --endpoint-url or AWS_ENDPOINT_URL. GCS
credentials come from Google's chain (GOOGLE_APPLICATION_CREDENTIALS, gcloud's
application-default login, the metadata server), the endpoint from --endpoint-url or
STORAGE_EMULATOR_HOST. Progress goes to stderr; --json prints one document on stdout. boto3 is
imported only inside commands (through mlship.model.storage).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mlship.cli import output
from mlship.config.quantities import human_bytes
from mlship.errors import BadInputError

if TYPE_CHECKING:
    from types import ModuleType

    from mlship.model.gcs_storage import GcsOptions
    from mlship.model.storage import Progress, S3Options

app = typer.Typer(name="model", no_args_is_help=True, rich_markup_mode=None,
                  help="Model artifacts in object storage: push, pull, ls (s3:// and gs://).")

_ENDPOINT_HELP = ("Endpoint URL: for s3:// MinIO, Ceph or moto (default: AWS_ENDPOINT_URL, else "
                  "AWS); for gs:// an authenticated endpoint (default: STORAGE_EMULATOR_HOST, "
                  "an emulator without credentials, else storage.googleapis.com).")
_REGION_HELP = "S3 region (default: AWS_REGION or the AWS config)."
_STYLE_HELP = "S3 addressing: auto (path-style for a custom endpoint), path or virtual."
_JSON_HELP = "Print one JSON object on stdout."
_STYLES = ("auto", "path", "virtual")


def _store(uri: str, endpoint_url: str | None, region: str | None,
           addressing_style: str) -> tuple[ModuleType, S3Options | GcsOptions]:
    """The storage module for ``uri``'s scheme and its options."""
    if uri.startswith("gs://"):
        from mlship.model import gcs_storage

        for flag, value in (("--region", region), ("--addressing-style",
                                                   None if addressing_style == "auto" else
                                                   addressing_style)):
            if value is not None:
                raise BadInputError(f"{flag}: applies to s3:// only, not {uri}",
                                    hint=f"drop {flag}")
        return gcs_storage, gcs_storage.GcsOptions(endpoint_url=endpoint_url)
    from mlship.model import storage

    return storage, _options(endpoint_url, region, addressing_style)


def _options(endpoint_url: str | None, region: str | None, addressing_style: str) -> S3Options:
    from mlship.errors import BadInputError
    from mlship.model.storage import S3Options

    if addressing_style not in _STYLES:
        raise BadInputError(f"--addressing-style: expected one of {', '.join(_STYLES)}, got "
                            f"{addressing_style!r}")
    return S3Options(endpoint_url=endpoint_url, region=region, addressing_style=addressing_style)


@app.command("push")
def push(
    model: Path = typer.Argument(..., help="The .onnx file (its external data goes along).",
                                 show_default=False),
    destination: str = typer.Argument(..., help="s3://BUCKET/PREFIX/ or gs://BUCKET/PREFIX/ "
                                      "to push to.",
                                      show_default=False),
    endpoint_url: str | None = typer.Option(None, "--endpoint-url", help=_ENDPOINT_HELP),
    region: str | None = typer.Option(None, "--region", help=_REGION_HELP),
    addressing_style: str = typer.Option("auto", "--addressing-style", help=_STYLE_HELP),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help=_JSON_HELP),
) -> None:
    """Upload MODEL, its external data and a manifest of sha256 digests to DESTINATION."""
    storage, options = _store(destination, endpoint_url, region, addressing_style)
    with _Bar("uploading") as bar:
        result = storage.push(model, destination, options, on_progress=bar)
    output.info(f"pushed {result['model_uri']} ({len(result['files'])} file(s), "
                f"{human_bytes(result['total_bytes'])}, sha256 {result['sha256'][:12]}) "
                f"with its manifest in {result['duration_s']:.1f} s")
    output.info(f"  in mlship.yaml: model.source: {result['model_uri']}, model.sha256: "
                f"{result['digest']}, model.size_bytes: {result['total_bytes']}")
    if json_output:
        output.emit_json("model-push", result)


@app.command("pull")
def pull(
    source: str = typer.Argument(..., help="s3:// or gs://BUCKET/PREFIX/ (or its model file) "
                                 "to pull.",
                                 show_default=False),
    directory: Path = typer.Option(Path(), "--out", "-o", help="Directory to write into; - "
                                   "writes a one-file model to stdout."),
    endpoint_url: str | None = typer.Option(None, "--endpoint-url", help=_ENDPOINT_HELP),
    region: str | None = typer.Option(None, "--region", help=_REGION_HELP),
    addressing_style: str = typer.Option("auto", "--addressing-style", help=_STYLE_HELP),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help=_JSON_HELP),
) -> None:
    """Download a pushed model into --out, checking every file's sha256 against its manifest."""
    storage, options = _store(source, endpoint_url, region, addressing_style)
    if output.to_stdout(directory):
        output.claim_stdout("--out", json_output)
        _pull_to_stdout(source, storage, options)
        return
    with _Bar("downloading") as bar:
        result = storage.pull(source, directory, options, on_progress=bar)
    output.info(f"pulled {result['local_path']} ({len(result['files'])} file(s), "
                f"{human_bytes(result['total_bytes'])}), every sha256 verified")
    if json_output:
        output.emit_json("model-pull", result)


def _pull_to_stdout(source: str, storage: ModuleType, options: S3Options | GcsOptions) -> None:
    """Pull into a scratch folder (every sha256 checked), then the one file to stdout: a model
    with external data is several files, which only a folder holds."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mlship-pull-") as scratch:
        with _Bar("downloading") as bar:
            result = storage.pull(source, Path(scratch), options, on_progress=bar)
        if len(result["files"]) != 1:
            raise BadInputError(f"--out -: {source} is {len(result['files'])} files (the model "
                                "and its external data); stdout takes one",
                                hint="give a directory: --out DIR")
        output.write_binary(Path(result["local_path"]).read_bytes(), "--out", "an ONNX model")
    output.info(f"pulled {result['model_uri']} to stdout "
                f"({human_bytes(result['total_bytes'])}), its sha256 verified")


@app.command("ls")
def ls(
    uri: str = typer.Argument(..., help="s3:// or gs://BUCKET[/PREFIX] to list pushed models "
                              "under.",
                              show_default=False),
    endpoint_url: str | None = typer.Option(None, "--endpoint-url", help=_ENDPOINT_HELP),
    region: str | None = typer.Option(None, "--region", help=_REGION_HELP),
    addressing_style: str = typer.Option("auto", "--addressing-style", help=_STYLE_HELP),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help=_JSON_HELP),
) -> None:
    """List the models pushed under URI: location, size, sha256, mlship version, time."""
    storage, options = _store(uri, endpoint_url, region, addressing_style)
    result = storage.ls(uri, options)
    if json_output:
        output.emit_json("model-ls", result)
        return
    if not result["models"]:
        output.info(f"no pushed models under {uri}")
        return
    console = output.stdout_console()
    for model in result["models"]:
        console.print(f"{model['model_uri']}  {human_bytes(model['total_bytes']):>10}  "
                      f"{model['sha256'][:12]}  {model['files']} file(s)  {model['created']}",
                      highlight=False, soft_wrap=True)


class _Bar:
    """Transfer progress on stderr: a Rich bar per file on a terminal, one line per file else."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.live = output.color_enabled()
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     DownloadColumn(), TransferSpeedColumn(),
                                     console=output.stderr_console(), transient=True)
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, path: str, done: int, total: int) -> None:
        if self.progress is None:
            if path not in self.tasks:
                self.tasks[path] = True
                output.info(f"{self.verb} {path} ({human_bytes(max(total, 0))})")
            return
        if path not in self.tasks:
            self.tasks[path] = self.progress.add_task(f"{self.verb} {path}", total=total)
        self.progress.update(self.tasks[path], completed=done)
