"""Where mlship writes: stdout carries data, stderr carries people-facing text.

``--json`` switches a command to print exactly one JSON document on stdout; logs, progress and
errors stay on stderr. Colours and live displays are off when stderr is not a terminal, when
``NO_COLOR`` is set, or with ``--no-color``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from mlship.errors import MlshipError

SCHEMA_PREFIX = "mlship."


@dataclass
class _State:
    json_mode: bool = False
    no_color: bool = False
    debug: bool = False
    command: str = "mlship"


state = _State()


def reset(command: str) -> None:
    """Forget the options of a previous invocation (tests run many in one process)."""
    global state  # noqa: PLW0603
    state = _State(command=command)


def set_json_mode(value: bool) -> bool:
    """Typer callback for every command's ``--json`` option."""
    state.json_mode = state.json_mode or value
    return value


def color_enabled() -> bool:
    return not (state.no_color or "NO_COLOR" in os.environ) and sys.stderr.isatty()


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, no_color=not color_enabled(), highlight=False,
                   force_terminal=None if color_enabled() else False)


def stdout_console() -> Console:
    from rich.console import Console

    enabled = not (state.no_color or "NO_COLOR" in os.environ) and sys.stdout.isatty()
    return Console(no_color=not enabled, highlight=False,
                   force_terminal=None if enabled else False)


def emit_json(kind: str, payload: dict[str, Any], *, version: int = 1) -> None:
    """Print the one JSON document of a command on stdout."""
    document = {"schema": f"{SCHEMA_PREFIX}{kind}/v{version}", "ok": True, **payload}
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    """A progress or status line for people, on stderr."""
    stderr_console().print(message)


def warn(message: str) -> None:
    stderr_console().print(f"[yellow]warning:[/yellow] {message}")


def report_error(err: MlshipError) -> None:
    """Print an error once: one stderr line (plus hint), and the JSON error under --json."""
    from rich.markup import escape

    console = stderr_console()
    console.print(f"[bold red]error:[/bold red] {escape(err.message)}", soft_wrap=True)
    if err.hint:
        console.print(f"  [dim]hint:[/dim] {escape(err.hint)}", soft_wrap=True)
    if state.json_mode:
        document = {
            "schema": f"{SCHEMA_PREFIX}error/v1",
            "ok": False,
            "command": state.command,
            "error": {
                "type": type(err).__name__,
                "exit_code": int(err.exit_code),
                "message": err.message,
                "hint": err.hint,
            },
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        sys.stdout.flush()


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
