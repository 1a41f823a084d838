"""`mlship init`, `mlship render` and `mlship schema`: from a model to files you can review."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from mlship.cli import output
from mlship.errors import BadInputError

if TYPE_CHECKING:
    from mlship.render.bundle import Bundle, Target

_CONFIG_HELP = "Path of mlship.yaml."


def init(
    model: Path | None = typer.Argument(None, help="The .onnx model to prefill from.",
                                        show_default=False),
    config: Path = typer.Option(Path("mlship.yaml"), "--config", "-c",
                                help="Path of the mlship.yaml to write; - for stdout."),
    name: str | None = typer.Option(None, "--name", help="App name (default: from the model)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Write a commented mlship.yaml prefilled from the model's inspection."""
    from mlship.model.inspect import inspect_model
    from mlship.render.init import init_text

    if output.to_stdout(config):
        output.claim_stdout("--config", json_output)
        signature = inspect_model(model) if model is not None else None
        # Paths in the text are relative to where the file would be: the working directory.
        sys.stdout.write(init_text(Path("mlship.yaml"), model, signature, name=name))
        return
    if config.exists() and not force:
        raise BadInputError(f"{config}: already exists; not overwritten",
                            hint="pass --force to replace it")
    signature = inspect_model(model) if model is not None else None
    text = init_text(config, model, signature, name=name)
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text, encoding="utf-8")
    if json_output:
        output.emit_json("init", {"config": str(config), "model": str(model) if model else None})
        return
    output.info(f"wrote {config}")


def render(
    config: Path = typer.Option(Path("mlship.yaml"), "--config", "-c", help=_CONFIG_HELP),
    out: Path = typer.Option(Path("mlship-out"), "--out", "-o", help="Output directory; - "
                             "prints the Kubernetes manifests as one YAML stream instead."),
    target: str = typer.Option("kubernetes", "--target", help="kubernetes or kserve."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Render the Dockerfile, .dockerignore and Kubernetes manifests from mlship.yaml."""
    from mlship.config.load import load_config
    from mlship.model.signatures import model_signatures
    from mlship.render.bundle import render as render_bundle
    from mlship.render.bundle import write_bundle

    if target not in ("kubernetes", "kserve"):
        raise BadInputError(f"--target: {target!r} is invalid: must be kubernetes or kserve")
    if output.to_stdout(out):
        output.claim_stdout("--out", json_output)
    loaded = load_config(config)
    signature, extras = model_signatures(loaded, config, warn=output.warn)
    bundle = render_bundle(loaded, signature, target=cast("Target", target), extras=extras)
    if output.to_stdout(out):
        _manifests_to_stdout(bundle)
        return
    written = write_bundle(bundle, out)
    if json_output:
        output.emit_json("render", {"out": str(out), **bundle.summary()})
        return
    output.info(f"rendered {len(written)} files into {out}/ (target {target})")


def _manifests_to_stdout(bundle: Bundle) -> None:
    """The objects in apply order, as `kubectl apply -f -` (and `deploy --dry-run client`)
    takes them; the Dockerfile and the other files need a folder."""
    import yaml

    from mlship.cluster.apply import plan

    objects = plan(bundle)
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    sys.stdout.flush()
    others = sorted(path for path in bundle.files if not path.startswith("k8s/"))
    output.info(f"printed {len(objects)} Kubernetes objects; not written: {', '.join(others)} "
                "(give --out DIR for them)")


def schema(
    command: list[str] | None = typer.Argument(
        None, show_default=False, help="A command (e.g. `build`, `rollout canary`) or `error`: "
                                       "print the JSON Schema of its --json output instead."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Print the JSON Schema of mlship.yaml, or of a command's --json output."""
    import json

    from mlship.cli.contract import load_schema
    from mlship.config.load import json_schema

    name = "-".join(command) if command else "mlship.yaml"
    document = load_schema(name) if command else json_schema()
    if json_output:
        output.emit_json("schema", {"name": name, "json_schema": document})
        return
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=not command) + "\n")
