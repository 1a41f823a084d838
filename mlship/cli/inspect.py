"""`mlship inspect MODEL`: show what a model expects and returns, and what it needs to run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mlship.cli import output
from mlship.config.quantities import human_bytes as _human

if TYPE_CHECKING:
    from mlship.model.inspect import ModelSignature


def inspect(
    model: Path = typer.Argument(..., help="Path of an .onnx model file.", show_default=False),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Read an ONNX model: inputs/outputs, dtypes, dynamic dims, opsets, size, sha256, memory."""
    from mlship.model.inspect import inspect_model

    signature = inspect_model(model)
    if json_output:
        output.emit_json("inspect", signature.to_dict())
        return
    _print_table(signature)


def _print_table(signature: ModelSignature) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = output.stdout_console()
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    producer = f"{signature.producer_name} {signature.producer_version}".strip() or "unknown"
    opsets = ", ".join(f"{domain} {version}"
                       for domain, version in sorted(signature.opsets.items()))
    rows = [
        ("model", signature.path),
        ("size", _human(signature.size_bytes)),
        ("sha256", signature.sha256),
        ("producer", producer),
        ("IR version", str(signature.ir_version)),
        ("opsets", opsets),
        ("dynamic batch", "yes" if signature.dynamic_batch else "no"),
        ("weights", _human(signature.weights_bytes)),
        ("memory estimate",
         f"{_human(signature.memory_estimate_bytes)} to load and run (peak activations "
         f"{_human(signature.peak_activation_bytes)} at batch 1)"),
    ]
    for key, value in rows:
        summary.add_row(key, escape(value))
    console.print(summary)

    table = Table(title="signature", title_justify="left", show_lines=False)
    for column in ("", "name", "type", "shape"):
        table.add_column(column)
    for role, specs in (("input", signature.inputs), ("output", signature.outputs)):
        for spec in specs:
            kind = spec.type
            if kind.kind == "tensor":
                shape = "?" if kind.shape is None else "[" + ", ".join(map(str, kind.shape)) + "]"
                table.add_row(role, escape(spec.name), kind.dtype or "?", escape(shape))
            else:
                table.add_row(role, escape(spec.name), escape(str(kind)), "")
    console.print(table)

    if signature.metadata:
        meta = Table(title="metadata", title_justify="left")
        meta.add_column("key")
        meta.add_column("value", overflow="fold")
        for key, value in sorted(signature.metadata.items()):
            meta.add_row(escape(key), escape(value))
        console.print(meta)
    if signature.external_data:
        ext = Table(title="external data", title_justify="left")
        for column in ("file", "size", "sha256"):
            ext.add_column(column)
        for item in signature.external_data:
            ext.add_row(escape(item.path), _human(item.size_bytes), item.sha256)
        console.print(ext)
    for warning in signature.warnings:
        output.warn(warning)

