"""Model sources for the runtime: a local path, ``s3://BUCKET/KEY`` or ``http(s)://URL``.

A remote model is downloaded into a content-addressed cache (``<cache>/<model sha256>/``, an
emptyDir in Kubernetes), and every file is checked against a sha256 before anything loads it:
the digests of the ``mlship-manifest.json`` that ``mlship model push`` wrote beside the model,
or a configured digest (``--model-sha256``) for a single-file model without a manifest. Both
together must agree. A file already in the cache with the right digest is not downloaded again.
Any mismatch raises ``FetchError`` naming the file and both digests, and the server exits
without ever becoming ready.
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
from pathlib import Path

from mlship_runtime.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ManifestFile,
    check_relative_path,
    sha256_file,
)
from mlship_runtime.s3 import S3Client, S3Config, S3Error, parse_s3_uri
from mlship_runtime.settings import RuntimeSettings

log = logging.getLogger("mlship_runtime")
REMOTE_SCHEMES = ("s3://", "https://", "http://")
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
                 environ: Mapping[str, str] | None) -> None:
        self.source = source
        self.s3: S3Client | None = None
        if source.startswith("s3://"):
            self.bucket, key = parse_s3_uri(source)
            self.base, self.name = key[:key.rfind("/") + 1], key[key.rfind("/") + 1:]
            self.s3 = S3Client(s3_config, environ)
        else:
            path = source.split("?", 1)[0]
            self.base, self.name = path[:path.rfind("/") + 1], path[path.rfind("/") + 1:]

    def uri(self, relative: str) -> str:
        if self.s3 is not None:
            return f"s3://{self.bucket}/{self.base}{relative}"
        if relative == self.name:
            return self.source  # keeps a query string (a pre-signed URL) intact
        return f"{self.base}{relative}"

    def read_optional(self, relative: str) -> bytes | None:
        """The object's bytes, or None when it does not exist (an absent manifest)."""
        try:
            if self.s3 is not None:
                return self.s3.get(self.bucket, self.base + relative)
            with urllib.request.urlopen(self.uri(relative), timeout=HTTP_TIMEOUT_S) as response:
                return bytes(response.read())
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise FetchError(str(exc)) from None
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise FetchError(f"{self.uri(relative)}: HTTP {exc.code} {exc.reason}") from None
        except (OSError, ValueError) as exc:
            raise FetchError(f"{self.uri(relative)}: cannot download: {exc}") from None

    def download(self, relative: str, dest: Path) -> tuple[int, str]:
        """(size, sha256) of the object written to ``dest``."""
        if self.s3 is not None:
            try:
                return self.s3.download(self.bucket, self.base + relative, dest)
            except S3Error as exc:
                raise FetchError(str(exc)) from None
        import hashlib

        digest, size = hashlib.sha256(), 0
        try:
            with urllib.request.urlopen(self.uri(relative), timeout=HTTP_TIMEOUT_S) as response, \
                    dest.open("wb") as sink:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    sink.write(chunk)
                    size += len(chunk)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"{self.uri(relative)}: HTTP {exc.code} {exc.reason}") from None
        except OSError as exc:
            raise FetchError(f"{self.uri(relative)}: cannot download: {exc}") from None
        return size, digest.hexdigest()


def resolve(settings: RuntimeSettings) -> RuntimeSettings:
    """Settings whose ``model`` is a local, verified file (downloaded first when remote)."""
    if not (is_remote(settings.model) or settings.model_sha256):
        return settings
    config = dataclasses.replace(S3Config.from_env(),
                                 addressing_style=settings.s3_addressing_style)
    cache = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
    fetched = fetch_model(settings.model, cache, sha256=settings.model_sha256, s3_config=config)
    return settings.replace(model=str(fetched.path))


def fetch_model(source: str, cache_dir: Path, *, sha256: str | None = None,
                s3_config: S3Config | None = None,
                environ: Mapping[str, str] | None = None) -> FetchResult:
    """The local path of ``source``'s model file, downloaded and verified when remote."""
    started = time.perf_counter()
    if not is_remote(source):
        path = Path(source)
        if sha256 is not None and path.is_file():
            actual = sha256_file(path)
            if actual != sha256:
                raise FetchError(f"{path}: sha256 mismatch: expected {sha256} (configured "
                                 f"model_sha256), the file has {actual}; refusing to serve it")
        size = path.stat().st_size if path.is_file() else 0
        return FetchResult(path, sha256 or "", 1, size, 0, time.perf_counter() - started)
    remote = _Remote(source, s3_config, environ)
    try:
        return _fetch_remote(remote, cache_dir, sha256, started)
    except OSError as exc:  # the cache: not writable, disk full, a path that is a file
        raise FetchError(f"{exc.filename or cache_dir}: cannot write the model cache: "
                         f"{exc.strerror or exc}") from None


def _fetch_remote(remote: _Remote, cache_dir: Path, sha256: str | None,
                  started: float) -> FetchResult:
    source = remote.source
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir):
        if sha256 is not None:
            cached = _cached(cache_dir / sha256)
            if cached is not None:
                log.info("model %s: sha256 %s found in the cache %s and verified; not "
                         "downloading", source, sha256[:12], cache_dir)
                return _result(cache_dir, cached, 0, started)
        manifest, origin = _manifest(remote, sha256)
        entry = cache_dir / manifest.model_file.sha256
        count, downloaded = _complete(entry, manifest, remote, origin, cache_dir / ".partial")
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
    if sha256 is not None and manifest.model_file.sha256 != sha256:
        raise FetchError(f"{manifest_uri}: the model's sha256 is {manifest.model_file.sha256} "
                         f"but the configuration pins {sha256} (model_sha256); refusing to "
                         "serve a different model")
    return manifest, f"manifest {manifest_uri}"


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
        size, actual = remote.download(item.path, partial)
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
    return FetchResult(cache_dir / model.sha256 / model.path, model.sha256,
                       len(manifest.files), manifest.total_bytes, downloaded,
                       time.perf_counter() - started)


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """One fetcher per cache at a time: workers of one pod, or batch runs, share it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no other process shares a cache there in practice
        yield
        return
    with (cache_dir / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
