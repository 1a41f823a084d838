"""`mlship init`, `mlship render` and `mlship schema`: from a model to files you can review."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from mlship.cli import output
from mlship.errors import BadInputError, ConfigError

if TYPE_CHECKING:
    from mlship.config import MlshipConfig
    from mlship.inspect import ModelSignature
    from mlship.render import Target

_CONFIG_HELP = "Path of mlship.yaml."


def init(
    model: Path | None = typer.Argument(None, help="The .onnx model to prefill from.",
                                        show_default=False),
    config: Path = typer.Option(Path("mlship.yaml"), "--config", "-c", help=_CONFIG_HELP),
    name: str | None = typer.Option(None, "--name", help="App name (default: from the model)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Write a commented mlship.yaml prefilled from the model's inspection."""
    from mlship.init_config import init_text
    from mlship.inspect import inspect_model

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
    out: Path = typer.Option(Path("mlship-out"), "--out", "-o", help="Output directory."),
    target: str = typer.Option("kubernetes", "--target", help="kubernetes or kserve."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Render the Dockerfile, .dockerignore and Kubernetes manifests from mlship.yaml."""
    from mlship.config import load_config
    from mlship.render import render as render_bundle
    from mlship.render import write_bundle

    if target not in ("kubernetes", "kserve"):
        raise BadInputError(f"--target: {target!r} is invalid: must be kubernetes or kserve")
    loaded = load_config(config)
    signature, extras = model_signatures(loaded, config)
    bundle = render_bundle(loaded, signature, target=cast("Target", target), extras=extras)
    written = write_bundle(bundle, out)
    if json_output:
        output.emit_json("render", {"out": str(out), **bundle.summary()})
        return
    output.info(f"rendered {len(written)} files into {out}/ (target {target})")


def schema(
    command: list[str] | None = typer.Argument(
        None, show_default=False, help="A command (e.g. `build`, `rollout canary`) or `error`: "
                                       "print the JSON Schema of its --json output instead."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Print the JSON Schema of mlship.yaml, or of a command's --json output."""
    import json
    import sys

    from mlship.cli.contract import load_schema
    from mlship.config import json_schema

    name = "-".join(command) if command else "mlship.yaml"
    document = load_schema(name) if command else json_schema()
    if json_output:
        output.emit_json("schema", {"name": name, "json_schema": document})
        return
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=not command) + "\n")


def model_signatures(config: MlshipConfig, config_path: Path
                     ) -> tuple[ModelSignature | None, dict[str, ModelSignature]]:
    """Inspect the local model files (relative to the config file): the main model's signature
    (None when remote: init's record stands in) and those of ``models`` by name. Pipelines are
    checked against them here, once, before anything is rendered or built."""
    main = None
    if config.model.kind == "image":
        main = _inspect_local(config.model.source, config.model.sha256, "model.source",
                              config_path)
    extras = {model.name: _inspect_local(model.source, model.sha256, f"models[{index}].source",
                                         config_path)
              for index, model in enumerate(config.models) if model.kind == "image"}
    if config.pipelines and main is not None:
        from mlship.config_repository import check_pipelines

        check_pipelines(config, {config.name: main, **extras}, label=str(config_path))
    return main, extras


def _inspect_local(source: str, recorded: str | None, key: str,
                   config_path: Path) -> ModelSignature:
    from mlship.inspect import inspect_model

    path = Path(source)
    if not path.is_absolute():
        path = config_path.parent / path
    if not path.exists():
        raise ConfigError(f"{config_path}: {key}: {source!r} is invalid: no such file ({path})")
    signature = inspect_model(path)
    if recorded and recorded != signature.sha256:
        output.warn(f"{path} changed since init (sha256 {signature.sha256[:12]}, recorded "
                    f"{recorded[:12]}); rendering the file as it is now")
    return signature
