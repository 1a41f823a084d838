"""Execution providers: which one to ask onnxruntime for, and whether it is the one it gave.

onnxruntime does not fail when a GPU provider cannot start: it logs a line on stderr and runs
the model on CPU, several times slower, while the server stays healthy. So the provider a
session actually uses is compared with the one asked for; a GPU provider that did not load is
refused (``ProviderMissing``, exit 14) unless ``provider_fallback`` is ``allow``, and the
reason is named: a CPU-only onnxruntime build, a CUDA/cuDNN/TensorRT library of the provider's
that cannot be loaded (read from the provider library's own ELF ``DT_NEEDED`` entries, so it
holds for any onnxruntime-gpu release), no NVIDIA driver, or a driver older than the CUDA
runtime. Nothing here runs unless a provider failed, and ``auto`` never warns: CPU is what it
means on a CPU-only machine.
"""

from __future__ import annotations

import ctypes
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mlship_runtime")

ORT_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "cpu": "CPUExecutionProvider"}
_PREFERENCE = ("tensorrt", "cuda", "cpu")
EXIT_PROVIDER = 14
# The provider libraries onnxruntime-gpu ships beside its core, by provider.
_LIBRARY = {"cuda": "libonnxruntime_providers_cuda.so",
            "tensorrt": "libonnxruntime_providers_tensorrt.so"}
# Libraries of the C runtime and the toolchain: always there, never the reason.
_SYSTEM = ("libc.so", "libm.so", "libdl.so", "librt.so", "libpthread.so", "libstdc++.so",
           "libgcc_s.so", "ld-linux", "libonnxruntime")
_DRIVER = "libcuda.so.1"
_NO_DEVICE, _INSUFFICIENT_DRIVER, _SYSTEM_MISMATCH = 100, 35, 803  # cudaError_t values


class ProviderMissing(Exception):
    """The GPU provider asked for did not load and falling back to CPU is not allowed."""


@dataclass(frozen=True)
class Outcome:
    """What was asked for, what onnxruntime uses, and why they differ (None when they do not)."""

    requested: str  # auto, cpu, cuda or tensorrt
    provider: str  # cpu, cuda or tensorrt: the session's first provider
    reason: str | None = None

    @property
    def requested_name(self) -> str:
        return ORT_PROVIDERS.get(self.requested, self.requested)


def select_provider(requested: str, available: Sequence[str]) -> str:
    """The provider to ask onnxruntime for: ``auto`` is the best one this build has; anything
    else is asked for as it is, so a GPU provider that cannot start is seen to fail."""
    if requested != "auto":
        return requested
    return next((choice for choice in _PREFERENCE if ORT_PROVIDERS[choice] in available), "cpu")


def provider_chain(choice: str) -> list[str]:
    """ORT providers in priority order; CPU always last so unsupported nodes still run."""
    return [ORT_PROVIDERS[name] for name in _PREFERENCE[_PREFERENCE.index(choice):]]


def short_name(ort_name: str) -> str:
    return next((key for key, value in ORT_PROVIDERS.items() if value == ort_name), "cpu")


def check_provider(requested: str, choice: str, used: str, available: Sequence[str],
                   fallback: str, *, ort_dir: Path | None = None,
                   version: str = "") -> Outcome:
    """Compare the provider the session uses with the one asked for. A GPU provider asked for
    by name that did not load raises ``ProviderMissing`` naming why, unless ``fallback`` is
    ``allow`` (then one warning); ``auto`` that got less than the build offers says so once,
    at info."""
    if used == choice:
        return Outcome(requested, used)
    reason = diagnose(choice, available, ort_dir=ort_dir, version=version)
    outcome = Outcome(requested, used, reason)
    if requested == "auto":
        log.info("provider auto: %s is in this onnxruntime build but did not load (%s); "
                 "using %s", ORT_PROVIDERS[choice], reason, ORT_PROVIDERS[used])
        return outcome
    message = (f"provider {requested}: {ORT_PROVIDERS[choice]} did not load, onnxruntime "
               f"would run the model on {ORT_PROVIDERS[used]}: {reason}")
    if fallback != "allow":
        raise ProviderMissing(f"{message}; refusing to serve (set provider_fallback: allow "
                              "to serve on CPU anyway)")
    log.warning("%s; serving on %s because provider_fallback is allow", message,
                ORT_PROVIDERS[used])
    return outcome


