"""Model artifacts in S3, the boto3 side: push a model with its manifest, pull it back verified,
list what a prefix holds.

A pushed model is a prefix: ``s3://BUCKET/PREFIX/<model>.onnx``, its external-data files at
their relative paths, and ``mlship-manifest.json`` (sha256 and size of every file, a summary of
the signature, the mlship version) uploaded last, so a reader never sees a manifest whose files
are not all there. The manifest format and the hashing live in ``mlship_runtime.manifest``: the
runtime reads what this module writes. boto3 is imported inside functions (``mlship --help``
stays fast) and its errors become ``StorageError`` in exactly one place, ``_storage_error``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlship_runtime.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ManifestFile,
    sha256_file,
)

from mlship.errors import BadInputError, StorageError

if TYPE_CHECKING:
    from mlship.model.facts import ModelSignature

MULTIPART_BYTES = 8 * 2**20
# file (relative path), bytes done so far, bytes of that file
Progress = Callable[[str, int, int], None]
_CREDENTIALS_HINT = ("check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
                     "AWS_SHARED_CREDENTIALS_FILE (the standard AWS credential chain)")


@dataclass(frozen=True)
class S3Options:
    """Where S3 is: None means boto3's own resolution (AWS_ENDPOINT_URL, AWS_REGION, config)."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"  # auto | path | virtual


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
            raise BadInputError(f"{uri}: not an s3:// URI", hint="use s3://BUCKET/PREFIX/")
        bucket, _, key = uri[5:].partition("/")
        return cls(bucket, key)

    @property
    def prefix(self) -> str:
        """The key as a directory: '' or ending with '/'."""
        return self.key if not self.key or self.key.endswith("/") else f"{self.key}/"

    def uri(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{self.key if key is None else key}"


def _client(options: S3Options) -> Any:
    import boto3
    from botocore.config import Config

    style = options.addressing_style
    if style == "auto" and (options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                            or os.environ.get("AWS_ENDPOINT_URL")):
        style = "path"  # what MinIO, Ceph and moto expect; the runtime's auto does the same
    config = Config(s3={"addressing_style": style}, connect_timeout=10, read_timeout=60,
                    retries={"max_attempts": 4, "mode": "standard"})
    session = boto3.session.Session(region_name=options.region)
    return session.client("s3", endpoint_url=options.endpoint_url, config=config)


def _storage_error(err: Exception, uri: str, client: Any) -> StorageError:
    """Every boto3/botocore failure as one line naming the bucket/key and what to do."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    # boto3 wraps upload failures (S3UploadFailedError) around the ClientError that says why.
    cause = next((e for e in (err, err.__cause__, err.__context__) if isinstance(e, ClientError)),
                 err)
    endpoint = client.meta.endpoint_url
    if isinstance(cause, ClientError):
        code = str(cause.response.get("Error", {}).get("Code", ""))
        bucket = S3Location.parse(uri).bucket
        key_id = _access_key_id()
        known = {
            "NoSuchBucket": (f"s3://{bucket}: the bucket does not exist at {endpoint}",
                             "create it, or fix the bucket name in the URI"),
            "NoSuchKey": (f"{uri}: no such object", "check the key; `mlship model ls` lists "
                                                    "pushed models"),
            "404": (f"{uri}: no such object", "check the key; `mlship model ls` lists pushed "
                                              "models"),
            "InvalidAccessKeyId": (f"{uri}: access key {key_id} is not known to {endpoint}",
                                   _CREDENTIALS_HINT),
            "SignatureDoesNotMatch": (f"{uri}: the secret key does not match access key "
                                      f"{key_id} at {endpoint}", _CREDENTIALS_HINT),
            "AccessDenied": (f"{uri}: access denied for access key {key_id}",
                             "grant s3:GetObject, s3:PutObject and s3:ListBucket on the prefix"),
            "403": (f"{uri}: access denied for access key {key_id}", _CREDENTIALS_HINT),
        }
        message, hint = known.get(code, (f"{uri}: S3 error {code}: "
                                         f"{cause.response.get('Error', {}).get('Message', '')}",
                                         None))
        return StorageError(message, hint=hint)
    if isinstance(err, NoCredentialsError):
        return StorageError(f"{uri}: no AWS credentials found", hint=_CREDENTIALS_HINT)
    if isinstance(err, EndpointConnectionError):
        return StorageError(f"{uri}: cannot reach the S3 endpoint {endpoint}",
                            hint="check --endpoint-url / AWS_ENDPOINT_URL and the network")
    return StorageError(f"{uri}: {type(err).__name__}: {err}")


def _access_key_id() -> str:
    """The key id the standard chain resolves (never the secret), for error messages."""
    import boto3

    credentials = boto3.session.Session().get_credentials()
    return credentials.access_key if credentials is not None else "(none)"


def _boto_errors() -> tuple[type[Exception], ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, Boto3Error)


def model_files(signature: ModelSignature) -> tuple[ManifestFile, ...]:
    """The model and its external data, as manifest entries relative to the model's dir."""
    path = Path(signature.path)
    return (ManifestFile(path.name, signature.size_bytes, signature.sha256),
            *(ManifestFile(item.path.replace(os.sep, "/"), item.size_bytes, item.sha256)
              for item in signature.external_data))


def signature_summary(signature: ModelSignature) -> dict[str, Any]:
    return {"inputs": {spec.name: str(spec.type) for spec in signature.inputs},
            "outputs": {spec.name: str(spec.type) for spec in signature.outputs},
            "opsets": dict(signature.opsets), "ir_version": signature.ir_version,
            "producer": f"{signature.producer_name} {signature.producer_version}".strip()}


def push_target(destination: str, model: Path, parse: Callable[[str], Any]) -> Any:
    """The parsed prefix a model is pushed under; a file name there is a usage mistake."""
    target = parse(destination)
    if target.key.endswith((".onnx", ".json")):
        parent = target.key[:target.key.rfind("/") + 1]
        scheme = destination.split("://", 1)[0]
        raise BadInputError(f"{destination}: push takes a prefix, not a file name",
                            hint=f"mlship model push {model} {scheme}://{target.bucket}/{parent}")
    return target


def new_manifest(model: Path) -> Manifest:
    """The manifest of ``model`` (inspected first: a broken file is refused before upload)."""
    from mlship import __version__
    from mlship.model.inspect import inspect_model

    signature = inspect_model(model)
    return Manifest(model=model.name, files=model_files(signature), mlship_version=__version__,
                    created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    signature=signature_summary(signature))


def pulled_prefix(key: str, prefix: str) -> str:
    """The prefix a pull reads: the URI's, or the folder of the model or manifest it names."""
    return prefix if not key.endswith((".onnx", MANIFEST_NAME)) else key[:key.rfind("/") + 1]


def accept_download(partial: Path, final: Path, sha256: str, uri: str) -> None:
    """A downloaded file kept only when its sha256 is the manifest's; atomic: a pulled file
    is whole or absent."""
    actual = sha256_file(partial)
    if actual != sha256:
        partial.unlink()
        raise StorageError(f"{uri}: sha256 mismatch: the manifest says {sha256}, the downloaded "
                           f"file has {actual}",
                           hint="the object changed after push: push the model again")
    partial.replace(final)


def pull_into(directory: Path, manifest: Manifest, prefix: str, uri_of: Callable[[str], str],
              fetch: Callable[[str, Path, Any], None]) -> None:
    """Every file of ``manifest`` fetched (``fetch(key, partial_path, item)``, raising
    StorageError) beside its final name, kept only with the manifest's sha256; then the
    manifest itself, so a folder with a manifest holds the whole model."""
    directory.mkdir(parents=True, exist_ok=True)
    for item in manifest.files:
        key = prefix + item.path
        final = directory / item.path
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".{final.name}.partial")
        try:
            fetch(key, partial, item)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        accept_download(partial, final, item.sha256, uri_of(key))
    (directory / MANIFEST_NAME).write_text(manifest.to_json())


