"""Which CUDA/cuDNN base images an onnxruntime-gpu release can run on, from its own metadata.

onnxruntime-gpu links against one CUDA major and one cuDNN major. A CUDA minor mismatch is
fine (NVIDIA minor-version compatibility), a major mismatch fails only at model load, on the
GPU node, as "Failed to create CUDAExecutionProvider". Checking at render time moves that
failure to the laptop.

The majors are not kept by hand: each wheel says what it links against in the ``Requires-Dist``
of its ``cuda`` and ``cudnn`` extras (1.26.0: ``nvidia-cuda-runtime-cu12~=12.0``,
``nvidia-cudnn-cu12~=9.0``; 1.31.1: ``nvidia-cuda-runtime~=13.0``, ``nvidia-cudnn-cu13~=9.0``).
``python -m mlship.image.gpu_lock`` reads them from every release it pins into
``runtime/requirements-gpu.lock`` and writes them beside the pin; this module reads the lock,
so the check and the installed wheel cannot disagree. Kept by hand: the default base image of
each CUDA major, and the drivers each CUDA release needs (below).

The CUDA image runs the base's distribution ``python3``; the GPU lock is for CPython 3.12, the
python3 of Ubuntu 24.04, so the base must be an Ubuntu 24.04 ``nvidia/cuda`` image.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

GPU_PYTHON = "3.12"
GPU_UBUNTU = "24.04"
UBUNTU_PYTHON = {"20.04": "3.8", "22.04": "3.10", "24.04": "3.12"}
# The base rendered when the config names none: a cuDNN 9 runtime image of each CUDA major on
# Ubuntu 24.04, at the lowest CUDA minor that has one, so the oldest drivers qualify.
_DEFAULT_BASES: dict[int, str] = {
    12: "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04",
    13: "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04",
}

# nvidia/cuda tags: 12.6.3-cudnn-runtime-ubuntu24.04, 11.8.0-cudnn8-runtime-ubuntu22.04.
_CUDA_TAG = re.compile(r"^(?P<cuda>\d+)\.(?P<minor>\d+)(\.\d+)?-cudnn(?P<cudnn>\d*)-"
                       r"(runtime|devel)-(?P<os>[a-z]+)(?P<os_version>[\d.]*)$")
_GPU_PIN = re.compile(r"^onnxruntime-gpu==(?P<version>\S+)\s+--hash=sha256:(?P<sha>[0-9a-f]{64})"
                      r"\s+#\s*cuda (?P<cuda>\d+), cudnn (?P<cudnn>\d+)\b")
_REQUIRES = re.compile(r"^Requires-Dist:\s*(?P<name>[A-Za-z0-9._-]+)\s*\(?(?P<spec>[^;)]*)\)?"
                       r"\s*(?:;\s*(?P<marker>.*))?$", re.MULTILINE)


@dataclass(frozen=True)
class GpuRelease:
    """One onnxruntime-gpu release of the GPU lock and the CUDA/cuDNN majors it links."""

    version: str
    sha256: str
    cuda_major: int
    cudnn_major: int

    def describe(self) -> str:
        return f"CUDA {self.cuda_major}.x + cuDNN {self.cudnn_major}"


@dataclass(frozen=True)
class CudaMajors:
    cuda: int
    cudnn: int
    evidence: tuple[str, ...]  # the Requires-Dist entries they were read from


@dataclass(frozen=True)
class CudaStack:
    cuda_major: int
    cuda_minor: int
    cudnn_major: int
    os: str = "ubuntu"  # ubuntu, ubi, rockylinux ...
    os_version: str = ""


def cuda_majors(metadata: str) -> CudaMajors | None:
    """The CUDA and cuDNN majors a wheel's METADATA requires under its cuda/cudnn extras: the
    ``-cuNN`` suffix of the distribution name, else the major of its version specifier."""
    found: dict[str, tuple[int, str]] = {}
    for match in _REQUIRES.finditer(metadata):
        extra = re.search(r"extra\s*==\s*[\"']([^\"']+)", match["marker"] or "")
        name = re.sub(r"[-_.]+", "-", match["name"]).lower()
        if extra is None or extra[1] not in ("cuda", "cudnn"):
            continue
        suffix = re.search(r"-cu(\d+)$", name)
        spec = re.search(r"(\d+)", match["spec"] or "")
        entry = f"{match['name']}{(match['spec'] or '').strip()}"
        if name.startswith("nvidia-cuda-runtime") and (suffix or spec):
            found["cuda"] = (int((suffix or spec)[1]), entry)  # type: ignore[index]
        elif name.startswith("nvidia-cudnn") and spec:
            found["cudnn"] = (int(spec[1]), entry)
    if "cuda" not in found or "cudnn" not in found:
        return None
    return CudaMajors(found["cuda"][0], found["cudnn"][0], (found["cuda"][1], found["cudnn"][1]))


@functools.cache
def gpu_releases() -> tuple[GpuRelease, ...]:
    """The onnxruntime-gpu releases the committed GPU lock pins, oldest first."""
    from mlship.resources import gpu_lock_file

    releases = []
    for line in gpu_lock_file().read_text(encoding="utf-8").splitlines():
        match = _GPU_PIN.match(line.strip())
        if match:
            releases.append(GpuRelease(match["version"], match["sha"], int(match["cuda"]),
                                       int(match["cudnn"])))
    return tuple(sorted(releases, key=lambda r: _numeric(r.version)))


def _numeric(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def release_for(version: str) -> GpuRelease:
    """The locked release ``version`` names (``1.26`` is the newest 1.26.x); ValueError else."""
    releases = gpu_releases()
    exact = [r for r in releases if r.version == version]
    minor = [r for r in releases if version.count(".") == 1
             and r.version.startswith(f"{version}.")]
    if exact or minor:
        return (exact or minor)[-1]
    known = ", ".join(r.version for r in releases)
    raise ValueError(f"not a release mlship's GPU lock pins (runtime/requirements-gpu.lock: "
                     f"{known}); pick one of them, or add it with `python -m "
                     f"mlship.image.gpu_lock`")


def cuda_stack_of(image: str) -> CudaStack | None:
    """The CUDA/cuDNN majors an ``nvidia/cuda`` image carries; None for any other image."""
    repository, _, tag = image.partition("@")[0].rpartition(":")
    if not repository.endswith("nvidia/cuda"):
        return None
    match = _CUDA_TAG.match(tag)
    if not match:
        return None
    cuda, minor = int(match["cuda"]), int(match["minor"])
    # NVIDIA dropped the number from "cudnn" when cuDNN 9 became the one shipped (CUDA 12.4).
    cudnn = int(match["cudnn"]) if match["cudnn"] else (9 if (cuda, minor) >= (12, 4) else 8)
    return CudaStack(cuda_major=cuda, cuda_minor=minor, cudnn_major=cudnn, os=match["os"],
                     os_version=match["os_version"])


def default_base_image(ort_version: str) -> str | None:
    try:
        return _DEFAULT_BASES.get(release_for(ort_version).cuda_major)
    except ValueError:
        return None


def check_compatible(release: GpuRelease, stack: CudaStack) -> str | None:
    """None when the image fits the onnxruntime-gpu release, else what would fit."""
    suggestion = _DEFAULT_BASES.get(release.cuda_major)
    example = f" (e.g. {suggestion})" if suggestion else ""
    if (stack.cuda_major, stack.cudnn_major) != (release.cuda_major, release.cudnn_major):
        return (f"onnxruntime-gpu {release.version} is built for {release.describe()} (its "
                f"wheel's metadata), but the image has CUDA {stack.cuda_major}."
                f"{stack.cuda_minor} + cuDNN {stack.cudnn_major}{example}")
    if stack.os != "ubuntu":
        return (f"the CUDA image installs python3 with apt-get: use an Ubuntu {GPU_UBUNTU} "
                f"nvidia/cuda image{example}")
    if stack.os_version != GPU_UBUNTU:
        python = UBUNTU_PYTHON.get(stack.os_version, "another Python")
        return (f"the GPU lock installs CPython {GPU_PYTHON} wheels, the python3 of Ubuntu "
                f"{GPU_UBUNTU}; Ubuntu {stack.os_version} ships {python}{example}")
    return None


# Lowest Linux x86_64 driver of each CUDA toolkit minor release (its GA build), from the
# "CUDA Toolkit and Corresponding Driver Versions" table of the CUDA Toolkit release notes,
# https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html#id5. The nvidia/cuda
# images declare NVIDIA_REQUIRE_CUDA=cuda>=MAJOR.MINOR, which the NVIDIA container runtime
# checks against the CUDA version of the node's driver: an older driver fails the pod at start
# ("unsatisfied condition: cuda>=12.4"), so deploy checks the same thing before applying.
_MIN_DRIVER: dict[tuple[int, int], tuple[int, ...]] = {
    (11, 0): (450, 51, 5), (11, 1): (455, 23), (11, 2): (460, 27, 3), (11, 3): (465, 19, 1),
    (11, 4): (470, 42, 1), (11, 5): (495, 29, 5), (11, 6): (510, 39, 1), (11, 7): (515, 43, 4),
    (11, 8): (520, 61, 5),
    (12, 0): (525, 60, 13), (12, 1): (530, 30, 2), (12, 2): (535, 54, 3), (12, 3): (545, 23, 6),
    (12, 4): (550, 54, 14), (12, 5): (555, 42, 2), (12, 6): (560, 28, 3), (12, 8): (570, 26),
    (12, 9): (575, 51, 3),
    (13, 0): (580, 65, 6),
}


def parse_driver_version(text: str) -> tuple[int, ...] | None:
    """'535.104.05' -> (535, 104, 5); None for anything else."""
    parts = text.strip().split(".")
    if not 2 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
        return None
    return tuple(int(part) for part in parts)


def min_driver(cuda_major: int, cuda_minor: int) -> tuple[int, ...] | None:
    """The lowest driver that runs CUDA ``major.minor`` images; None for a release not listed."""
    return _MIN_DRIVER.get((cuda_major, cuda_minor))


def cuda_of_driver(driver: tuple[int, ...]) -> tuple[int, int] | None:
    """The newest CUDA (major, minor) in the table that ``driver`` supports."""
    supported = [cuda for cuda, needed in _MIN_DRIVER.items() if driver >= needed]
    return max(supported) if supported else None


def format_driver(driver: tuple[int, ...]) -> str:
    """(535, 104, 5) -> '535.104.05' (NVIDIA writes the third part with two digits)."""
    head = ".".join(str(part) for part in driver[:2])
    return f"{head}.{driver[2]:02d}" if len(driver) > 2 else head