def diagnose(choice: str, available: Sequence[str], *, ort_dir: Path | None = None,
             version: str = "") -> str:
    """Why ``choice`` did not load, in one clause naming the library or the driver."""
    name = ORT_PROVIDERS[choice]
    if name not in available:
        build = f"onnxruntime {version}".strip()
        return (f"this {build} build has no {name} (available: {', '.join(available)}); "
                "the image needs onnxruntime-gpu (gpu.enabled: true in mlship.yaml installs it)")
    library = (ort_dir or _ort_capi()) / _LIBRARY.get(choice, "")
    missing = unloadable(needed_libraries(library)) if library.is_file() else []
    if missing:
        return (f"{library.name} needs {', '.join(lib for lib, _ in missing)}, which cannot be "
                f"loaded ({missing[0][1]}); install the CUDA/cuDNN"
                f"{'/TensorRT' if choice == 'tensorrt' else ''} majors this onnxruntime-gpu "
                "wants in the base image, or put them on LD_LIBRARY_PATH")
    return driver_problem() or (
        f"{library.name} and its libraries load, but onnxruntime could not create the "
        "provider; its own ERROR line above says why")


def unloadable(libraries: Sequence[str]) -> list[tuple[str, str]]:
    """The libraries of ``libraries`` the dynamic loader cannot load, each with its error."""
    missing = []
    for library in libraries:
        if library.startswith(_SYSTEM):
            continue
        try:
            ctypes.CDLL(library)
        except OSError as exc:
            missing.append((library, str(exc)))
    return missing


def driver_problem() -> str | None:
    """No driver, a driver older than the CUDA runtime, or no device; None when CUDA works."""
    try:
        driver = ctypes.CDLL(_DRIVER)
    except OSError:
        return (f"no NVIDIA driver: {_DRIVER} cannot be loaded (a node without the driver, or a "
                "container started without the NVIDIA container runtime / GPU resource)")
    version = ctypes.c_int(0)
    if driver.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return "the NVIDIA driver does not answer cuDriverGetVersion"
    try:
        runtime = ctypes.CDLL(_cudart())
    except OSError:
        return None
    return _device_problem(runtime, version.value)


def _device_problem(runtime: ctypes.CDLL, driver_version: int) -> str | None:
    wanted, count = ctypes.c_int(0), ctypes.c_int(0)
    runtime.cudaRuntimeGetVersion(ctypes.byref(wanted))
    status = runtime.cudaGetDeviceCount(ctypes.byref(count))
    if status == _INSUFFICIENT_DRIVER:
        return (f"driver mismatch: the NVIDIA driver supports CUDA {_cuda(driver_version)}, "
                f"the CUDA runtime is {_cuda(wanted.value)}; upgrade the node's driver or use "
                "an onnxruntime-gpu built for an older CUDA (gpu.onnxruntime_gpu_version)")
    if status == _SYSTEM_MISMATCH:
        return ("driver mismatch: the container's libcuda.so.1 and the node's NVIDIA kernel "
                "module differ in version (cudaErrorSystemDriverMismatch)")
    if status == _NO_DEVICE or (status == 0 and count.value == 0):
        return "no CUDA device is visible to this container (check the GPU resource request)"
    return f"cudaGetDeviceCount failed with CUDA error {status}" if status else None


def needed_libraries(path: Path) -> list[str]:
    """The ``DT_NEEDED`` entries of a 64-bit little-endian ELF shared library, in order; [] for
    anything else. Reads only the headers and the dynamic section, never the whole file."""
    with path.open("rb") as elf:
        header = elf.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return []
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        elf.seek(phoff)
        table = elf.read(phentsize * phnum)
        loads, dynamic = [], None
        for index in range(phnum):
            kind, _, offset, vaddr, _, filesz = struct.unpack_from("<IIQQQQ", table,
                                                                     index * phentsize)
            if kind == 1:  # PT_LOAD: maps file offsets to addresses
                loads.append((vaddr, offset, filesz))
            elif kind == 2:  # PT_DYNAMIC
                dynamic = (offset, filesz)
        if dynamic is None:
            return []
        elf.seek(dynamic[0])
        entries = elf.read(dynamic[1])
        needed, strtab, strsz = [], None, 0
        for at in range(0, len(entries) - 15, 16):
            tag, value = struct.unpack_from("<qQ", entries, at)
            if tag == 0:
                break
            if tag == 1:
                needed.append(value)
            elif tag == 5:
                strtab = value
            elif tag == 10:
                strsz = value
        start = next((offset + strtab - vaddr for vaddr, offset, size in loads
                      if strtab is not None and vaddr <= strtab < vaddr + size), None)
        if start is None:
            return []
        elf.seek(start)
        strings = elf.read(strsz)
    return [strings[at:strings.index(b"\0", at)].decode(errors="replace") for at in needed
            if at < len(strings)]


def _ort_capi() -> Path:
    import onnxruntime

    return Path(onnxruntime.__file__).parent / "capi"


def _cudart() -> str:
    """The CUDA runtime the provider library links (libcudart.so.12 for onnxruntime-gpu 1.26)."""
    library = _ort_capi() / _LIBRARY["cuda"]
    names = needed_libraries(library) if library.is_file() else []
    return next((name for name in names if name.startswith("libcudart.so")), "libcudart.so.12")


def _cuda(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}" if version else "unknown"
