"""`mlship optimize MODEL`: quantized, float16 and graph-optimized variants, measured."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mlship.cli import output, profile_options
from mlship.config.quantities import human_bytes as _human
from mlship.errors import BadInputError

if TYPE_CHECKING:
    from rich.console import Console

    from mlship.model.optimize import Measurement, Report

DEFAULT_VARIANTS = "int8,uint8,fp16,optimized"


def optimize(
    model: Path = typer.Argument(..., help="Path of an .onnx model file.", show_default=False),
    out: Path = typer.Option(None, "--out", "-o", show_default=False,
                             help="Directory for the variants (default: the model's directory); "
                                  "files are named MODEL.VARIANT.onnx. - writes the one "
                                  "variant of --variants to stdout."),
    variants: str = typer.Option(DEFAULT_VARIANTS, "--variants",
                                 help="Comma-separated: int8, uint8 (dynamic quantization), "
                                      "int8-static (QDQ, calibrated on the inputs), fp16, "
                                      "optimized."),
    # 10 %: float16 and graph optimizations stay far below it (1e-3 and 1e-6 on the OCR models
    # of the tests), 8-bit weights usually a few percent, a broken conversion far above it.
    max_deviation: str = typer.Option("10%", "--max-deviation",
                                      help="Largest output deviation from the original a "
                                           "variant may have to be written: absolute (0.01) or "
                                           "relative to the output's largest magnitude (5%)."),
    force: bool = typer.Option(False, "--force", help="Write variants over the threshold too."),
    inputs_file: Path = typer.Option(None, "--input", "-i", show_default=False,
                                     help="Inputs to measure on: .json, .npy or .npz as "
                                          "`mlship predict` takes. Default: generated from the "
                                          "signature (seeded random floats)."),
    shape: list[str] = profile_options.SHAPE,
    batch: int = typer.Option(8, "--batch", min=1,
                              help="Rows of generated inputs (throughput and deviation; latency "
                                   "is measured on one row)."),
    runs: int = typer.Option(10, "--runs", min=1, help="Timed runs per model and batch size."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Quantize (int8/uint8), convert to float16 and graph-optimize MODEL; report size, latency,
    throughput and output deviation of each variant. Exit 2 when a variant over --max-deviation
    was not written, 3 when one could not be produced."""
    from mlship.model import optimize as opt
    from mlship.model.inspect import inspect_model
    from mlship.model.probe import ProfileRequest

    names = opt.parse_variants(variants)
    threshold = opt.Threshold.parse(max_deviation)
    request = ProfileRequest.from_options(shape, None)
    if output.to_stdout(out):
        output.claim_stdout("--out", json_output)
        if len(names) != 1:
            raise BadInputError(f"--out -: stdout takes one model, --variants names "
                                f"{len(names)} ({', '.join(names)})",
                                hint="pass one variant, e.g. --variants fp16, or a directory")
    inspect_model(model)  # a broken file fails here with one clear line and exit 2
    inputs, source = opt.model_inputs(model, inputs_file, request, batch)
    output.info(f"measuring on inputs {source}")
    if output.to_stdout(out):
        _variant_to_stdout(model, names, inputs, threshold, force, runs, source)
        return
    with _Progress() as progress:
        report = opt.optimize(model, out if out is not None else model.parent, names, inputs,
                              threshold=threshold, force=force, runs=runs,
                              source=str(inputs_file or ""), progress=progress,
                              ticks=progress.tick,
                              skip_inapplicable=variants == DEFAULT_VARIANTS)
    if json_output:
        opt.raise_for_refused(report)
        output.emit_json("optimize", _payload(report, source))
        return
    _print_table(report)
    opt.raise_for_refused(report)


class _Progress(output.LiveDisplay):
    """Each phase as a line on stderr; during the timing rounds, the longest phase, a live
    status line on a terminal, else a line at each quarter of the rounds."""

    def __init__(self) -> None:
        console = output.stderr_console()
        self.status = console.status("measuring") if output.color_enabled() else None
        super().__init__(console, self.status)
        self.phase = ""

    def __call__(self, message: str) -> None:
        from rich.markup import escape

        self.phase = message
        if self.status is not None:
            self.status.update(escape(message))
        output.info(message)

    def tick(self, done: int, total: int) -> None:
        from rich.markup import escape

        text = f"{self.phase}: {done}/{total} done"
        if self.status is not None:
            self.status.update(escape(text))
        elif done < total and done * 4 // total > (done - 1) * 4 // total:
            output.info(text)


