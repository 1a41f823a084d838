"""The input-profile options every command that runs a model shares (inspect, init, serve,
optimize, predict), defined once so names and help are identical."""

from __future__ import annotations

import typer

SHAPE = typer.Option([], "--shape", show_default=False, help=(
    "The shape requests have, NAME=DIMS (e.g. images=1x3x640x640), batch dimension included; "
    "repeatable. Default: derived from the model, then common sizes."))
SAMPLE = typer.Option(None, "--sample", show_default=False, help=(
    "A sample request: .npz (arrays by input name), .npy (the only input) or .json "
    "({name: values} or a V2 request)."))
NO_LOAD = typer.Option(False, "--no-load", help=(
    "Only read the file: do not load it in onnxruntime or run it (no profile; memory "
    "estimated from shapes)."))
