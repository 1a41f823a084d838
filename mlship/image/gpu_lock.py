"""``runtime/requirements-gpu.lock``: the CUDA image's hashed pins, written from the index.

The CUDA image runs the distribution ``python3`` of an Ubuntu 24.04 ``nvidia/cuda`` base
(CPython 3.12), so its lock targets cp312: the CPU lock's other pins at the same versions
(``pip download`` for cp312), and one hashed ``onnxruntime-gpu`` line per supported release
(``gpu.onnxruntime_gpu_version`` picks one; the build installs it with the shared pins). Each
release's CUDA and cuDNN majors are read from that wheel's own metadata, the Requires-Dist
of its ``cuda`` and ``cudnn`` extras (``nvidia-cuda-runtime-cu12~=12.0``,
``nvidia-cudnn-cu13~=9.0``), and written beside its pin, where render checks the base image
against them. The wheel's sha256 is the one the index publishes, which
``pip --require-hashes`` verifies at download.
METADATA is read with HTTP range requests (the end of the zip, then the one member), as pip's
lazy-wheel does: a release is ~250 MB, its metadata a few kB.

    python -m mlship.image.gpu_lock [VERSION ...]   # default: the releases the lock pins now
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urljoin

from mlship_runtime.manifest import sha256_file

from mlship.config import cuda
from mlship.errors import DockerError
from mlship.image.wheelhouse import NOT_NEEDED, Pin, pip_target_args, read_lock

PACKAGE = "onnxruntime-gpu"
INDEX_JSON = "https://pypi.org/pypi/onnxruntime-gpu/json"
_BLOCK = 1 << 16
_WHEEL = re.compile(r"^onnxruntime_gpu-(?P<version>[^-]+)-cp312-cp312-"
                    r"(?P<platform>manylinux[^-]*x86_64)\.whl$")


class _RemoteFile(io.RawIOBase):
    """A read-only, seekable view of a URL, one HTTP range request per read."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.position = 0
        self.blocks: dict[int, bytes] = {}
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                    timeout=60) as response:
            if response.headers.get("Accept-Ranges") != "bytes":
                raise DockerError(f"{url}: the index does not serve byte ranges")
            self.size = int(response.headers["Content-Length"])

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read(self, size: int = -1) -> bytes:
        end = self.size if size < 0 else min(self.size, self.position + size)
        data = b"".join(self._block(index)[max(0, self.position - index * _BLOCK):
                                           end - index * _BLOCK]
                        for index in range(self.position // _BLOCK, -(-end // _BLOCK)))
        self.position += len(data)
        return data

    def _block(self, index: int) -> bytes:
        """One aligned block, fetched once: zipfile reads the directory in small pieces."""
        if index not in self.blocks:
            first, last = index * _BLOCK, min(self.size, (index + 1) * _BLOCK) - 1
            request = urllib.request.Request(self.url, headers={"Range": f"bytes={first}-{last}"})
            with urllib.request.urlopen(request, timeout=120) as response:
                if response.status != 206:
                    raise DockerError(f"{self.url}: the index ignored a byte range request")
                self.blocks[index] = response.read()
        return self.blocks[index]


def wheel_metadata(source: str | Path) -> str:
    """The METADATA of a wheel: a local file, or a URL read with range requests."""
    opened = zipfile.ZipFile(source if isinstance(source, Path) else _RemoteFile(source))
    with opened as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name).decode("utf-8")


def release_wheel(index: dict, version: str) -> tuple[str, str, str]:
    """(file name, URL, sha256) of the cp312 manylinux x86_64 wheel of ``version``."""
    for entry in index["releases"].get(version) or []:
        if _WHEEL.match(entry["filename"]) and not entry.get("yanked"):
            return entry["filename"], urljoin(INDEX_JSON, entry["url"]), \
                entry["digests"]["sha256"]
    raise DockerError(f"{PACKAGE} {version}: no cp312 manylinux x86_64 wheel on the index",
                      hint=f"released versions: {', '.join(sorted(index['releases']))}")


def gpu_line(version: str, sha256: str, metadata: str) -> str:
    """The lock line of one release, its CUDA/cuDNN majors derived from its METADATA."""
    stack = cuda.cuda_majors(metadata)
    if stack is None:
        raise DockerError(f"{PACKAGE} {version}: its metadata names no CUDA runtime "
                          "(no nvidia-cuda-runtime requirement under the cuda extra)")
    return (f"{PACKAGE}=={version} --hash=sha256:{sha256}  # cuda {stack.cuda}, cudnn "
            f"{stack.cudnn}, from Requires-Dist: {', '.join(stack.evidence)}")


def _shared_pins(scratch: Path, requirements: list[str]) -> list[str]:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d",
               str(scratch), *pip_target_args(cuda.GPU_PYTHON), *requirements]
    subprocess.run(command, check=True)
    lines = []
    for wheel in sorted(scratch.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        normalized = re.sub(r"[-_.]+", "-", name).lower()
        if normalized not in NOT_NEEDED:
            lines.append(Pin(normalized, version, sha256_file(wheel)).line())
    return lines


def generate_gpu_lock(out: Path, versions: list[str]) -> list[str]:
    """Write the GPU lock for ``versions`` of onnxruntime-gpu; returns its lines. The other
    pins are the CPU lock's versions, for cp312: both images run the same runtime code."""
    from mlship.resources import runtime_lock_file

    with urllib.request.urlopen(INDEX_JSON, timeout=60) as response:
        index = json.loads(response.read())
    with tempfile.TemporaryDirectory() as scratch:
        shared = _shared_pins(Path(scratch), [f"{pin.name}=={pin.version}" for pin in
                                              read_lock(runtime_lock_file())
                                              if pin.name != "onnxruntime"])
    releases = []
    for version in versions:
        _, url, sha256 = release_wheel(index, version)
        releases.append(gpu_line(version, sha256, wheel_metadata(url)))
        print(f"{releases[-1][:60]}...", file=sys.stderr)
    header = (f"# The mlship runtime's dependencies for the CUDA image: CPython {cuda.GPU_PYTHON} "
              "(the python3 of Ubuntu 24.04 nvidia/cuda bases), glibc x86_64.\n"
              "# Generated by `python -m mlship.image.gpu_lock`; installed with "
              "--no-deps --require-hashes.\n# One onnxruntime-gpu line per supported release: "
              "gpu.onnxruntime_gpu_version picks one, installed with the other pins.\n# Its "
              "CUDA and cuDNN majors come from the wheel's own metadata (Requires-Dist of the "
              "cuda and cudnn extras).\n")
    lines = shared + releases
    out.write_text(header + "".join(line + "\n" for line in lines), encoding="utf-8")
    return lines


def main(argv: list[str]) -> int:
    from mlship.resources import gpu_lock_file

    versions = argv or [release.version for release in cuda.gpu_releases()]
    lines = generate_gpu_lock(gpu_lock_file(), versions)
    print(f"wrote {gpu_lock_file()}: {len(lines)} pins", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
