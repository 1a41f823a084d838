"""`mlship inspect MODEL`: show what a model expects and returns, and what it needs to run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mlship.cli import output, profile_options
from mlship.config.quantities import human_bytes as _human

if TYPE_CHECKING:
    from mlship.model.facts import ModelSignature
    from mlship.model.probe import Probe

SERVER_OVERHEAD_MIB = 24  # mlship.model.probe.SERVER_OVERHEAD_BYTES, kept light for --help


METADATA_SHOWN = 160  # characters of a metadata value in the table; --json has all of it


def inspect(
    model: Path = typer.Argument(..., help="Path of an .onnx model file.", show_default=False),
    shape: list[str] = profile_options.SHAPE,
    sample: Path | None = profile_options.SAMPLE,
    batch: int = typer.Option(1, "--batch", min=1, help="Rows per request the memory is "
                              "measured at (the runtime merges up to max_batch_size)."),
    no_load: bool = profile_options.NO_LOAD,
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Read an ONNX model: inputs/outputs, dtypes, dynamic dims, opsets, size, sha256, memory.

    Unless --no-load, the model is also loaded and run once as the server runs it, at the
    input profile requests will have, and its memory measured.

    Examples:

        mlship inspect model.onnx

        mlship inspect detector.onnx --shape images=1x3x640x640 --batch 8 --json
    """
    from mlship.model.inspect import inspect_model
    from mlship.model.probe import ProfileRequest, probe_model

    request = ProfileRequest.from_options(shape, sample)
    signature = inspect_model(model, load=not no_load, shapes=request.shapes)
    request.check(signature)
    probe = None if no_load else probe_model(model, request, batch=batch)
    if json_output:
        document = signature.to_dict()
        document["profile"] = probe.profile.to_dict() if probe and probe.profile else None
        document["memory"] = _memory(signature, probe)
        if probe is not None:
            document["memory_estimate_bytes"] = probe.memory_estimate_bytes
        output.emit_json("inspect", document)
        return
    _print_table(signature, probe)


def _memory(signature: ModelSignature, probe: Probe | None) -> dict[str, object]:
    if probe is None:
        return {"estimate_bytes": signature.memory_estimate_bytes, "measured": False,
                "batch": 1, "how": "from shapes: runtime baseline + 2 x weights + 2 x peak "
                                   "activations at the profile"}
    how = (f"measured: peak RSS of the runtime's code running the model at batch "
           f"{probe.batch}, plus {SERVER_OVERHEAD_MIB} MiB for the HTTP server")
    return {"estimate_bytes": probe.memory_estimate_bytes, "measured": True,
            "batch": probe.batch, "how": how}


def _print_table(signature: ModelSignature, probe: Probe | None) -> None:
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
        ("memory estimate", _memory_line(signature, probe)),
    ]
    if probe is not None:
        rows.insert(-1, ("input profile", _profile_line(probe)))
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

    _print_metadata(signature)
    for warning in signature.warnings:
        output.warn(warning)


def _print_metadata(signature: ModelSignature) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = output.stdout_console()
    if signature.metadata:
        meta = Table(title="metadata", title_justify="left")
        meta.add_column("key")
        meta.add_column("value", overflow="fold")
        for key, value in sorted(signature.metadata.items()):
            shown = value if len(value) <= METADATA_SHOWN else \
                f"{value[:METADATA_SHOWN]}...\n({len(value):,} characters; --json has all)"
            meta.add_row(escape(key), escape(shown))
        console.print(meta)
    if signature.external_data:
        ext = Table(title="external data", title_justify="left")
        for column in ("file", "size", "sha256"):
            ext.add_column(column)
        for item in signature.external_data:
            ext.add_row(escape(item.path), _human(item.size_bytes), item.sha256)
        console.print(ext)



def _memory_line(signature: ModelSignature, probe: Probe | None) -> str:
    if probe is None:
        return (f"{_human(signature.memory_estimate_bytes)} to load and run, from shapes (peak "
                f"activations {_human(signature.peak_activation_bytes)} at the first profile "
                "guess; run without --no-load to measure)")
    return (f"{_human(probe.memory_estimate_bytes)} to load and run at batch {probe.batch} "
            f"(measured: {_human(probe.peak_rss_bytes)} peak RSS running the model, plus "
            f"{SERVER_OVERHEAD_MIB} MiB for the HTTP server)")


def _profile_line(probe: Probe) -> str:
    if probe.profile is None:
        return (f"none: the model ran at none of {len(probe.tried)} derived profiles (last "
                f"error: {probe.error}); pass --shape NAME=DIMS")
    return f"{probe.profile.shapes_text()} ({probe.profile.source})"
