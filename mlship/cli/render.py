"""`mlship init`, `mlship render` and `mlship schema`: from a model to files you can review."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from mlship.cli import output, profile_options
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
    shape: list[str] = profile_options.SHAPE,
    sample: Path | None = profile_options.SAMPLE,
    no_load: bool = profile_options.NO_LOAD,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    refresh: bool = typer.Option(False, "--refresh", help="Update the model facts an "
                                 "existing mlship.yaml recorded (model.sha256, size_bytes, "
                                 "profile.shapes that no longer fit) from the model file as it "
                                 "is now; every other line stays as written."),
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help="Print one JSON object on stdout."),
) -> None:
    """Write a commented mlship.yaml prefilled from the model's inspection."""
    from mlship_runtime.settings import BY_NAME

    from mlship.model.inspect import inspect_model
    from mlship.model.probe import ProfileRequest, probe_model
    from mlship.render.init import init_text

    if refresh:
        from mlship.cli.init_refresh import refresh_config

        if model is not None or force or shape or sample is not None or name is not None:
            raise BadInputError("--refresh takes the model from mlship.yaml's model.source "
                                "and keeps everything else: no MODEL, --name, --shape, "
                                "--sample or --force with it")
        refresh_config(config, no_load=no_load, json_output=json_output)
        return
    if output.to_stdout(config):
        output.claim_stdout("--config", json_output)
        signature = inspect_model(model) if model is not None else None
        # Paths in the text are relative to where the file would be: the working directory.
        sys.stdout.write(init_text(Path("mlship.yaml"), model, signature, name=name))
        return
    if config.exists() and not force:
        raise BadInputError(f"{config}: already exists; not overwritten",
                            hint="pass --force to replace it")
    if model is None:
        model = _only_model(config.parent)
        output.info(f"using {model}, the only model in {config.parent.resolve()}")
    request = ProfileRequest.from_options(shape, sample)
    signature = inspect_model(model, load=not no_load, shapes=request.shapes) \
        if model is not None else None
    if signature is not None:
        request.check(signature)
    probe = probe_model(model, request, batch=BY_NAME["max_batch_size"].pod_default) \
        if model is not None and not no_load else None
    if probe is not None and probe.profile is None:
        output.warn(f"{model}: the model ran at none of {len(probe.tried)} derived input "
                    "profiles; set model.profile.shapes to what requests carry")
    text = init_text(config, model, signature, name=name, probe=probe, sample=sample)
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text, encoding="utf-8")
    if json_output:
        output.emit_json("init", {"config": str(config), "model": str(model) if model else None})
        return
    output.info(f"wrote {config}")


def _only_model(folder: Path) -> Path:
    """The one .onnx file in ``folder``; refused with what is there otherwise."""
    found = sorted(folder.glob("*.onnx"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise BadInputError(f"mlship init: no MODEL given, and no .onnx file in "
                            f"{folder.resolve()}", hint="mlship init path/to/model.onnx")
    raise BadInputError(f"mlship init: no MODEL given, and {len(found)} .onnx files in "
                        f"{folder.resolve()} ({', '.join(p.name for p in found)})",
                        hint="name the one to serve: mlship init MODEL")


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
    for warning in bundle.warnings:
        output.warn(warning)
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