def push(model: Path, destination: str, options: S3Options,
         on_progress: Progress | None = None) -> dict[str, Any]:
    """Upload ``model`` (inspected first), its external data, then its manifest."""
    from boto3.s3.transfer import TransferConfig

    started = time.monotonic()
    target = push_target(destination, model, S3Location.parse)
    manifest = new_manifest(model)
    client = _client(options)
    transfer = TransferConfig(multipart_threshold=MULTIPART_BYTES,
                              multipart_chunksize=MULTIPART_BYTES, max_concurrency=4)
    uri = target.uri(target.prefix + manifest.model)
    try:
        for item in manifest.files:
            uri = target.uri(target.prefix + item.path)
            client.upload_file(str(model.parent / item.path), target.bucket,
                               target.prefix + item.path, Config=transfer,
                               Callback=_counter(item, on_progress))
        uri = target.uri(target.prefix + MANIFEST_NAME)
        client.put_object(Bucket=target.bucket, Key=target.prefix + MANIFEST_NAME,
                          Body=manifest.to_json().encode(), ContentType="application/json")
    except _boto_errors() as err:
        raise _storage_error(err, uri, client) from None
    return summary(manifest, target, started, local=str(model))


def pull(source: str, directory: Path, options: S3Options,
         on_progress: Progress | None = None) -> dict[str, Any]:
    """Download a pushed model into ``directory``, every file checked against the manifest."""
    started = time.monotonic()
    location = S3Location.parse(source)
    prefix = pulled_prefix(location.key, location.prefix)
    client = _client(options)
    manifest = read_manifest(client, S3Location(location.bucket, prefix + MANIFEST_NAME))

    def fetch(key: str, partial: Path, item: Any) -> None:
        try:
            client.download_file(location.bucket, key, str(partial),
                                 Callback=_counter(item, on_progress))
        except _boto_errors() as err:
            raise _storage_error(err, location.uri(key), client) from None

    pull_into(directory, manifest, prefix, location.uri, fetch)
    result = summary(manifest, S3Location(location.bucket, prefix), started,
                      local=str(directory / manifest.model))
    result["source"] = source
    return result


