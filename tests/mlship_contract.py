"""Checks of the CLI output contract (docs/cli.md), shared by the contract and pipeline tests.

Importable as ``mlship_contract`` (tests/ is on sys.path, see mlship_testsupport).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from mlship.cli.contract import load_schema


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stderr\n{self.stderr}\n--- stdout\n{self.stdout[:3000]}"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without MLSHIP_* settings (the wheelhouse cache is kept), plus ``extra``."""
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("MLSHIP_") or key == "MLSHIP_WHEELHOUSE"}
    environ.update(extra or {})
    return environ


def mlship(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 600, stdin: str | None = None) -> Run:
    """``python -m mlship ARGS`` in its own process: real stdout, stderr and exit code; ``stdin``
    is piped in (else stdin is empty)."""
    result = subprocess.run([sys.executable, "-m", "mlship", *args], cwd=cwd,
                            env=clean_env(env), capture_output=True, text=True,
                            input=stdin if stdin is not None else "",
                            timeout=timeout, check=False)
    return Run(result.returncode, result.stdout, result.stderr)


def validate(schema_name: str, document: Any) -> None:
    Draft202012Validator(load_schema(schema_name)).validate(document)


def check_success(path: tuple[str, ...], stdout: str) -> dict[str, Any]:
    """stdout is exactly one JSON document, valid against the command's schema."""
    document = json.loads(stdout)  # json.loads refuses a second document or trailing text
    validate("-".join(path), document)
    return document


def check_failure(path: tuple[str, ...], stdout: str, exit_code: int) -> dict[str, Any]:
    """stdout is exactly one mlship.error/v1 document naming the command and the exit code."""
    document = json.loads(stdout)
    validate("error", document)
    assert document["command"] == " ".join(path), document
    assert document["error"]["exit_code"] == exit_code, document
    return document
