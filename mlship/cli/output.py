"""Where mlship writes: stdout carries data, stderr carries people-facing text.

``--json`` switches a command to print exactly one JSON document on stdout; logs, progress and
errors stay on stderr. Colours and live displays are off when stderr is not a terminal, when
``NO_COLOR`` is set, or with ``--no-color``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from mlship.errors import MlshipError

SCHEMA_PREFIX = "mlship."
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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


def set_json_mode(ctx: typer.Context, value: bool) -> bool:
    """Typer callback for every command's ``--json`` option; names the command for errors."""
    state.json_mode = state.json_mode or value
    state.command = command_name(ctx.command_path)
    return value


def command_name(command_path: str) -> str:
    """``mlship rollout canary`` -> ``rollout canary`` (the ``command`` of error documents)."""
    return command_path.partition(" ")[2] or command_path


def color_enabled() -> bool:
    return not (state.no_color or "NO_COLOR" in os.environ) and sys.stderr.isatty()


# Piped or logged output has no terminal to fit: Rich's 80 columns would fold a sha256 or an
# image reference over two lines, which nobody can copy or grep. COLUMNS still decides.
PIPE_WIDTH = 200


def _width(stream: Any) -> int | None:
    return None if stream.isatty() or "COLUMNS" in os.environ else PIPE_WIDTH


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, no_color=not color_enabled(), highlight=False,
                   force_terminal=None if color_enabled() else False, width=_width(sys.stderr))


def stdout_console() -> Console:
    from rich.console import Console

    enabled = not (state.no_color or "NO_COLOR" in os.environ) and sys.stdout.isatty()
    return Console(no_color=not enabled, highlight=False,
                   force_terminal=None if enabled else False, width=_width(sys.stdout))


def emit_json(kind: str, payload: dict[str, Any], *, version: int = 1) -> None:
    """Print the one JSON document of a command on stdout."""
    document = {"schema": f"{SCHEMA_PREFIX}{kind}/v{version}", "ok": True, **payload}
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


STDOUT = "-"  # `-o -` / `--out -`: write to stdout, on every command that writes files


def to_stdout(path: object) -> bool:
    """Whether an output option names stdout (``-``) rather than a file or folder."""
    return path is not None and str(path) == STDOUT


def claim_stdout(option: str, json_output: bool) -> None:
    """``--out -`` and ``--json`` would both print on stdout: refuse before any work."""
    if json_output:
        from mlship.errors import BadInputError

        raise BadInputError(f"{option} - and --json both want stdout", hint="drop one of them")


def write_binary(data: bytes, option: str, what: str) -> None:
    """Bytes on stdout for ``option -``; never onto a terminal, where they would be noise."""
    if sys.stdout.isatty():
        from mlship.errors import BadInputError

        raise BadInputError(f"{option} -: {what} is binary and stdout is a terminal",
                            hint="redirect it (> file), or give a path")
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def info(message: str) -> None:
    """A progress or status line for people, on stderr; one line however long (soft wrap):
    a path or digest must stay whole for people who copy it and programs that grep it."""
    stderr_console().print(message, soft_wrap=True)


def warn(message: str) -> None:
    stderr_console().print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def report_error(err: MlshipError) -> None:
    """Print an error once: one stderr line (plus hint), and the JSON error under --json."""
    from rich.markup import escape

    console = stderr_console()
    console.print(f"[bold red]error:[/bold red] {escape(one_line(err.message))}", soft_wrap=True)
    if err.hint:
        console.print(f"  [dim]hint:[/dim] {escape(one_line(err.hint))}", soft_wrap=True)
    if state.json_mode:
        _emit_error(type(err).__name__, int(err.exit_code), err.message, err.hint,
                    details=err.details)


def one_line(text: str) -> str:
    """``text`` with what would break the line (a newline in a file name, a terminal escape in
    a value) written as Python escapes: an error is one line, whatever it quotes."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def report_usage_error(err: Exception) -> None:
    """The JSON error document for a usage error (exit 2); click prints its usage text."""
    context = getattr(err, "ctx", None)
    command = command_name(context.command_path) if context is not None else state.command
    message = err.format_message() if hasattr(err, "format_message") else str(err)
    _emit_error("UsageError", 2, message, "see --help", command=command)


def _emit_error(kind: str, exit_code: int, message: str, hint: str | None, *,
                command: str | None = None, details: dict[str, Any] | None = None) -> None:
    error: dict[str, Any] = {"type": kind, "exit_code": exit_code, "message": message,
                             "hint": hint}
    if details:
        error["details"] = details
    document = {
        "schema": f"{SCHEMA_PREFIX}error/v1",
        "ok": False,
        "command": command or state.command,
        "error": error,
    }
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


class LiveDisplay:
    """Base of the progress views: an optional Rich live element (a status spinner or a Live
    panel) entered and left with the view; None when stderr is not a terminal."""

    def __init__(self, console: Console, element: Any | None) -> None:
        self.console = console
        self.element = element

    def __enter__(self) -> Any:
        if self.element is not None:
            self.element.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.element is not None:
            self.element.__exit__(*exc)

