"""`mlship init --refresh`: the model facts mlship.yaml recorded, brought up to date with the
model file (mlship.render.refresh edits just those values), so "changed since init" is cleared
without `init --force` losing the user's edits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlship.cli import output
from mlship.errors import BadInputError, ConfigError


def refresh_config(config: Path, *, no_load: bool, json_output: bool) -> None:
    import yaml
    from mlship_runtime.settings import BY_NAME

    from mlship.config.load import load_config, validate_config
    from mlship.model.inspect import inspect_model
    from mlship.model.probe import ProfileRequest, probe_model
    from mlship.model.signatures import check_profile
    from mlship.render.refresh import refresh_text

    if output.to_stdout(config):
        raise BadInputError("--refresh edits an existing mlship.yaml: -c - names none")
    if not config.is_file():
        raise BadInputError(f"{config}: no such file: nothing to refresh",
                            hint="mlship init MODEL writes one")
    loaded = load_config(config)
    if loaded.model.kind != "image":
        raise BadInputError(
            f"{config}: model.source {loaded.model.source!r} is not a local file: its "
            "recorded facts describe a copy mlship cannot read here",
            hint="set model.sha256 and model.size_bytes to the stored object's (mlship model "
                 "push prints them)")
    path = Path(loaded.model.source)
    path = path if path.is_absolute() else config.parent / path
    if not path.is_file():
        raise ConfigError(f"{config}: model.source: {loaded.model.source!r} is invalid: no "
                          f"such file ({path})")
    signature = inspect_model(path, load=not no_load)
    facts: dict[str, Any] = {"sha256": signature.sha256, "size_bytes": signature.total_bytes}
    try:
        check_profile(loaded.model, signature, "model", str(config))
    except ConfigError as err:  # the user's shapes no longer fit: the model's own, if found
        probe = None if no_load else probe_model(
            path, ProfileRequest(), batch=BY_NAME["max_batch_size"].pod_default)
        if probe is None or probe.profile is None:
            output.warn(f"{err.message}; not refreshed: set model.profile.shapes by hand")
        else:
            facts["profile.shapes"] = {name: list(dims)
                                       for name, dims in probe.profile.shapes.items()}
    text = config.read_text(encoding="utf-8")
    result = refresh_text(text, config, facts)
    if result.changed:
        validate_config(yaml.safe_load(result.text), label=str(config), text=result.text)
        temporary = config.with_name(f".{config.name}.refresh")
        temporary.write_text(result.text, encoding="utf-8")
        temporary.replace(config)  # all of it or nothing, never a half-written file
    if json_output:
        output.emit_json("init", {"config": str(config), "model": str(path),
                                  "refreshed": result.changed})
        return
    if not result.changed:
        output.info(f"{config}: the recorded model facts match {path}; nothing to change")
        return
    output.info(f"refreshed {config} from {path}: " + "; ".join(
        f"model.{key} {_short(change['from'])} -> {_short(change['to'])}"
        for key, change in result.changed.items()))


def _short(value: Any) -> str:
    text = "unset" if value is None else str(value)
    return f"{text[:12]}..." if len(text) == 64 else text  # a sha256: its start says enough
