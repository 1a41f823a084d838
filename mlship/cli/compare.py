"""`mlship compare OLD NEW`: both models on the same requests, answers compared output by
output with rollout.shadow's tolerances (the comparison the shadow mirroring makes)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mlship.cli import output, profile_options
from mlship.errors import ExitCode

if TYPE_CHECKING:
    from mlship_runtime.compare import Tolerances

    from mlship.model.compare import Comparison


def compare(
    old: Path = typer.Argument(..., help="The reference model (.onnx): what serves today.",
                               show_default=False),
    new: Path = typer.Argument(..., help="The candidate model (.onnx).", show_default=False),
    inputs: Path = typer.Option(None, "--input", "-i", show_default=False,
                                help="Requests: a .json, .npy or .npz file as `mlship predict` "
                                     "takes, or a folder of them (one request per file). "
                                     "Default: --samples generated requests."),
    samples: int = typer.Option(32, "--samples", min=1, max=100_000,
                                help="Generated requests (one row each) at the input profile, "
                                     "when --input is not given."),
    shape: list[str] = profile_options.SHAPE,
    config: Path = typer.Option(Path("mlship.yaml"), "--config", "-c",
                                help="mlship.yaml whose rollout.shadow gives the tolerances; "
                                     "when the file does not exist, the defaults apply."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Run OLD and NEW on the same requests and compare their answers output by output:
    numeric outputs by largest absolute/relative deviation, labels and strings by agreement,
    class probabilities by top-1 agreement. Exit 0 when every output is within its tolerance,
    12 when one is not."""
    from mlship.model import compare as cmp
    from mlship.model.inspect import inspect_model
    from mlship.model.probe import ProfileRequest

    request = ProfileRequest.from_options(shape, None)
    tolerances = _tolerances(config)
    inspect_model(old)  # a broken file fails here with one clear line and exit 2
    inspect_model(new)
    requests, source = cmp.requests_for(old, inputs, request, samples)
    output.info(f"comparing on {source}")
    result = cmp.compare_models(old, new, requests, source, tolerances)
    if json_output:
        output.emit_json("compare", result.to_dict())
    else:
        _print_table(result)
    if not result.passed:
        if not json_output:
            output.warn(f"{', '.join(result.failing())}: beyond tolerance")
        raise typer.Exit(int(ExitCode.DIFFERENCES))


def _tolerances(config: Path) -> Tolerances:
    from mlship_runtime.compare import Tolerances

    if not config.is_file():
        return Tolerances()
    from mlship.config.load import load_config

    return load_config(config).rollout.shadow.tolerances()


def _print_table(result: Comparison) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{escape(result.new.name)} against {escape(result.old.name)}: "
                        f"{result.requests} request(s)", title_justify="left", box=box.SIMPLE)
    for column in ("output", "compared as", "agreement", "max deviation", "max |Δ|", "top-1",
                   "tolerance", "verdict"):
        table.add_column(column, justify="left" if column in ("output", "compared as",
                                                              "tolerance", "verdict")
                         else "right")
    for name, tally in result.tallies.items():
        tolerance = result.tolerances.of(name)
        doc = tally.to_dict(tolerance)
        numeric = f"{tolerance.absolute:g} + {tolerance.relative:g}*scale; " \
            if tally.kind == "numeric" else ""
        table.add_row(
            escape(name), tally.kind, f"{doc['agreement']:.1%}",
            "-" if doc["max_deviation"] is None else f"{doc['max_deviation']:.3g}",
            "" if doc["max_abs_deviation"] is None else f"{doc['max_abs_deviation']:.3g}",
            "" if doc["top1_agreement"] is None else f"{doc['top1_agreement']:.1%}",
            f"{numeric}≤ {tolerance.max_disagreement:.1%} disagreeing",
            "pass" if doc["passed"] else "[red]fail[/red]")
    console = output.stdout_console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(table)
    for name, tally in result.tallies.items():
        for reason in tally.reasons:
            output.warn(f"{escape(name)}: {escape(reason)}")
