"""The contract every ``mlship`` command keeps, in one place: env var names and output schemas.

- **Environment variables.** Every option ``--some-option`` of ``mlship CMD [SUB]`` can also be
  set as ``MLSHIP_CMD_[SUB_]SOME_OPTION`` (dashes become underscores). The root group assigns
  these names to every command at construction (``assign_envvars``), so a command added later
  gets them without doing anything; an option's own ``envvar`` (``MLSHIP_URL``) keeps working
  after the derived name. Click's ``auto_envvar_prefix`` is not used: it names variables after
  the Python parameter (``json_output``), not the flag the user reads in ``--help``.
- **Output schemas.** ``mlship CMD [SUB] --json`` prints one document described by the JSON
  Schema ``mlship/schemas/CMD[-SUB].json``; failures print ``mlship/schemas/error.json``.
  Shared definitions live in ``mlship/schemas/defs.json`` and are bundled into each schema
  by ``load_schema``, so ``mlship schema CMD`` prints a self-contained document.

tests/cli/test_contract.py walks the Typer app and fails for any command without a ``--json``
option or a schema, or whose env var names could be read as ``mlship.yaml`` overrides.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

ENV_PREFIX = "MLSHIP"
# Options that act on the CLI itself, not on a command: no derived variable.
NO_ENVVAR = frozenset({"help", "version", "install_completion", "show_completion"})
# Commands exempt from --json, and why (docs/cli.md repeats this).
NO_JSON: dict[tuple[str, ...], str] = {
    ("serve",): "runs a server in the foreground; its output is the runtime's log",
}
# Prefixes already owned by other variables (runtime settings, registry and Prometheus
# credentials, tests).
RESERVED_PREFIXES = ("MLSHIP_RUNTIME_", "MLSHIP_REGISTRY_", "MLSHIP_PROMETHEUS_", "MLSHIP_TEST_",
                     "MLSHIP_K8S_")


def envvar_name(path: tuple[str, ...], flag: str) -> str:
    """``(("build",), "--no-cache")`` -> ``MLSHIP_BUILD_NO_CACHE``."""
    parts = [ENV_PREFIX, *path, flag.lstrip("-")]
    return "_".join(part.upper().replace("-", "_") for part in parts)


def _long_flag(option: Any) -> str:
    for flag in option.opts:
        if flag.startswith("--"):
            return str(flag)
    return str(option.name)


def assign_envvars(group: Any, path: tuple[str, ...] = ()) -> None:
    """Give every option below ``group`` its ``MLSHIP_<CMD>_<OPTION>`` variable."""
    for name, command in group.commands.items():
        sub = (*path, name)
        for param in command.params:
            if getattr(param, "param_type_name", "") != "option" or param.name in NO_ENVVAR:
                continue
            derived = envvar_name(sub, _long_flag(param))
            existing = [] if param.envvar is None else (
                [param.envvar] if isinstance(param.envvar, str) else list(param.envvar))
            param.envvar = [derived, *(var for var in existing if var != derived)]
            param.show_envvar = True
        if hasattr(command, "commands"):
            assign_envvars(command, sub)


CommandPath = tuple[str, ...]


def iter_commands(group: Any, path: CommandPath = ()) -> Iterator[tuple[CommandPath, Any]]:
    """Every runnable (leaf) command below ``group`` with its path, e.g. ("rollout", "abort")."""
    for name, command in sorted(group.commands.items()):
        sub = (*path, name)
        if hasattr(command, "commands"):
            yield from iter_commands(command, sub)
        else:
            yield sub, command


def schema_file(path: tuple[str, ...]) -> str:
    """``("rollout", "canary")`` -> ``rollout-canary.json``."""
    return "-".join(path) + ".json"


def _schemas_dir() -> Any:
    return resources.files("mlship") / "schemas"


def available_schemas() -> list[str]:
    """Names accepted by ``load_schema``: command paths joined by '-', plus ``error``."""
    return sorted(entry.name.removesuffix(".json") for entry in _schemas_dir().iterdir()
                  if entry.name.endswith(".json") and entry.name != "defs.json")


@cache
def _shared_defs() -> dict[str, Any]:
    return dict(json.loads((_schemas_dir() / "defs.json").read_text(encoding="utf-8"))["$defs"])


def load_schema(name: str) -> dict[str, Any]:
    """The self-contained JSON Schema ``name`` (``build``, ``rollout-canary``, ``error``)."""
    resource = _schemas_dir() / f"{name}.json"
    if not resource.is_file():
        from mlship.errors import BadInputError

        raise BadInputError(f"no output schema named {name!r}",
                            hint=f"one of: {', '.join(available_schemas())}")
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    used = _referenced(schema, _shared_defs())
    if used:
        schema["$defs"] = {**{key: _shared_defs()[key] for key in sorted(used)},
                           **schema.get("$defs", {})}
    return schema


def _referenced(schema: Any, defs: dict[str, Any]) -> set[str]:
    """Names of shared definitions ``schema`` needs, following refs between them."""
    found: set[str] = set()
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            name = ref.removeprefix("#/$defs/").split("/")[0]
            if ref.startswith("#/$defs/") and name in defs and name not in found:
                found.add(name)
                pending.append(defs[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


def document_id(name: str) -> str:
    """The ``schema`` value documents of ``name`` carry, e.g. ``mlship.build/v1``."""
    return str(load_schema(name)["properties"]["schema"]["const"])