def _variant_to_stdout(model: Path, names: list[str], inputs: Any, threshold: Any, force: bool,
                       runs: int, source: str) -> None:
    """Measure the one variant in a scratch folder, its table on stderr, its bytes on stdout
    (only when written: a refused or failed variant exits as without ``-o -``)."""
    import tempfile

    from mlship.model import optimize as opt

    with tempfile.TemporaryDirectory(prefix="mlship-optimize-") as scratch:
        with _Progress() as progress:
            report = opt.optimize(model, Path(scratch), names, inputs, threshold=threshold,
                                  force=force, runs=runs, source=source, progress=progress,
                                  ticks=progress.tick)
        _print_table(report, console=output.stderr_console(), say_written=False)
        opt.raise_for_refused(report)
        (variant,) = report.variants
        output.write_binary(Path(str(variant.path)).read_bytes(), "--out", "an ONNX model")


def _payload(report: Report, source: str) -> dict[str, object]:
    return {
        "model": {key: getattr(report.original, key) for key in (
            "path", "size_bytes", "latency_ms", "throughput_rows_s")},
        "inputs": {"source": source, "shapes": report.inputs},
        "batch_rows": report.batch_rows,
        "runs": report.runs,
        "threads": report.threads,
        "max_deviation": {"value": report.threshold.value,
                          "relative": report.threshold.relative,
                          "absolute": report.threshold.absolute},
        "variants": [variant.to_dict() for variant in report.variants],
    }


def _print_table(report: Report, console: Console | None = None,
                 say_written: bool = True) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    base = report.original
    table = Table(title=f"{escape(Path(str(base.path)).name)}: {report.batch_rows} row(s) per "
                        f"batch, median of {report.runs} runs, {report.threads} thread(s); "
                        f"ratios against the original", title_justify="left", box=box.SIMPLE)
    for column in ("variant", "size", "smaller", "latency", "speed-up", "rows/s", "max |Δ|",
                   "rel. Δ", "mean |Δ|", "argmax", "status"):
        table.add_column(column, justify="left" if column in ("variant", "status") else "right")
    table.add_row("original", _human(base.size_bytes), "1.00x", f"{base.latency_ms:.3g} ms",
                  "1.00x", f"{base.throughput_rows_s:.4g}", "", "", "", "", "")
    for variant in report.variants:
        table.add_row(*_row(variant))
    console = console or output.stdout_console()
    if not console.is_terminal:
        console.width = max(console.width, 120)  # a file or pipe gets whole rows, not folds
    console.print(table)
    for variant in report.variants:
        if variant.status == "written" and say_written:
            output.info(f"wrote {escape(str(variant.path))}")
        elif variant.status == "failed":
            output.warn(f"{variant.name}: {escape(str(variant.reason))}")
        elif variant.status == "skipped":
            output.info(f"{variant.name}: skipped, it does not apply to this model: "
                        f"{escape(str(variant.reason))}")


def _row(variant: Measurement) -> list[str]:
    status = {"written": "written", "refused": "[red]refused[/red]",
              "failed": "[red]failed[/red]", "skipped": "[dim]skipped[/dim]"}[variant.status]
    if variant.status in ("failed", "skipped"):
        return [variant.name, "", "", "", "", "", "", "", "", "", status]
    agreement = "" if variant.argmax_agreement is None else f"{variant.argmax_agreement:.1%}"
    return [variant.name, _human(variant.size_bytes), f"{variant.size_ratio:.2f}x",
            f"{variant.latency_ms:.3g} ms", f"{variant.speedup:.2f}x",
            f"{variant.throughput_rows_s:.4g}", f"{variant.max_abs_deviation:.3g}",
            "-" if variant.max_rel_deviation == float("inf") else
            f"{variant.max_rel_deviation:.2%}", f"{variant.mean_abs_deviation:.2g}", agreement,
            status]
