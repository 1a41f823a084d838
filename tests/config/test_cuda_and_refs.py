"""CUDA majors from onnxruntime-gpu wheel metadata and the GPU lock, the base-image check, and
the image-reference and quantity parsers."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from mlship.config.cuda import (
    CudaMajors,
    CudaStack,
    check_compatible,
    cuda_majors,
    cuda_stack_of,
    gpu_releases,
    release_for,
)
from mlship.config.quantities import ImageRef, parse_image_ref, parse_quantity

METADATA = Path(__file__).resolve().parents[1] / "data" / "onnxruntime-gpu"


@pytest.mark.parametrize(("image", "stack"), [
    ("nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04", CudaStack(12, 6, 9, "ubuntu", "24.04")),
    ("nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04", CudaStack(13, 0, 9, "ubuntu", "24.04")),
    ("nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04", CudaStack(12, 2, 8, "ubuntu", "22.04")),
    ("docker.io/nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04",
     CudaStack(11, 8, 8, "ubuntu", "22.04")),
    ("nvidia/cuda:12.6.3-cudnn-runtime-ubi9", CudaStack(12, 6, 9, "ubi", "9")),
    ("nvidia/cuda:12.4.1-runtime-ubuntu22.04", None),  # no cuDNN at all
    ("python:3.11-slim-bookworm", None),
])
def test_cuda_stack_is_read_from_the_tag(image: str, stack: CudaStack | None) -> None:
    assert cuda_stack_of(image) == stack


@pytest.mark.parametrize(("version", "cuda", "cudnn", "evidence"), [
    ("1.26.0", 12, 9, ("nvidia-cuda-runtime-cu12~=12.0", "nvidia-cudnn-cu12~=9.0")),
    ("1.31.1", 13, 9, ("nvidia-cuda-runtime~=13.0", "nvidia-cudnn-cu13~=9.0")),
])
def test_cuda_majors_come_from_the_wheels_own_metadata(version, cuda, cudnn, evidence) -> None:
    """METADATA files as the wheels ship them (1.26.0 from its wheel, 1.31.1 read from PyPI);
    1.31 names nvidia-cuda-runtime without a -cu13 suffix: the version specifier says 13."""
    metadata = (METADATA / f"{version}.METADATA").read_text()
    assert cuda_majors(metadata) == CudaMajors(cuda, cudnn, evidence)


def test_a_release_without_cuda_extras_has_no_derivable_cuda() -> None:
    assert cuda_majors((METADATA / "1.20.2.METADATA").read_text()) is None


def test_the_committed_gpu_lock_agrees_with_the_metadata() -> None:
    """Each locked release carries the majors its wheel requires; 1.27 on are CUDA 13."""
    releases = {release.version: release for release in gpu_releases()}
    for version in ("1.26.0", "1.31.1"):
        derived = cuda_majors((METADATA / f"{version}.METADATA").read_text())
        assert derived is not None
        assert (releases[version].cuda_major, releases[version].cudnn_major) == (
            derived.cuda, derived.cudnn)
    assert {r.cuda_major for v, r in releases.items() if _minor(v) >= 27} == {13}
    assert {r.cuda_major for v, r in releases.items() if _minor(v) <= 26} == {12}
    assert all(len(release.sha256) == 64 for release in releases.values())


def _minor(version: str) -> int:
    return int(version.split(".")[1])


def test_mismatch_names_what_fits() -> None:
    old, new = release_for("1.26"), release_for("1.31.1")
    assert check_compatible(old, cuda_stack_of("nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04")) \
        is None
    assert check_compatible(new, cuda_stack_of("nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04")) \
        is None
    assert check_compatible(old, CudaStack(12, 2, 8, "ubuntu", "24.04")) == (
        "onnxruntime-gpu 1.26.0 is built for CUDA 12.x + cuDNN 9 (its wheel's metadata), but the "
        "image has CUDA 12.2 + cuDNN 8 (e.g. nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04)")
    assert check_compatible(old, CudaStack(12, 6, 9, "ubuntu", "22.04")) == (
        "the GPU lock installs CPython 3.12 wheels, the python3 of Ubuntu 24.04; Ubuntu 22.04 "
        "ships 3.10 (e.g. nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04)")
    assert "installs python3 with apt-get" in str(
        check_compatible(old, CudaStack(12, 6, 9, "ubi", "9")))
    with pytest.raises(ValueError, match="not a release mlship's GPU lock pins"):
        release_for("1.20.1")


@pytest.mark.parametrize(("text", "ref"), [
    ("python:3.11-slim-bookworm", ImageRef(None, "python", "3.11-slim-bookworm", None)),
    ("localhost:5000/iris:model-abc", ImageRef("localhost:5000", "iris", "model-abc", None)),
    ("ghcr.io/acme/ml/iris", ImageRef("ghcr.io", "acme/ml/iris", None, None)),
    ("nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
     ImageRef(None, "nvidia/cuda", "12.4.1-cudnn-runtime-ubuntu22.04", None)),
    ("iris@sha256:" + "a" * 64, ImageRef(None, "iris", None, "sha256:" + "a" * 64)),
])
def test_image_references_parse(text: str, ref: ImageRef) -> None:
    assert parse_image_ref(text) == ref


@pytest.mark.parametrize("text", ["Iris:1", "iris:", "iris:-x", "a b", "iris@sha256:abc", ""])
def test_bad_image_references_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r".*"):
        parse_image_ref(text)


@pytest.mark.parametrize(("text", "value"), [
    ("512Mi", Decimal(512 * 2**20)), ("1Gi", Decimal(2**30)), ("500m", Decimal("0.5")),
    ("2", Decimal(2)), ("1.5", Decimal("1.5")), ("1G", Decimal(10**9)),
    ("1e9", Decimal(10**9)), ("1E3", Decimal(1000)), ("1e-3", Decimal("0.001")),
    ("1e+3", Decimal(1000)), (".5", Decimal("0.5")), ("1.", Decimal(1)), ("+1", Decimal(1)),
    ("-1Gi", Decimal(-(2**30))), ("1.Gi", Decimal(2**30)), ("1E", Decimal(10**18)),
    ("100n", Decimal("1e-7")), ("2u", Decimal("2e-6")), ("0", Decimal(0)),
])
def test_quantities(text: str, value: Decimal) -> None:
    """The whole grammar (tests/cluster/test_quantities.py checks each against the API server)."""
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Mi", "1 Gi", " 1", "1GB", ".", "+", "1e", "e3", "1e1.5",
                                  "1.5.5", "0x10", "1Ki2", "--1", "1KiB"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError, match=r".*"):
        parse_quantity(text)
