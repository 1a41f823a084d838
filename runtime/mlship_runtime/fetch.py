"""Model sources for the runtime: a local path, ``s3://BUCKET/KEY``, ``gs://BUCKET/KEY`` or
``http(s)://URL``.

A remote model is downloaded into a content-addressed cache (``<cache>/<model digest>/``, an
emptyDir in Kubernetes), and every file is checked against a sha256 before anything loads it:
the digests of the ``mlship-manifest.json`` that ``mlship model push`` wrote beside the model,
or a configured digest (``--model-sha256``) for a single-file model without a manifest. Both
together must agree: the configured digest pins the whole model (``Manifest.digest``: the
model file's sha256 when it is the only file, else one over every file's), so external data
cannot be swapped along with its manifest entry, and the cache is keyed by it too. A file
already in the cache with the right digest is not downloaded again. Every download is bounded
by the size the manifest gives it and everything by ``fetch_timeout_s``; the manifest itself by
``MAX_MANIFEST_BYTES``. The external-data files the .onnx names must be among the manifest's
(mlship_runtime.external). Any problem raises ``FetchError`` naming the file (and both digests
on a mismatch), and the server exits 11 without ever becoming ready.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mlship_runtime import transfer
from mlship_runtime.external import ModelFileError, check_external_data
from mlship_runtime.gcs import GCSClient, GCSError, parse_gs_uri
from mlship_runtime.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    ManifestFile,
    check_relative_path,
    model_digest,
    sha256_file,
)
from mlship_runtime.s3 import S3Client, S3Config, S3Error, parse_s3_uri
from mlship_runtime.settings import RuntimeSettings

log = logging.getLogger("mlship_runtime")
REMOTE_SCHEMES = ("s3://", "gs://", "https://", "http://")
HTTP_TIMEOUT_S = 60.0


class FetchError(Exception):
    """One line: which file or URI, what is wrong, and both digests on a mismatch."""


@dataclass(frozen=True)
class FetchResult:
    path: Path  # the local .onnx to load
    sha256: str
    files: int
    total_bytes: int
    downloaded_bytes: int  # 0 when everything came from the cache
    seconds: float


def is_remote(source: str) -> bool:
    return source.startswith(REMOTE_SCHEMES)


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or "/tmp") / ".cache")
    return Path(base) / "mlship" / "models"


class _Remote:
    """Files beside the model, addressed by their path relative to the model's directory."""

    def __init__(self, source: str, s3_config: S3Config | None,
                 environ: Mapping[str, str] | None, deadline: float) -> None:
        self.source = source
        self.deadline = deadline
        self.s3: S3Client | GCSClient | None = None  # an object store, else plain HTTP
        self.scheme = source[:source.find("://") + 3]
        if source.startswith(("s3://", "gs://")):
            self.bucket, key = parse_s3_uri(source) if self.scheme == "s3://" else \
                parse_gs_uri(source)
            self.base, self.name = key[:key.rfind("/") + 1], key[key.rfind("/") + 1:]
            self.s3 = S3Client(s3_config, environ) if self.scheme == "s3://" else \
                GCSClient(environ=environ)
        else:
            path = source.split("?", 1)[0]
            self.base, self.name = path[:path.rfind("/") + 1], path[path.rfind("/") + 1:]

    def uri(self, relative: str) -> str:
        if self.s3 is not None:
            return f"{self.scheme}{self.bucket}/{self.base}{relative}"
        if relative == self.name:
            return self.source  # keeps a query string (a pre-signed URL) intact
        return f"{self.base}{relative}"

    def _open(self, relative: str) -> Any:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise transfer.DeadlineExceeded("the deadline passed before the request")
        return urllib.request.urlopen(self.uri(relative),
                                      timeout=min(HTTP_TIMEOUT_S, left))

    def read_optional(self, relative: str) -> bytes | None:
        """The object's bytes, or None when it does not exist (an absent manifest)."""
        try:
            if self.s3 is not None:
                return self.s3.get(self.bucket, self.base + relative,
                                   max_bytes=MAX_MANIFEST_BYTES, deadline=self.deadline)
            with self._open(relative) as response:
                return transfer.read(response, MAX_MANIFEST_BYTES, self.deadline)
        except (S3Error, GCSError) as exc:
            if exc.code == "NoSuchKey":
                return None
            raise FetchError(str(exc)) from None
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise FetchError(f"{self.uri(relative)}: HTTP {exc.code} {exc.reason}") from None
        except transfer.TooLarge:
            raise FetchError(f"{self.uri(relative)}: larger than {MAX_MANIFEST_BYTES} bytes; "
                             "not a manifest mlship wrote") from None
        except transfer.DeadlineExceeded:
            raise FetchError(f"{self.uri(relative)}: not downloaded within the deadline "
                             "(fetch_timeout_s)") from None
        except (OSError, ValueError) as exc:
            raise FetchError(f"{self.uri(relative)}: cannot download: {exc}") from None

    def download(self, relative: str, dest: Path, size: int) -> tuple[int, str]:
        """(size, sha256) of the object written to ``dest``; at most ``size`` bytes are read
        (-1: any), FetchError beyond it or past the deadline."""
        limit = None if size < 0 else size
        if self.s3 is not None:
            try:
                return self.s3.download(self.bucket, self.base + relative, dest,
                                        max_bytes=limit, deadline=self.deadline)
            except (S3Error, GCSError) as exc:
                if exc.code == "TooLarge":
                    raise FetchError(f"{self.uri(relative)}: larger than the {size} bytes "
                                     "its manifest gives; refusing to serve the model") from None
                raise FetchError(str(exc)) from None
        import hashlib

        digest = hashlib.sha256()
        try:
            with self._open(relative) as response, dest.open("wb") as sink:
                def write(chunk: bytes) -> None:
                    digest.update(chunk)
                    sink.write(chunk)

                written = transfer.copy(response, write, limit, self.deadline)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"{self.uri(relative)}: HTTP {exc.code} {exc.reason}") from None
        except transfer.TooLarge:
            raise FetchError(f"{self.uri(relative)}: larger than the {size} bytes its "
                             "manifest gives; refusing to serve the model") from None
        except transfer.DeadlineExceeded:
            raise FetchError(f"{self.uri(relative)}: not downloaded within the deadline "
                             "(fetch_timeout_s)") from None
        except (OSError, ValueError) as exc:
            raise FetchError(f"{self.uri(relative)}: cannot download: {exc}") from None
        return written, digest.hexdigest()


