"""`mlship batch`: run a model over a directory or S3 prefix of input files, resumably.

The work is done by ``mlship_runtime.batch``, the same runner the rendered CronJob starts in
the image (``python -m mlship_runtime.batch``); this command runs it in-process and turns its
outcome into mlship's output contract: progress on stderr, one JSON document with --json, and
a documented exit code (2 when input files failed, 3 model, 11 storage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mlship.cli import output
from mlship.errors import BadInputError, ModelError, StorageError


def batch(
    model: str = typer.Argument(..., help="The model: a path, s3:// or gs://BUCKET/KEY (or "
                                "a pushed prefix) or https://URL.", show_default=False),
    input_uri: str = typer.Option(..., "--input", "-i", help="Directory or s3://BUCKET/PREFIX/ "
                                  "of .npy, .npz and .jsonl files.", show_default=False),
    output_uri: str | None = typer.Option(None, "--output", "-o", help="Directory or "
                                          "s3://BUCKET/PREFIX/ where outputs go (default: "
                                          "beside the inputs); one file per input, so not -."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Rows per inference."),
    model_sha256: str | None = typer.Option(None, "--model-sha256", help="Expected sha256 of "
                                            "the model file (required for a remote model "
                                            "without a manifest)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Download cache for remote "
                                          "models (default: ~/.cache/mlship/models)."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Run MODEL over every input file without an output yet; NAME.out.npz / NAME.out.jsonl."""
    from mlship_runtime.batch import StorageFailure, run_batch
    from mlship_runtime.fetch import FetchError
    from mlship_runtime.s3 import S3Error
    from mlship_runtime.settings import RuntimeSettings

    if output.to_stdout(output_uri):
        raise BadInputError("--output -: batch writes one output file per input (and resumes "
                            "from them), which stdout cannot hold",
                            hint="give a directory or an s3:// prefix; `mlship predict` prints "
                                 "one prediction")
    try:
        settings = RuntimeSettings(model=model, model_sha256=model_sha256,
                                   cache_dir=str(cache_dir) if cache_dir else None)
    except ValueError as err:
        raise BadInputError(f"mlship batch: {err}") from None
    if "://" not in model:
        from mlship.model.inspect import inspect_model

        inspect_model(Path(model))  # a broken local file: one line, exit 2, before any work
    try:
        summary = run_batch(settings, input_uri, output_uri, batch_size=batch_size,
                            on_file=_progress)
    except (StorageFailure, FetchError, S3Error) as err:
        raise StorageError(str(err), hint="check the URI and the AWS credentials / endpoint "
                                          "(AWS_ENDPOINT_URL)") from None
    except (OSError, RuntimeError, ValueError) as err:  # onnxruntime's load failures
        raise ModelError(f"{model}: cannot load the model: {str(err).splitlines()[0]}") from None
    output.info(f"batch done: {summary.written} written, {summary.skipped} skipped (output "
                f"exists), {summary.failed} failed of {summary.files} input file(s); "
                f"{summary.rows} rows in {summary.duration_s:.1f} s")
    if summary.failed:
        first = summary.failures[0]
        raise BadInputError(f"{summary.failed} of {summary.files} input file(s) failed; first: "
                            f"{first['input']}: {first['error']}",
                            hint="fix or remove them and run again: written outputs are kept")
    if json_output:
        output.emit_json("batch", summary.to_dict())


def _progress(event: dict[str, Any]) -> None:
    from rich.markup import escape

    status = event["status"]
    detail = {"written": f"{event.get('rows')} rows -> {event['output']}",
              "skipped": "output exists", "failed": event.get("error", "")}[status]
    output.info(escape(f"[{event['index']}/{event['total']}] {event['input']}: {status} "
                       f"({detail})"))
