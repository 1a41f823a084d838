"""Kubernetes resource quantities and container image references, parsed without a cluster.

The config model validates these strings at the edge, and the renderer needs their numeric
value (a memory limit compared with its request, a cache size derived from a model size), so
both live here rather than in either stage.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}
# The grammar of k8s.io/apimachinery's resource.Quantity: a signed number (digits, digits.digits,
# digits. or .digits) then a binary SI suffix, a decimal SI suffix or a decimal exponent
# (e/E and a signed integer: "1e9", "1E-3"). A lone "E" is exa; "E3" is an exponent.
_QUANTITY = re.compile(r"^(?P<sign>[+-])?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                       r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE])?$")

# The reference grammar of the OCI distribution spec, reduced to what a person writes:
# [registry[:port]/]path[:tag][@sha256:digest]. Path components are lowercase.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REGISTRY = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?)"
_IMAGE_REF = re.compile(
    rf"^(?:(?P<registry>{_REGISTRY})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


def parse_quantity(text: str) -> Decimal:
    """'512Mi' -> 536870912, '500m' -> 0.5, '1e9', '.5', '1.', '+1', '1e-3' as Kubernetes reads
    them; ValueError for anything Kubernetes would reject (the API server is the reference:
    tests/cluster/test_quantities.py sends every form to it)."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(text)
    try:
        number = Decimal(match["number"])
    except InvalidOperation as err:  # pragma: no cover - the regex admits only decimals
        raise ValueError(text) from err
    if match["sign"] == "-":
        number = -number
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number.scaleb(int(suffix[1:]))  # a decimal exponent


def mebibytes(size_bytes: float, *, step: int = 1) -> str:
    """A byte count rounded up to a multiple of ``step`` MiB, as a quantity ('384Mi')."""
    mib = max(step, math.ceil(size_bytes / 2**20 / step) * step)
    return f"{mib}Mi"


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference; ``registry`` is None for Docker Hub short names."""

    registry: str | None
    path: str
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        return f"{self.registry}/{self.path}" if self.registry else self.path


def parse_image_ref(text: str) -> ImageRef:
    """Split a reference; ValueError when Docker would refuse it."""
    match = _IMAGE_REF.match(text)
    if not match or len(text) > 255:
        raise ValueError(text)
    registry = match["registry"]
    path = match["path"]
    # "library/python" has no dot, colon or "localhost" in its first part: that is a path.
    if registry and not ("." in registry or ":" in registry or registry == "localhost"):
        path = f"{registry}/{path}"
        registry = None
    return ImageRef(registry=registry, path=path, tag=match["tag"], digest=match["digest"])


def is_valid_tag(text: str) -> bool:
    return bool(_TAG.match(text))


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