def resolve(settings: RuntimeSettings) -> RuntimeSettings:
    """Settings whose ``model`` is a local, verified file (downloaded first when remote)."""
    if not (is_remote(settings.model) or settings.model_sha256):
        return settings
    config = dataclasses.replace(S3Config.from_env(),
                                 addressing_style=settings.s3_addressing_style)
    cache = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
    fetched = fetch_model(settings.model, cache, sha256=settings.model_sha256, s3_config=config,
                          timeout_s=settings.fetch_timeout_s)
    return settings.replace(model=str(fetched.path))


def fetch_model(source: str, cache_dir: Path, *, sha256: str | None = None,
                s3_config: S3Config | None = None,
                environ: Mapping[str, str] | None = None,
                timeout_s: float = 900.0) -> FetchResult:
    """The local path of ``source``'s model file, downloaded and verified when remote."""
    started = time.perf_counter()
    if not is_remote(source):
        return _local(Path(source), sha256, started)
    remote = _Remote(source, s3_config, environ, time.monotonic() + timeout_s)
    try:
        return _fetch_remote(remote, cache_dir, sha256, started)
    except OSError as exc:  # the cache: not writable, disk full, a path that is a file
        raise FetchError(f"{exc.filename or cache_dir}: cannot write the model cache: "
                         f"{exc.strerror or exc}") from None


