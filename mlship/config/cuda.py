"""Which CUDA/cuDNN base images an onnxruntime-gpu release can run on.

onnxruntime-gpu links against one CUDA major and one cuDNN major. A CUDA minor mismatch is
fine (NVIDIA minor-version compatibility), a major mismatch fails only at model load, on the
GPU node, as "Failed to create CUDAExecutionProvider". Checking at render time moves that
failure to the laptop.

Source: the requirements table of the CUDA Execution Provider,
https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#requirements
("ONNX Runtime built with cuDNN 8.x is not compatible with cuDNN 9.x, and vice versa";
"Starting with version 1.19, CUDA 12.x becomes the default version ... in PyPI").
The PyPI wheel of 1.18.x is built for CUDA 11.8 + cuDNN 8; 1.18.1's CUDA 12 build (separate
feed) needs cuDNN 9 and 1.18.0's cuDNN 8, so 1.18 accepts both CUDA 12 pairs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (min onnxruntime-gpu minor, max minor or None) -> accepted (CUDA major, cuDNN major) pairs,
# most preferred first.
_COMPATIBILITY: tuple[tuple[tuple[int, int], tuple[int, int] | None, tuple[tuple[int, int], ...]],
                      ...] = (
    ((1, 15), (1, 17), ((11, 8),)),
    ((1, 18), (1, 18), ((11, 8), (12, 9), (12, 8))),
    ((1, 19), (1, 19), ((12, 9), (11, 8))),
    ((1, 20), None, ((12, 9),)),
)

# The base image rendered when the config names none: the newest CUDA 12 runtime image that
# carries cuDNN 9 and a distribution python3 (Ubuntu 22.04 ships 3.10).
_DEFAULT_BASES: dict[tuple[int, int], str] = {
    (12, 9): "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
    (12, 8): "nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04",
    (11, 8): "nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04",
}

# nvidia/cuda tags: 12.4.1-cudnn-runtime-ubuntu22.04, 11.8.0-cudnn8-runtime-ubuntu22.04.
_CUDA_TAG = re.compile(
    r"^(?P<cuda>\d+)\.(?P<minor>\d+)(\.\d+)?-cudnn(?P<cudnn>\d*)-(runtime|devel)-")
_VERSION = re.compile(r"^(\d+)\.(\d+)")


@dataclass(frozen=True)
class CudaStack:
    cuda_major: int
    cuda_minor: int
    cudnn_major: int


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
    return CudaStack(cuda_major=cuda, cuda_minor=minor, cudnn_major=cudnn)


def compatible_pairs(ort_version: str) -> tuple[tuple[int, int], ...]:
    """(CUDA major, cuDNN major) pairs the given onnxruntime-gpu version runs with."""
    match = _VERSION.match(ort_version)
    if not match:
        raise ValueError(ort_version)
    version = (int(match[1]), int(match[2]))
    for low, high, pairs in _COMPATIBILITY:
        if version >= low and (high is None or version <= high):
            return pairs
    return ()


def default_base_image(ort_version: str) -> str | None:
    pairs = compatible_pairs(ort_version)
    return _DEFAULT_BASES.get(pairs[0]) if pairs else None


def describe_pairs(pairs: tuple[tuple[int, int], ...]) -> str:
    return " or ".join(f"CUDA {cuda}.x + cuDNN {cudnn}" for cuda, cudnn in pairs)


def check_compatible(ort_version: str, stack: CudaStack) -> str | None:
    """None when the image fits the onnxruntime-gpu version, else what would fit."""
    pairs = compatible_pairs(ort_version)
    if not pairs:
        return f"onnxruntime-gpu {ort_version} is older than 1.15 and not supported"
    if (stack.cuda_major, stack.cudnn_major) in pairs:
        return None
    suggestion = _DEFAULT_BASES.get(pairs[0])
    return (f"onnxruntime-gpu {ort_version} needs {describe_pairs(pairs)}, but the image has "
            f"CUDA {stack.cuda_major}.{stack.cuda_minor} + cuDNN {stack.cudnn_major}"
            + (f" (e.g. {suggestion})" if suggestion else ""))


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
