"""The registry login options of `build --push`, `push` and `deploy`, defined once.

A password never rides on the command line, where ``ps`` and shell history show it: it comes
from stdin (``--registry-password-stdin``, as ``docker login --password-stdin``) or from the
environment (``MLSHIP_REGISTRY_PASSWORD``); without a login here, docker's config.json and its
credential helpers are used (``mlship.image.credentials``).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import typer

from mlship.errors import BadInputError

if TYPE_CHECKING:
    from mlship.image.credentials import RegistryCredential

USERNAME = typer.Option(None, "--registry-username", show_default=False,
                        help="Registry user; the password comes from --registry-password-stdin "
                             "or MLSHIP_REGISTRY_PASSWORD (default: MLSHIP_REGISTRY_USERNAME/"
                             "PASSWORD, else docker's config.json and its credential helpers).")
PASSWORD_STDIN = typer.Option(False, "--registry-password-stdin",
                              help="Read the registry password (or token) from stdin, as "
                                   "`docker login --password-stdin` does.")
# The old spelling put the password on the command line: refused, with what to do instead.
REMOVED_AUTH = typer.Option(None, "--registry-auth", hidden=True, show_default=False,
                            help="Removed: use --registry-username with "
                                 "--registry-password-stdin.")
_HINT = ("pipe the password in: printf '%s' \"$PASSWORD\" | mlship ... --registry-username USER "
         "--registry-password-stdin; or set MLSHIP_REGISTRY_USERNAME and "
         "MLSHIP_REGISTRY_PASSWORD")


def registry_login(username: str | None, password_stdin: bool,
                   removed_auth: str | None) -> RegistryCredential | None:
    """The login these options give, None to look in the environment and docker's files."""
    from mlship.image.credentials import login

    if removed_auth is not None:
        raise BadInputError("--registry-auth USER:PASSWORD is no longer accepted: a password "
                            "on the command line shows in `ps` and in shell history",
                            hint=_HINT)
    if not username and not password_stdin:
        return None
    user = username or os.environ.get("MLSHIP_REGISTRY_USERNAME")
    if not password_stdin:
        return login(user, os.environ.get("MLSHIP_REGISTRY_PASSWORD", ""),
                     source="--registry-username with MLSHIP_REGISTRY_PASSWORD")
    if sys.stdin is None or sys.stdin.isatty():
        raise BadInputError("--registry-password-stdin: stdin is a terminal, not a pipe "
                            "(mlship never prompts)", hint=_HINT)
    password = sys.stdin.read()
    # `docker login --password-stdin` drops one trailing newline (and a CR before it).
    password = password.removesuffix("\n").removesuffix("\r")
    return login(user, password, source="--registry-password-stdin")
