"""Step helpers the generated CI pipelines call between mlship commands.

``python -m mlship.cli.ci_steps field REPORT KEY | image REPORT | pull IMAGE``: one value of a
step's ``--json`` report (the digest handed to later jobs), the digest-pinned reference a build
report says was pushed, and a base-image pull through the Docker SDK (a runner with Docker but
no docker CLI). Exit codes are mlship's (docs/cli.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mlship.errors import BadInputError, MlshipError

USAGE = "usage: python -m mlship.cli.ci_steps field REPORT KEY | image REPORT | pull IMAGE\n"


def field_of(report: Path, key: str) -> str:
    """One top-level value of a step's --json report (the digest handed to later jobs)."""
    try:
        document = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BadInputError(f"{report}: not a readable mlship --json report: {err}") from None
    value = document.get(key) if isinstance(document, dict) else None
    if value in (None, ""):
        raise BadInputError(f"{report}: has no {key!r} (schema {document.get('schema')!r})"
                            if isinstance(document, dict) else f"{report}: not an object")
    return str(value)


def pinned_image(report: Path) -> str:
    """``registry/repository@sha256:...`` of the image a build report says was pushed."""
    digest = field_of(report, "digest")
    reference = json.loads(report.read_text(encoding="utf-8"))["pushed"][0]["image"]
    name, _, tag = reference.rpartition(":")
    repository = name if name and "/" not in tag else reference
    return f"{repository}@{digest}"


def pull(image: str) -> None:
    """Pull the base image through the Docker SDK (a runner with Docker but no docker CLI)."""
    from mlship.image.engine import docker_client, docker_errors

    client = docker_client()
    with docker_errors(f"pulling {image}"):
        client.images.pull(image)


def main(argv: list[str]) -> int:
    """The helpers' command line; returns the exit code."""

    try:
        if len(argv) == 3 and argv[0] == "field":
            sys.stdout.write(field_of(Path(argv[1]), argv[2]) + "\n")
            return 0
        if len(argv) == 2 and argv[0] == "image":
            sys.stdout.write(pinned_image(Path(argv[1])) + "\n")
            return 0
        if len(argv) == 2 and argv[0] == "pull":
            pull(argv[1])
            return 0
    except MlshipError as err:
        sys.stderr.write(f"error: {err.message}\n")
        return int(err.exit_code)
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
