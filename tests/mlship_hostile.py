"""The machinery of tests/render/test_hostile_values.py (importable as ``mlship_hostile``):
the places of mlship.yaml that hold text (walked from the MlshipConfig schema), setting a value
at one of them, and readers that turn every output back into structure (YAML, JSON, the
Dockerfile's words as BuildKit reads them, the CI pipelines' shell lines, run in a sandbox).
"""

from __future__ import annotations

import copy
import json
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

# (list element 0), (a map's key), (a map's value under its first key)
ITEM, KEY, VALUE = "[]", "{key}", "{value}"
FieldPath = tuple[str, ...]

HOSTILE: dict[str, str | bytes] = {
    "newline": "x\ny: 1",
    "carriage-return": "x\r\ny",
    "double-quotes": 'x" y "z',
    "single-quotes": "x' y 'z",
    "command-substitution": "$(touch PWNED)",
    "backticks": "`touch PWNED`",
    "double-quote-break-out": '"; touch PWNED; echo "',
    "single-quote-break-out": "'; touch PWNED; echo '",
    "github-expression": "${{ secrets.KUBECONFIG }}",
    "jinja-expression": "{{ 7*7 }}",
    "mlship-template": "[[ ctx ]]",
    "yaml-anchor": "&anchor x",
    "yaml-alias": "*anchor",
    "colon-space": "a: b",
    "hash-comment": "a #b",
    "yaml-flow": "{a: [b, c]}",
    "shell-variable": "$HOME",
    "leading-dash": "-rf",
    "nul": "x\x00y",
    "line-separator": "x\u2028y",
    "bidi-override": "x\u202ey",
    "non-utf8": b"\xff\xfe",
}
BYTES_PLACEHOLDER = "HOSTILE-BYTES-PLACEHOLDER"


def _is_text(annotation: Any) -> bool:
    if annotation is str:
        return True
    return get_origin(annotation) is Annotated and get_args(annotation)[0] is str


def string_fields(model: type[BaseModel], prefix: FieldPath = ()) -> Iterator[FieldPath]:
    """Every place of ``model`` where mlship.yaml holds text: str fields, list items, map keys
    and values, through every nested section and list of sections."""
    for name, info in model.model_fields.items():
        yield from _paths(info.annotation, (*prefix, name))


def _paths(annotation: Any, path: FieldPath) -> Iterator[FieldPath]:
    origin, args = get_origin(annotation), get_args(annotation)
    if _is_text(annotation):
        yield path
    elif origin is Literal or annotation in (int, float, bool, type(None)):
        return
    elif origin in (Union, types.UnionType):
        for arg in args:
            yield from _paths(arg, path)
    elif origin is Annotated:
        yield from _paths(args[0], path)
    elif origin is list:
        yield from _paths(args[0], (*path, ITEM))
    elif origin is dict:
        if _is_text(args[0]):
            yield (*path, KEY)
        yield from _paths(args[1], (*path, VALUE))
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from string_fields(annotation, path)
    else:
        raise AssertionError(f"{'.'.join(path)}: annotation {annotation!r} not understood")


class Missing(LookupError):
    """The scenario has no element where the path needs one (an empty list of sections)."""


def put(node: Any, path: FieldPath, value: Any) -> Any:
    """A copy of ``node`` with ``value`` at ``path``."""
    if not path:
        return value
    part, rest = path[0], path[1:]
    if part == ITEM:
        items = list(node or [])
        if not items:
            if rest:
                raise Missing(path)
            return [value]
        items[0] = put(items[0], rest, value)
        return items
    if part == KEY:
        mapping = dict(node or {})
        first = next(iter(mapping.values()), "x")
        return {value: first}
    if part == VALUE:
        mapping = dict(node or {})
        key = next(iter(mapping), "k")
        mapping[key] = put(mapping.get(key), rest, value)
        return mapping
    mapping = dict(node or {})
    if rest and rest[0] == ITEM and not mapping.get(part) and rest[1:]:
        raise Missing(path)
    mapping[part] = put(mapping.get(part), rest, value)
    return mapping


def dotted(path: FieldPath) -> str:
    """How an error names the key: ``env.secrets.0.mount_path``; in a map, the map."""
    parts: list[str] = []
    for part in path:
        if part in (KEY, VALUE):
            break
        parts.append("0" if part == ITEM else part)
    return ".".join(parts)


def with_value(raw: dict[str, Any], path: FieldPath, value: str | bytes) -> dict[str, Any]:
    return put(copy.deepcopy(raw), path, BYTES_PLACEHOLDER if isinstance(value, bytes) else value)


def dump(raw: dict[str, Any], value: str | bytes) -> bytes:
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True).encode()
    if isinstance(value, bytes):
        text = text.replace(BYTES_PLACEHOLDER.encode(), value)
    return text


