"""No silent CPU fallback: a GPU provider asked for by name that does not load is refused.

There is no GPU here, so the provider that cannot load is a real one: CUDA asked of this CPU-only
onnxruntime, which answers with a CPU session (exactly what onnxruntime-gpu does when libcudnn
or the driver is missing). The diagnosis of a GPU build is exercised on real ELF files: a copy
of onnxruntime's own provider bridge library with one dependency renamed to a CUDA library
that is not installed, and the same copy intact (every library loads, so the driver is next).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
import modelzoo
import onnxruntime as ort
import pytest
from mlship_runtime.providers import (
    EXIT_PROVIDER,
    ProviderMissing,
    check_provider,
    diagnose,
    needed_libraries,
    unloadable,
)
from mlship_runtime.session import ModelSession
from mlship_runtime.settings import RuntimeSettings

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
BRIDGE = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_shared.so"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return modelzoo.tiny_classifier(tmp_path_factory.mktemp("providers") / "tiny.onnx")


def test_cuda_that_does_not_load_is_refused_naming_why(model: Path) -> None:
    with pytest.raises(ProviderMissing) as refused:
        ModelSession(RuntimeSettings(model=str(model), provider="cuda"))
    message = str(refused.value)
    assert message.startswith(f"provider cuda: {CUDA} did not load, onnxruntime would run the "
                              f"model on {CPU}: ")
    assert f"this onnxruntime {ort.__version__} build has no {CUDA}" in message
    assert "onnxruntime-gpu" in message
    assert "provider_fallback: allow" in message


def test_fallback_allowed_serves_on_cpu_with_one_warning(
        model: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mlship_runtime"):
        session = ModelSession(RuntimeSettings(model=str(model), provider="cuda",
                                               provider_fallback="allow"))
    assert session.provider == "cpu"
    assert session.provider_outcome.requested_name == CUDA
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "serving on CPUExecutionProvider because provider_fallback is allow" in \
        warnings[0].getMessage()


@pytest.mark.parametrize("provider", ["auto", "cpu"])
def test_cpu_only_machine_says_nothing_about_cuda_unless_asked(
        model: Path, provider: str, caplog: pytest.LogCaptureFixture) -> None:
    """issue 18: serve and batch on a CPU-only build never mention CUDA or TensorRT."""
    with caplog.at_level(logging.DEBUG, logger="mlship_runtime"):
        session = ModelSession(RuntimeSettings(model=str(model), provider=provider))
    assert session.provider == "cpu"
    assert not [r for r in caplog.records if any(
        word in r.getMessage() for word in ("CUDA", "TensorRT", "Tensorrt", "cuda"))]


def test_auto_that_gets_less_than_the_build_offers_says_so_once_at_info(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="mlship_runtime"):
        outcome = check_provider("auto", "cuda", "cpu", [CUDA, CPU], "deny")
    assert outcome.provider == "cpu"
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "provider auto: CUDAExecutionProvider is in this onnxruntime build but did not load" \
        in caplog.records[0].getMessage()


def test_tensorrt_that_fell_back_to_cuda_is_refused_too() -> None:
    with pytest.raises(ProviderMissing, match=f"provider tensorrt: {TRT} did not load, "
                                              f"onnxruntime would run the model on {CUDA}"):
        check_provider("tensorrt", "tensorrt", "cuda", [TRT, CUDA, CPU], "deny")


def test_needed_libraries_reads_the_elf_dynamic_section() -> None:
    needed = needed_libraries(BRIDGE)
    assert "libc.so.6" in needed
    readelf = shutil.which("readelf")
    if readelf is not None:  # binutils as the oracle, where it is installed
        import subprocess

        listing = subprocess.run([readelf, "-d", str(BRIDGE)], capture_output=True,
                                 text=True, check=True, timeout=30).stdout
        assert needed == [line.split("[", 1)[1].rstrip("]") for line in listing.splitlines()
                          if "(NEEDED)" in line]
    assert needed_libraries(Path(__file__)) == []  # not an ELF file


def _provider_library(folder: Path, rename: tuple[bytes, bytes] | None) -> Path:
    """A real shared library standing in for libonnxruntime_providers_cuda.so."""
    folder.mkdir()
    data = BRIDGE.read_bytes()
    if rename is not None:
        old, new = rename
        assert len(old) == len(new)
        assert data.count(old + b"\0") == 1
        data = data.replace(old + b"\0", new + b"\0")
    (folder / "libonnxruntime_providers_cuda.so").write_bytes(data)
    return folder


def test_diagnosis_names_the_cuda_library_that_cannot_be_loaded(tmp_path: Path) -> None:
    needed = needed_libraries(BRIDGE)
    victim = next(name for name in needed if name.startswith("libgcc_s.so"))
    # Same length, so the string table stays valid: libgcc_s.so.1 -> libcudnn.so.9
    folder = _provider_library(tmp_path / "gpu", (victim.encode(), b"libcudnn.so.9"))
    missing = unloadable(needed_libraries(folder / "libonnxruntime_providers_cuda.so"))
    assert [name for name, _ in missing] == ["libcudnn.so.9"]
    reason = diagnose("cuda", [CUDA, CPU], ort_dir=folder)
    assert reason.startswith("libonnxruntime_providers_cuda.so needs libcudnn.so.9, which "
                             "cannot be loaded (libcudnn.so.9: cannot open shared object file")
    assert "LD_LIBRARY_PATH" in reason


def test_diagnosis_with_every_library_there_looks_at_the_driver(tmp_path: Path) -> None:
    folder = _provider_library(tmp_path / "gpu", None)
    reason = diagnose("cuda", [CUDA, CPU], ort_dir=folder)
    if unloadable(["libcuda.so.1"]):  # this machine: no NVIDIA driver
        assert reason.startswith("no NVIDIA driver: libcuda.so.1 cannot be loaded")
    else:
        assert reason


def test_runtime_refuses_readiness_and_exits_14(start_server, model: Path) -> None:
    server = start_server(model, "--provider", "cuda")
    assert server.proc.wait(30) == EXIT_PROVIDER
    errors = [line for line in server.log().splitlines() if "ERROR" in line]
    assert len(errors) == 1, server.log()
    assert f"cannot serve model {model}: provider cuda: {CUDA} did not load" in errors[0]


def test_runtime_with_fallback_allowed_is_ready_and_says_cpu(start_server, model: Path) -> None:
    server = start_server(model, "--provider", "cuda", "--provider-fallback", "allow")
    server.wait_ready()
    warnings = [line for line in server.log().splitlines() if "WARNING" in line]
    assert len(warnings) == 1, server.log()
    assert "provider_fallback is allow" in warnings[0]
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert (f'mlship_execution_provider{{model="tiny",provider="{CPU}",requested="{CUDA}"}} 1'
            in metrics.splitlines())
    assert server.stop() == 0


def test_runtime_on_auto_never_mentions_gpu_providers(start_server, model: Path) -> None:
    """issue 18, as a process: a CPU-only machine's log says nothing of CUDA or TensorRT."""
    server = start_server(model, "--provider", "auto")
    server.wait_ready()
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert f'mlship_execution_provider{{model="tiny",provider="{CPU}",requested="auto"}} 1' \
        in metrics.splitlines()
    assert server.stop() == 0
    log = server.log()
    assert not [word for word in ("CUDA", "TensorRT", "Tensorrt") if word in log], log
