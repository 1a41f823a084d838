"""The onnxruntime-gpu / CUDA table and the image-reference and quantity parsers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from mlship.config.cuda import CudaStack, check_compatible, compatible_pairs, cuda_stack_of
from mlship.config.quantities import ImageRef, parse_image_ref, parse_quantity


@pytest.mark.parametrize(("image", "stack"), [
    ("nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04", CudaStack(12, 4, 9)),
    ("nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04", CudaStack(12, 2, 8)),
    ("docker.io/nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04", CudaStack(11, 8, 8)),
    ("nvidia/cuda:12.4.1-runtime-ubuntu22.04", None),  # no cuDNN at all
    ("python:3.11-slim-bookworm", None),
])
def test_cuda_stack_is_read_from_the_tag(image: str, stack: CudaStack | None) -> None:
    assert cuda_stack_of(image) == stack


@pytest.mark.parametrize(("version", "pairs"), [
    ("1.17.3", ((11, 8),)),
    ("1.18.1", ((11, 8), (12, 9), (12, 8))),
    ("1.19.2", ((12, 9), (11, 8))),
    ("1.20.1", ((12, 9),)),
    ("1.23.0", ((12, 9),)),
    ("1.14.0", ()),
])
def test_compatibility_table(version: str, pairs: tuple) -> None:
    assert compatible_pairs(version) == pairs


def test_mismatch_names_what_fits() -> None:
    assert check_compatible("1.20.1", CudaStack(12, 4, 9)) is None
    assert check_compatible("1.18.0", CudaStack(12, 2, 8)) is None
    assert check_compatible("1.20.1", CudaStack(12, 2, 8)) == (
        "onnxruntime-gpu 1.20.1 needs CUDA 12.x + cuDNN 9, but the image has CUDA 12.2 + "
        "cuDNN 8 (e.g. nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04)")


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
])
def test_quantities(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Mi", "-1Gi", "1 Gi", "1GB", "1.Gi"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError, match=r".*"):
        parse_quantity(text)