def _local(path: Path, sha256: str | None, started: float) -> FetchResult:
    """A local model: with a pin, its digest over the .onnx and every external file."""
    if sha256 is None or not path.is_file():
        size = path.stat().st_size if path.is_file() else 0
        return FetchResult(path, sha256 or "", 1, size, 0, time.perf_counter() - started)
    try:
        locations = sorted(check_external_data(path))
    except (ModelFileError, OSError) as exc:
        raise FetchError(str(exc)) from None
    files = tuple(ManifestFile(rel, (path.parent / rel).stat().st_size,
                               sha256_file(path.parent / rel))
                  for rel in (path.name, *locations))
    actual = model_digest(path.name, files)
    if actual != sha256:
        what = "the file has" if len(files) == 1 else \
            f"the model ({path.name} and {len(files) - 1} external-data file(s)) has"
        raise FetchError(f"{path}: sha256 mismatch: expected {sha256} (configured "
                         f"model_sha256), {what} {actual}; refusing to serve it")
    return FetchResult(path, actual, len(files), sum(f.size_bytes for f in files), 0,
                       time.perf_counter() - started)


def _fetch_remote(remote: _Remote, cache_dir: Path, sha256: str | None,
                  started: float) -> FetchResult:
    source = remote.source
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir, remote.deadline):
        if sha256 is not None:
            cached = _cached(cache_dir / sha256)
            if cached is not None and cached.digest == sha256:
                # An entry only a tampered cache holds: its .onnx names external data its
                # recorded manifest does not list (never verified), so nothing is served.
                _check_external(cache_dir / sha256, cached)
                log.info("model %s: sha256 %s found in the cache %s and verified; not "
                         "downloading", source, sha256[:12], cache_dir)
                return _result(cache_dir, cached, 0, started)
        manifest, origin = _manifest(remote, sha256)
        entry = cache_dir / manifest.digest
        count, downloaded = _complete(entry, manifest, remote, origin, cache_dir / ".partial")
        _check_external(entry, manifest)
        manifest = _settled(manifest, entry)
        (entry / MANIFEST_NAME).write_text(manifest.to_json())
    result = _result(cache_dir, manifest, downloaded, started)
    if count:
        log.info("model %s: downloaded %d of %d file(s), %.1f MB in %.2f s, every sha256 "
                 "verified", source, count, len(manifest.files), downloaded / 1e6,
                 result.seconds)
    else:
        log.info("model %s: every file already in the cache %s with the right sha256; not "
                 "downloading", source, cache_dir)
    return result


def _manifest(remote: _Remote, sha256: str | None) -> tuple[Manifest, str]:
    """The manifest beside the model, or one built from the configured digest."""
    manifest_uri = remote.uri(MANIFEST_NAME)
    text = remote.read_optional(MANIFEST_NAME)
    if text is None:
        if not remote.name:
            raise FetchError(f"{manifest_uri}: no such manifest, so the model in "
                             f"{remote.source} is unknown; push it with `mlship model push`")
        if sha256 is None:
            raise FetchError(f"{manifest_uri}: no manifest beside {remote.source} and no "
                             "configured model sha256 (--model-sha256 / "
                             "MLSHIP_RUNTIME_MODEL_SHA256): refusing to serve a model that "
                             "cannot be verified")
        try:
            check_relative_path(remote.name, remote.source)
        except ManifestError as exc:
            raise FetchError(str(exc)) from None
        # Size unknown until downloaded: -1 means "any"; the digest is what is checked.
        return Manifest(model=remote.name, files=(ManifestFile(remote.name, -1, sha256),)), \
            "the configured model_sha256"
    try:
        manifest = Manifest.from_json(text, manifest_uri)
    except ManifestError as exc:
        raise FetchError(str(exc)) from None
    if remote.name and remote.name != manifest.model:
        raise FetchError(f"{manifest_uri} describes {manifest.model}, not {remote.name}; "
                         "point the model source at the pushed prefix or its model file")
    if sha256 is not None and manifest.digest != sha256:
        if manifest.model_file.sha256 == sha256:
            raise FetchError(f"{manifest_uri}: model_sha256 {sha256} pins only the .onnx, and "
                             f"this model has {len(manifest.files) - 1} external-data file(s) "
                             "it does not cover; pin the whole model's digest instead (`mlship "
                             f"model push` prints it; this manifest's is {manifest.digest})")
        raise FetchError(f"{manifest_uri}: the model's digest is {manifest.digest} but the "
                         f"configuration pins {sha256} (model_sha256); refusing to serve a "
                         "different model")
    return manifest, f"manifest {manifest_uri}"


