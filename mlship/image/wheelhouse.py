"""The runtime's locked dependencies as a host-side wheelhouse, so image builds need no network.

``runtime/requirements.lock`` pins every distribution the serving image installs (exact
version and sha256, pip ``--require-hashes`` format) for one target: CPython 3.11 on glibc
x86_64, the Python of Debian bookworm and ``python:3.11-slim``. The lock lists only what
inference imports; onnxruntime's declared but unused dependencies (protobuf, flatbuffers,
packaging, and sympy/coloredlogs in older releases) are left out and the image installs with
``--no-deps``; the build's smoke test proves the result serves. Wheels are downloaded once
into ``~/.cache/mlship/wheelhouse/<lock sha256>/`` and reused by every build. The runtime's own
wheel is written here from the installed ``mlship_runtime`` sources with fixed timestamps, so
the same sources give the same bytes and the same hash. ``python -m mlship.image.wheelhouse lock``
re-resolves the lock; ``python -m mlship.image.wheelhouse download`` fills the cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlship_runtime.manifest import sha256_file

from mlship.errors import DockerError
from mlship.resources import runtime_lock_file

if TYPE_CHECKING:
    from mlship.config.cuda import GpuRelease

PYTHON_VERSION = "3.11"
# manylinux tags a glibc 2.36 (bookworm) system accepts, newest first; onnxruntime publishes
# manylinux_2_27/2_28 wheels only, so the old manylinux2014 alias alone finds nothing.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)] + [
    "manylinux2014_x86_64", "manylinux1_x86_64"]
# Declared by onnxruntime but never imported to load a model and run it (checked by
# `import onnxruntime; InferenceSession(...).run` and by `mlship build --smoke`).
NOT_NEEDED = {"protobuf", "flatbuffers", "packaging", "sympy", "mpmath", "coloredlogs",
              "humanfriendly", "typing-extensions"}
_EPOCH_SECONDS = "1577836800"  # 2020-01-01: fixed wheel timestamps, a reproducible hash
# A trailing comment is allowed (pip strips it): the GPU lock notes each release's CUDA there.
_LOCK_LINE = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)\s+--hash=sha256:([0-9a-f]{64})\s*(?:#.*)?$")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str

    def line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


def read_lock(path: Path) -> list[Pin]:
    pins = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LOCK_LINE.match(line)
        if match is None:
            raise DockerError(f"{path}: not a hashed pin: {line!r}",
                              hint="regenerate it with `python -m mlship.image.wheelhouse lock`")
        pins.append(Pin(*match.groups()))
    return pins


def image_pins(gpu_release: GpuRelease | None = None) -> list[Pin]:
    """What the image installs: the CPU lock; or the GPU lock's shared pins with the one
    onnxruntime-gpu release chosen (the GPU lock pins several, one line each)."""
    from mlship.resources import gpu_lock_file

    if gpu_release is None:
        return read_lock(runtime_lock_file())
    pins = read_lock(gpu_lock_file())
    chosen = [pin for pin in pins if pin.name == "onnxruntime-gpu"
              and (pin.version, pin.sha256) == (gpu_release.version, gpu_release.sha256)]
    if not chosen:
        raise DockerError(f"{gpu_lock_file()}: no onnxruntime-gpu {gpu_release.version} pin",
                          hint="regenerate it with `python -m mlship.image.gpu_lock`")
    return [pin for pin in pins if pin.name != "onnxruntime-gpu"] + chosen


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("MLSHIP_WHEELHOUSE", Path(base) / "mlship" / "wheelhouse"))


def pip_target_args(python: str = PYTHON_VERSION) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def ensure_wheelhouse(lock: Path | None = None, *, progress: bool = True,
                      python: str = PYTHON_VERSION) -> tuple[Path, str]:
    """The cache directory holding every wheel of ``lock`` (downloading once), and its hash;
    ``python`` is the interpreter of the image the lock is for."""
    lock = lock or runtime_lock_file()
    lock_hash = sha256_file(lock)
    target = cache_root() / lock_hash
    pins = read_lock(lock)
    if target.is_dir() and _complete(target, pins):
        return target, lock_hash
    if progress:
        print(f"downloading the runtime wheelhouse ({len(pins)} wheels) into {target}",
              file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--require-hashes", "-r", str(lock), "-d", str(staging), *pip_target_args(python)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise DockerError(f"downloading the runtime wheels failed: {tail}",
                          hint="the wheelhouse needs a package index once; offline, copy a "
                               f"filled {cache_root()} from a connected machine")
    staging.chmod(0o755)
    # A rename is atomic: a build never sees a half-filled wheelhouse.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target, lock_hash


def _complete(directory: Path, pins: list[Pin]) -> bool:
    hashes = {sha256_file(wheel) for wheel in directory.glob("*.whl")}
    return all(pin.sha256 in hashes for pin in pins)


def runtime_wheel(out_dir: Path) -> Path:
    """Build the mlship-runtime wheel from its own ``pyproject.toml`` (hatchling, as
    ``pip wheel runtime/`` would) and the installed ``mlship_runtime`` sources, into ``out_dir``.

    Reproducible: hatchling fixes timestamps and modes, so identical sources give an identical
    wheel, hash and image layer."""
    import mlship_runtime

    from mlship.resources import runtime_dist_dir

    source = Path(mlship_runtime.__file__).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlship-runtime-") as scratch:
        tree = Path(scratch)
        shutil.copytree(source, tree / "mlship_runtime",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(runtime_dist_dir() / "pyproject.toml", tree / "pyproject.toml")
        # The PEP 517 hook in a child process: it builds the project in its working directory.
        build = subprocess.run(
            [sys.executable, "-c", "import sys; from hatchling.build import build_wheel; "
             "print(build_wheel(sys.argv[1]))", str(out_dir.resolve())],
            cwd=tree, capture_output=True, text=True, check=False, timeout=300,
            env={**os.environ, "SOURCE_DATE_EPOCH": _EPOCH_SECONDS})
        if build.returncode != 0:
            raise DockerError("building the mlship-runtime wheel failed: "
                              + (build.stderr.strip().splitlines() or ["no output"])[-1],
                              hint="pip install hatchling (a dependency of mlship)")
    return out_dir / build.stdout.strip().splitlines()[-1]


def runtime_requirements() -> list[str]:
    if sys.version_info < (3, 11):  # tomllib; `lock` is a developer command
        raise DockerError("regenerating the runtime lock needs Python >= 3.11")
    import tomllib

    pyproject = runtime_lock_file().parent / "pyproject.toml"
    return list(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"])


def generate_lock(out: Path) -> list[Pin]:
    """Resolve the runtime's dependencies for the image target and write a hashed lock."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "-d", scratch,
                   *pip_target_args(), *runtime_requirements()]
        subprocess.run(command, check=True)
        pins = []
        for wheel in sorted(Path(scratch).glob("*.whl")):
            name, version = wheel.name.split("-")[:2]
            normalized = re.sub(r"[-_.]+", "-", name).lower()
            if normalized not in NOT_NEEDED:
                pins.append(Pin(normalized, version, sha256_file(wheel)))
    header = ("# The mlship runtime's dependencies for the serving image: CPython "
              f"{PYTHON_VERSION}, glibc x86_64.\n# Generated by `python -m mlship.image.wheelhouse "
              "lock`; installed with --no-deps --require-hashes.\n# Left out as not needed "
              f"for inference: {', '.join(sorted(NOT_NEEDED))}.\n")
    out.write_text(header + "".join(pin.line() + "\n" for pin in pins), encoding="utf-8")
    return pins


def main(argv: list[str]) -> int:
    if argv[:1] == ["lock"]:
        out = Path(argv[1]) if len(argv) > 1 else runtime_lock_file()
        pins = generate_lock(out)
        print(f"wrote {out}: {len(pins)} pins", file=sys.stderr)
        return 0
    if argv[:1] == ["hash"]:  # the wheelhouse's cache key (CI caches it by this)
        print(sha256_file(runtime_lock_file()))
        return 0
    if argv[:1] == ["download"]:
        directory, lock_hash = ensure_wheelhouse()
        print(f"{directory} (lock {lock_hash[:12]})", file=sys.stderr)
        return 0
    print("usage: python -m mlship.image.wheelhouse lock [OUT] | download | hash (the GPU "
          "lock: python -m mlship.image.gpu_lock)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