# ---- outputs back into structure ----------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, list[tuple[str, bool]]]]:
    """(instruction, words) as BuildKit reads them: continuation lines joined, comments
    dropped, each word with whether an unescaped ``$`` would expand in it."""
    instructions = []
    logical = ""
    for line in text.splitlines():
        if not logical and (line.lstrip().startswith("#") or not line.strip()):
            continue
        if line.endswith("\\"):
            logical += line[:-1]
            continue
        logical += line
        name, _, rest = logical.strip().partition(" ")
        instructions.append((name.upper(), docker_words(rest)))
        logical = ""
    assert not logical, "a continuation line at the end of the Dockerfile"
    return instructions


def docker_words(text: str) -> list[tuple[str, bool]]:
    """BuildKit's shell-word lexer for ENV and LABEL: quotes, backslash escapes, and in double
    quotes a backslash escaping only ``"``, ``$`` and itself."""
    words: list[tuple[str, bool]] = []
    word, expands, started, quote = "", False, False, None
    index = 0
    while index < len(text):
        char = text[index]
        if quote is None and char.isspace():
            if started:
                words.append((word, expands))
            word, expands, started = "", False, False
        elif quote is None and char in "\"'":
            quote, started = char, True
        elif quote == char:
            quote = None
        elif char == "\\" and quote != "'" and index + 1 < len(text):
            following = text[index + 1]
            if quote == '"' and following not in '"$\\':
                word += char
            word += following
            index += 1
            started = True
        else:
            if char == "$" and quote != "'":
                expands = True
            word += char
            started = True
        index += 1
    assert quote is None, f"unterminated quote in {text!r}"
    if started:
        words.append((word, expands))
    return words


def parsed_outputs(files: dict[str, str]) -> dict[str, Any]:
    """Each output file as data: YAML documents, JSON, the Dockerfile's instructions."""
    parsed: dict[str, Any] = {}
    for name, text in files.items():
        if name.endswith((".yaml", ".yml")):
            parsed[name] = list(yaml.safe_load_all(text))
        elif name.endswith(".json"):
            parsed[name] = json.loads(text)
        elif name.endswith("Dockerfile"):
            parsed[name] = dockerfile_instructions(text)
        else:
            parsed[name] = text.splitlines()
    return parsed


def shape(value: Any) -> Any:
    """What must not change with a value: keys, list lengths and the kinds of the leaves
    (a leaf's text, a value or a name with a hash in it, may change)."""
    if isinstance(value, dict):
        return ("map", sorted((str(key), shape(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return ("list", [shape(item) for item in value])
    return type(value).__name__


def leaves(value: Any) -> Iterator[str]:
    """Every string of a parsed output, and the strings inside JSON documents they hold."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(key)
            yield from leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from leaves(item)
    elif isinstance(value, str):
        yield value
        if value[:1] in "{[":
            try:
                inner = json.loads(value)
            except ValueError:
                return
            yield from leaves(inner)


# ---- CI pipelines: their shell lines, checked and run --------------------------------------

def github_scripts(workflow: dict[str, Any]) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"]
            if "run" in step]


def gitlab_scripts(pipeline: dict[str, Any]) -> list[str]:
    lines = list(pipeline.get("default", {}).get("before_script", []))
    for job in pipeline.values():
        if isinstance(job, dict):
            lines += job.get("script", [])
    return lines


STUB = """#!/bin/bash
{ printf '%s' "$(basename "$0")"; for arg in "$@"; do printf '\\037%s' "$arg"; done
  printf '\\036'; } >> "$STUB_LOG"
echo stub-output
"""


def run_sandboxed(script: str, sandbox: Path) -> tuple[int, str, list[list[str]]]:
    """Run ``script`` with bash in ``sandbox`` as a CI runner would, every program it calls
    (mlship, python, docker, pip) a stub that records its arguments: (exit code, stderr,
    the calls)."""
    bin_dir = sandbox / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for program in ("mlship", "python", "docker", "pip"):
        stub = bin_dir / program
        stub.write_text(STUB)
        stub.chmod(0o755)
    log = sandbox / "calls.log"
    log.write_text("")
    (sandbox / "script.sh").write_text(script)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(sandbox), "STUB_LOG": str(log),
           "GITHUB_OUTPUT": str(sandbox / "github-output"),
           "GITHUB_ENV": str(sandbox / "github-env"), "RUNNER_TEMP": str(sandbox),
           "GITHUB_REPOSITORY_OWNER": "acme", "DEPLOY_IMAGE": "registry.example.com/x@sha256:0",
           "KUBECONFIG_DATA": "{}"}
    process = subprocess.run(["bash", "--noprofile", "--norc", "-e", "-o", "pipefail",
                              "script.sh"], cwd=sandbox, env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    calls = [record.split("\x1f") for record in log.read_text().split("\x1e") if record]
    return process.returncode, process.stderr, calls


def bash_syntax_ok(script: str) -> str | None:
    process = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True,
                             timeout=30, check=False)
    return None if process.returncode == 0 else process.stderr

