"""Model artifacts in Google Cloud Storage: ``mlship model push|pull|ls`` for ``gs://`` URIs.

The same layout, manifest and checks as S3 (mlship.model.storage): the files under a prefix,
``mlship-manifest.json`` uploaded last, every pulled file checked against its sha256. The client
is the runtime's own (mlship_runtime.gcs: the JSON API over the standard library, credentials
from the chain Google's libraries use), so what push writes is read back by exactly the code
the pods run. Its errors become ``StorageError`` in one place, ``_storage_error``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlship_runtime.gcp_credentials import READ_ONLY, READ_WRITE
from mlship_runtime.gcs import GCSClient, GCSConfig, GCSError
from mlship_runtime.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
)

from mlship.errors import BadInputError, StorageError
from mlship.model.storage import (
    Progress,
    S3Location,
    new_manifest,
    pull_into,
    pulled_prefix,
    push_target,
    summary,
)

_CREDENTIALS_HINT = ("set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file or run "
                     "`gcloud auth application-default login` (Google's credential chain); "
                     "STORAGE_EMULATOR_HOST for an emulator")


@dataclass(frozen=True)
class GcsOptions:
    """None: STORAGE_EMULATOR_HOST, MLSHIP_GCS_ENDPOINT_URL, else storage.googleapis.com."""

    endpoint_url: str | None = None


@dataclass(frozen=True)
class GcsLocation(S3Location):
    @classmethod
    def parse(cls, uri: str) -> GcsLocation:
        if not uri.startswith("gs://") or not uri[5:].split("/", 1)[0]:
            raise BadInputError(f"{uri}: not a gs:// URI", hint="use gs://BUCKET/PREFIX/")
        bucket, _, key = uri[5:].partition("/")
        return cls(bucket, key)

    def uri(self, key: str | None = None) -> str:
        return f"gs://{self.bucket}/{self.key if key is None else key}"


def _client(options: GcsOptions, write: bool = False) -> GCSClient:
    config = GCSConfig(options.endpoint_url.rstrip("/")) if options.endpoint_url else None
    return GCSClient(config, scope=READ_WRITE if write else READ_ONLY)


def _storage_error(err: GCSError) -> StorageError:
    hints = {"NoSuchKey": "check the key; `mlship model ls` lists pushed models",
             "NoSuchBucket": "create it, or fix the bucket name in the URI",
             "AccessDenied": "grant roles/storage.objectUser (push) or objectViewer (pull) on "
                             f"the bucket; {_CREDENTIALS_HINT}",
             "NoCredentials": _CREDENTIALS_HINT,
             "Unreachable": "check --endpoint-url / STORAGE_EMULATOR_HOST and the network"}
    return StorageError(str(err), hint=hints.get(err.code))


def push(model: Path, destination: str, options: GcsOptions,
         on_progress: Progress | None = None) -> dict[str, Any]:
    """Upload ``model`` (inspected first), its external data, then its manifest."""
    started = time.monotonic()
    target = push_target(destination, model, GcsLocation.parse)
    manifest = new_manifest(model)
    client = _client(options, write=True)
    try:
        for item in manifest.files:
            if on_progress is not None:
                on_progress(item.path, 0, item.size_bytes)
            client.upload(target.bucket, target.prefix + item.path, model.parent / item.path)
            if on_progress is not None:
                on_progress(item.path, item.size_bytes, item.size_bytes)
        client.upload(target.bucket, target.prefix + MANIFEST_NAME,
                      manifest.to_json().encode(), "application/json")
    except GCSError as err:
        raise _storage_error(err) from None
    return summary(manifest, target, started, local=str(model))


def pull(source: str, directory: Path, options: GcsOptions,
         on_progress: Progress | None = None) -> dict[str, Any]:
    """Download a pushed model into ``directory``, every file checked against the manifest."""
    started = time.monotonic()
    location = GcsLocation.parse(source)
    prefix = pulled_prefix(location.key, location.prefix)
    client = _client(options)
    manifest = read_manifest(client, GcsLocation(location.bucket, prefix + MANIFEST_NAME))

    def fetch(key: str, partial: Path, item: Any) -> None:
        try:
            # Bounded by the manifest's size: a longer object is refused mid-download.
            client.download(location.bucket, key, partial, max_bytes=item.size_bytes,
                            on_progress=_counter(item.path, item.size_bytes, on_progress))
        except GCSError as err:
            raise _storage_error(err) from None

    pull_into(directory, manifest, prefix, location.uri, fetch)
    result = summary(manifest, GcsLocation(location.bucket, prefix), started,
                     local=str(directory / manifest.model))
    result["source"] = source
    return result


def _counter(path: str, size: int, on_progress: Progress | None) -> Callable[[int], None]:
    done = [0]

    def progress(amount: int) -> None:
        done[0] += amount
        if on_progress is not None:
            on_progress(path, done[0], size)

    return progress


def ls(uri: str, options: GcsOptions) -> dict[str, Any]:
    """Every pushed model (a manifest) under ``uri``'s prefix."""
    location = GcsLocation.parse(uri)
    client = _client(options)
    try:
        manifests = sorted(name for name, _ in client.list(location.bucket, location.key)
                           if name.rsplit("/", 1)[-1] == MANIFEST_NAME)
    except GCSError as err:
        raise _storage_error(err) from None
    models = []
    for key in manifests:
        manifest = read_manifest(client, GcsLocation(location.bucket, key))
        prefix = key[: -len(MANIFEST_NAME)]
        models.append({"uri": location.uri(prefix), "model_uri": location.uri(prefix +
                       manifest.model), "sha256": manifest.model_file.sha256,
                       "digest": manifest.digest, "total_bytes": manifest.total_bytes,
                       "files": len(manifest.files),
                       "mlship_version": manifest.mlship_version, "created": manifest.created})
    return {"uri": uri, "models": models}


def read_manifest(client: GCSClient, location: GcsLocation) -> Manifest:
    try:
        body = client.get(location.bucket, location.key, max_bytes=MAX_MANIFEST_BYTES)
    except GCSError as err:
        error = _storage_error(err)
        if err.code == "NoSuchKey":
            error.hint = "no model was pushed there: `mlship model push MODEL gs://BUCKET/" \
                         "PREFIX/` writes the manifest"
        raise error from None
    try:
        return Manifest.from_json(body, location.uri())
    except ManifestError as err:
        raise BadInputError(str(err)) from None
    except (ValueError, TypeError) as err:
        raise BadInputError(f"{location.uri()}: not a valid mlship model manifest: "
                            f"{' '.join(str(err).split())}") from None