def _check_external(entry: Path, manifest: Manifest) -> None:
    """The .onnx may name only external files its manifest lists (their sha256 verified)."""
    folder = PurePosixPath(manifest.model).parent
    allowed = {str(PurePosixPath(item.path).relative_to(folder))
               for item in manifest.files
               if PurePosixPath(item.path).is_relative_to(folder)}
    try:
        check_external_data(entry / manifest.model, allowed)
    except ModelFileError as exc:
        raise FetchError(str(exc)) from None


def _complete(entry: Path, manifest: Manifest, remote: _Remote, origin: str,
              partial_dir: Path) -> tuple[int, int]:
    """Download what the cache entry lacks; return the files and bytes downloaded."""
    count = downloaded = 0
    shutil.rmtree(partial_dir, ignore_errors=True)  # leftovers of a killed download
    partial_dir.mkdir(parents=True)
    for item in manifest.files:
        target = entry / item.path
        if _matches(target, item):
            continue
        partial = partial_dir / f"{item.sha256}.part"
        try:
            size, actual = remote.download(item.path, partial, item.size_bytes)
        except BaseException:  # nothing unverified stays behind, whatever stopped it
            shutil.rmtree(partial_dir, ignore_errors=True)
            raise
        count, downloaded = count + 1, downloaded + size
        if actual != item.sha256 or item.size_bytes not in (-1, size):
            partial.unlink(missing_ok=True)
            raise FetchError(f"{remote.uri(item.path)}: sha256 mismatch: expected {item.sha256} "
                             f"({item.size_bytes} bytes, from {origin}), downloaded {actual} "
                             f"({size} bytes); refusing to serve the model")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(target)
    shutil.rmtree(partial_dir, ignore_errors=True)
    return count, downloaded


def _matches(path: Path, item: ManifestFile) -> bool:
    if not path.is_file() or item.size_bytes not in (-1, path.stat().st_size):
        return False
    if sha256_file(path) == item.sha256:
        return True
    log.warning("cached %s does not match its sha256 %s; downloading it again", path,
                item.sha256[:12])
    path.unlink()
    return False


def _cached(entry: Path) -> Manifest | None:
    """The manifest of a complete, verified cache entry, or None."""
    recorded = entry / MANIFEST_NAME
    if not recorded.is_file():
        return None
    try:
        manifest = Manifest.from_json(recorded.read_bytes(), str(recorded))
    except ManifestError:
        return None
    return manifest if all(_matches(entry / item.path, item) for item in manifest.files) \
        else None


def _settled(manifest: Manifest, entry: Path) -> Manifest:
    """The manifest with real sizes, so a cache hit can check sizes before hashing."""
    files = tuple(ManifestFile(item.path, (entry / item.path).stat().st_size, item.sha256)
                  for item in manifest.files)
    return Manifest(manifest.model, files, manifest.mlship_version, manifest.created,
                    manifest.signature)


def _result(cache_dir: Path, manifest: Manifest, downloaded: int, started: float) -> FetchResult:
    model = manifest.model_file
    check_relative_path(model.path, str(cache_dir))
    return FetchResult(cache_dir / manifest.digest / model.path, manifest.digest,
                       len(manifest.files), manifest.total_bytes, downloaded,
                       time.perf_counter() - started)


@contextlib.contextmanager
def _locked(cache_dir: Path, deadline: float) -> Iterator[None]:
    """One fetcher per cache at a time: workers of one pod, or batch runs, share it; waiting
    for another one counts against the deadline."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no other process shares a cache there in practice
        yield
        return
    with (cache_dir / ".lock").open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FetchError(f"{cache_dir}: another process held the model cache's "
                                     "lock past the deadline (fetch_timeout_s)") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