def ls(uri: str, options: S3Options) -> dict[str, Any]:
    """Every pushed model (a manifest) under ``uri``'s prefix."""
    location = S3Location.parse(uri)
    client = _client(options)
    manifests: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=location.bucket, Prefix=location.key):
            manifests += [item["Key"] for item in page.get("Contents", [])
                          if item["Key"].rsplit("/", 1)[-1] == MANIFEST_NAME]
    except _boto_errors() as err:
        raise _storage_error(err, uri, client) from None
    models = []
    for key in sorted(manifests):
        manifest = read_manifest(client, S3Location(location.bucket, key))
        prefix = key[: -len(MANIFEST_NAME)]
        models.append({"uri": location.uri(prefix), "model_uri": location.uri(prefix +
                       manifest.model), "sha256": manifest.model_file.sha256,
                       "digest": manifest.digest, "total_bytes": manifest.total_bytes,
                       "files": len(manifest.files),
                       "mlship_version": manifest.mlship_version, "created": manifest.created})
    return {"uri": uri, "models": models}


def read_manifest(client: Any, location: S3Location) -> Manifest:
    try:
        body = client.get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
    except _boto_errors() as err:
        error = _storage_error(err, location.uri(), client)
        if "no such object" in error.message:
            error.hint = "no model was pushed there: `mlship model push MODEL s3://BUCKET/" \
                         "PREFIX/` writes the manifest"
        raise error from None
    try:
        return Manifest.from_json(body, location.uri())
    except ManifestError as err:
        raise BadInputError(str(err)) from None
    except (ValueError, TypeError) as err:  # a field of the wrong type (a signature not a map)
        raise BadInputError(f"{location.uri()}: not a valid mlship model manifest: "
                            f"{_wrong_field(body) or ' '.join(str(err).split())}") from None


def _wrong_field(body: bytes) -> str | None:
    """Which top-level field of a manifest has the wrong type, for the error line."""
    import json

    document = json.loads(body)
    signature = document.get("signature")
    if signature is not None and not isinstance(signature, dict):
        return f"signature must be an object, not {type(signature).__name__}"
    return None


def _counter(item: ManifestFile, on_progress: Progress | None) -> Callable[[int], None]:
    done = [0]

    def callback(amount: int) -> None:  # boto3 calls it from its transfer threads
        done[0] += amount
        if on_progress is not None:
            on_progress(item.path, done[0], item.size_bytes)

    return callback


def summary(manifest: Manifest, target: S3Location, started: float,
             local: str) -> dict[str, Any]:
    model_uri = target.uri(target.prefix + manifest.model)
    return {
        "uri": target.uri(target.prefix), "model_uri": model_uri, "local_path": local,
        "manifest_uri": target.uri(target.prefix + MANIFEST_NAME),
        "sha256": manifest.model_file.sha256, "digest": manifest.digest,
        "total_bytes": manifest.total_bytes,
        "files": [{"path": item.path, "size_bytes": item.size_bytes, "sha256": item.sha256}
                  for item in manifest.files],
        "mlship_version": manifest.mlship_version, "created": manifest.created,
        "duration_s": round(time.monotonic() - started, 3),
        # Paste into mlship.yaml: the runtime verifies against both. The digest pins the
        # whole model, external data included (the model file's sha256 when it has none).
        "config": {"model": {"source": model_uri, "sha256": manifest.digest,
                             "size_bytes": manifest.total_bytes}},
    }
