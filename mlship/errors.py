"""The one error tree of mlship, and the exit code each kind of failure maps to.

Every failure a user can cause or meet is an ``MlshipError``: one line that names the file,
field or value, an optional hint saying what to do, and a documented exit code. The CLI turns
it into a stderr line (or a JSON error document) in exactly one place, ``mlship.cli``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (docs/cli.md). Distinct by cause so CI can branch on them."""

    OK = 0
    INTERNAL = 1  # a bug in mlship: rerun with --debug and report it
    BAD_INPUT = 2  # usage, configuration, or an unreadable / invalid model file
    MODEL = 3  # a valid model file that cannot be served (opset, IR version, load or warm-up)
    DOCKER = 4  # Docker engine unreachable, build step failed, base image missing
    SIZE_BUDGET = 5  # image larger than its configured size budget
    REGISTRY = 6  # registry unreachable, authentication failed, digest mismatch
    CLUSTER = 7  # no kubeconfig, cluster unreachable, RBAC, apply conflict
    ROLLOUT = 8  # rollout failed or was aborted by analysis
    TIMEOUT = 9  # waited longer than --timeout
    SERVER = 10  # a running mlship server refused or failed a request (mlship predict)
    STORAGE = 11  # object storage (S3/HTTP) unreachable, missing object, bad credentials
    # `mlship diff --exit-code`: the cluster differs from what deploy sends; `mlship compare`:
    # the new model's answers disagree beyond tolerance
    DIFFERENCES = 12
    NO_DATA = 13  # a rollout aborted because Prometheus had too little data to judge it
    PROVIDER = 14  # the runtime: the GPU provider asked for did not load (provider_fallback deny)
    INTERRUPTED = 130  # Ctrl-C


class MlshipError(Exception):
    """Base of every error mlship reports to a user."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None,
                 details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Machine-readable facts behind the message (e.g. which objects were applied), for
        # the --json error document; the message alone must still tell the whole story.
        self.details = details


class BadInputError(MlshipError):
    """The user gave something mlship cannot use: a path, an option value, a request file."""

    exit_code = ExitCode.BAD_INPUT


class ModelFileError(BadInputError):
    """The model file is missing, empty, truncated, not ONNX, or lacks external data."""


class ConfigError(BadInputError):
    """mlship.yaml (or an override) does not validate."""


class ModelError(MlshipError):
    """The model is valid ONNX but cannot be served here."""

    exit_code = ExitCode.MODEL


class DockerError(MlshipError):
    exit_code = ExitCode.DOCKER


class SizeBudgetError(MlshipError):
    exit_code = ExitCode.SIZE_BUDGET


class RegistryError(MlshipError):
    exit_code = ExitCode.REGISTRY


class ClusterError(MlshipError):
    exit_code = ExitCode.CLUSTER


class RolloutError(MlshipError):
    exit_code = ExitCode.ROLLOUT


class NoDataError(RolloutError):
    """A rollout aborted for lack of data: not judged bad, but never shown good."""

    exit_code = ExitCode.NO_DATA


class MlshipTimeoutError(MlshipError):
    exit_code = ExitCode.TIMEOUT


class ServerError(MlshipError):
    exit_code = ExitCode.SERVER


class StorageError(MlshipError):
    exit_code = ExitCode.STORAGE
