"""`mlship baseline`: compute the drift baseline the runtime compares live inputs against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mlship.cli import output


def baseline(
    inputs: list[Path] = typer.Option(..., "--input", "-i", show_default=False,
                                      help="Sample file (.npz, .npy, .json, .jsonl/.ndjson); "
                                           "repeat for more. Rows are concatenated per input."),
    out: Path = typer.Option(Path("baseline.json"), "--out", "-o",
                             help="Where to write the baseline document; - for stdout."),
    model: Path | None = typer.Option(None, "--model", "-m", show_default=False,
                                      help="The .onnx model: checks the samples against its "
                                           "inputs and records its sha256 (recommended)."),
    max_features: int = typer.Option(64, "--max-features",
                                     help="Features monitored per input (the first N); bounds "
                                          "the metric series (8 per feature)."),
    tail: float = typer.Option(0.005, "--tail",
                               help="Expected range: the TAIL and 1-TAIL quantiles of the "
                                    "samples; values outside count as out of range."),
    feature_axis: int = typer.Option(-1, "--feature-axis",
                                     help="Axis holding the features of inputs of rank >= 2 "
                                          "(other axes but the batch are pooled)."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Per-feature count, mean, std and expected range of sample inputs: the drift baseline."""
    from mlship.model.baseline import (
        check_options,
        compute_baseline,
        model_inputs,
        read_samples,
        write_baseline,
    )

    if output.to_stdout(out):
        output.claim_stdout("--out", json_output)
    check_options(max_features, tail)  # before reading what may be large files
    metadata = model_info = None
    if model is not None:
        from mlship.model.inspect import inspect_model

        signature = inspect_model(model)
        metadata = model_inputs(signature)
        model_info = {"name": signature.name, "sha256": signature.sha256}
    samples = read_samples(inputs, metadata)
    document, warnings = compute_baseline(
        samples, metadata=metadata, model=model_info, sources=[str(path) for path in inputs],
        max_features=max_features, tail=tail, feature_axis=feature_axis)
    for warning in warnings:
        output.warn(warning)
    if output.to_stdout(out):
        import json
        import sys

        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        features = sum(len(entry["features"]) for entry in document["inputs"])
        output.info(f"printed the baseline: {len(document['inputs'])} input(s), {features} "
                    "feature(s)")
        return
    write_baseline(document, out)
    if json_output:
        output.emit_json("baseline", {"out": str(out),
                                      **{k: v for k, v in document.items() if k != "schema"}})
        return
    _print_table(document)
    features = sum(len(entry["features"]) for entry in document["inputs"])
    output.info(f"wrote {out}: {len(document['inputs'])} input(s), {features} feature(s)")


def _print_table(document: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="drift baseline", title_justify="left")
    for column in ("input", "feature", "count", "mean", "std", "low", "high"):
        table.add_column(column, justify="left" if column == "input" else "right")
    for entry in document["inputs"]:
        for feature in entry["features"]:
            table.add_row(escape(entry["name"]), str(feature["index"]), str(feature["count"]),
                          *(f"{feature[key]:.4g}" for key in ("mean", "std", "low", "high")))
    output.stdout_console().print(table)
