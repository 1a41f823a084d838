"""GPU renders: the CUDA base follows the CUDA major the onnxruntime-gpu wheel's metadata names
(1.26: CUDA 12, 1.31: CUDA 13), and the image installs the GPU lock's hashed onnxruntime-gpu,
never the CPU lock's onnxruntime."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from mlship_testsupport import find_tool

from mlship.config.load import validate_config
from mlship.image.build import lock_name
from mlship.image.wheelhouse import image_pins
from mlship.render.bundle import render


def _gpu(version: str, **image: str):
    config = validate_config({"name": "resnet", "model": {"source": "iris.onnx"},
                              "runtime": {"provider": "cuda"},
                              "gpu": {"enabled": True, "onnxruntime_gpu_version": version},
                              "image": image})
    return config, render(config, None)


@pytest.mark.parametrize(("version", "base", "cuda"), [
    ("1.26.0", "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04", 12),
    ("1.31.1", "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04", 13),
])
def test_the_base_follows_the_wheels_cuda_major(version: str, base: str, cuda: int) -> None:
    config, bundle = _gpu(version)
    dockerfile = bundle.files["Dockerfile"]
    assert [line for line in dockerfile.splitlines() if line.startswith("FROM ")] == [
        f"FROM {base} AS builder", f"FROM {base} AS runtime"]
    assert f"onnxruntime-gpu {version} from the GPU lock, built for\n# CUDA {cuda}.x + cuDNN 9" \
        in dockerfile
    assert "COPY requirements-gpu.lock /build/requirements.lock" in dockerfile
    assert "COPY requirements.lock" not in dockerfile
    assert "!requirements-gpu.lock" in bundle.files[".dockerignore"]
    assert bundle.gpu_release == config.gpu_release
    assert bundle.gpu_release is not None
    assert (bundle.gpu_release.version, bundle.gpu_release.cuda_major) == (version, cuda)
    # What the build context's lock holds: the chosen onnxruntime-gpu, hashed, not onnxruntime.
    assert lock_name(bundle.gpu_release) == "requirements-gpu.lock"
    pins = {pin.name: pin for pin in image_pins(bundle.gpu_release)}
    assert "onnxruntime" not in pins
    assert pins["onnxruntime-gpu"].version == version
    assert pins["onnxruntime-gpu"].sha256 == bundle.gpu_release.sha256
    assert len([p for p in image_pins(bundle.gpu_release) if p.name == "onnxruntime-gpu"]) == 1
    assert {"numpy", "orjson", "uvicorn"} <= set(pins)
    deployment = next(o for o in bundle.objects if o["kind"] == "Deployment")
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


def test_the_cpu_image_keeps_the_cpu_lock() -> None:
    config = validate_config({"name": "iris", "model": {"source": "iris.onnx"}})
    bundle = render(config, None)
    assert bundle.gpu_release is None
    assert lock_name(None) == "requirements.lock"
    assert "COPY requirements.lock /build/requirements.lock" in bundle.files["Dockerfile"]
    assert "onnxruntime" in {pin.name for pin in image_pins(None)}


@pytest.mark.parametrize(("version", "base", "problem"), [
    ("1.31.1", "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04",
     "onnxruntime-gpu 1.31.1 is built for CUDA 13.x + cuDNN 9"),
    ("1.26.0", "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04",
     "onnxruntime-gpu 1.26.0 is built for CUDA 12.x + cuDNN 9"),
    ("1.26.0", "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
     "the GPU lock installs CPython 3.12 wheels, the python3 of Ubuntu 24.04; Ubuntu 22.04 "
     "ships 3.10"),
])
def test_a_base_that_cannot_run_the_wheel_is_refused(version: str, base: str,
                                                      problem: str) -> None:
    from mlship.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(problem)):
        _gpu(version, base=base)


@pytest.mark.validators
def test_the_cuda_13_dockerfile_is_hadolint_clean(tmp_path: Path) -> None:
    tool = find_tool("hadolint")
    assert tool is not None
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(_gpu("1.31.1")[1].files["Dockerfile"])
    result = subprocess.run([tool, "--failure-threshold", "style", "--no-color",
                             str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
