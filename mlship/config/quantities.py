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
_QUANTITY = re.compile(r"(?P<sign>[+-])?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
                       r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE])?")
# Kubernetes keeps a quantity's value in an int64: anything larger is refused by the API.
MAX_QUANTITY = Decimal(2**63 - 1)

# The reference grammar of the OCI distribution spec, reduced to what a person writes:
# [registry[:port]/]path[:tag][@sha256:digest]. Path components are lowercase.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_REGISTRY = rf"(?:(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?)"
_TAG_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_IMAGE_REF = re.compile(
    rf"(?:(?P<registry>{_REGISTRY})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG_PATTERN}))?(?:@(?P<digest>sha256:[a-f0-9]{{64}}))?"
)
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(_TAG_PATTERN)
DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
MAX_REFERENCE = 255


def parse_quantity(text: str) -> Decimal:
    """'512Mi' -> 536870912, '500m' -> 0.5, '1e9', '.5', '1.', '+1', '1e-3' as Kubernetes reads
    them; ValueError for anything Kubernetes would reject (another form, or a value beyond
    int64; the API server is the reference: tests/cluster/test_quantities.py sends every form
    to it)."""
    match = _QUANTITY.fullmatch(text)
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
        value = number * _BINARY[suffix]
    elif suffix in _DECIMAL:
        value = number * _DECIMAL[suffix]
    else:
        exponent = int(suffix[1:])
        if abs(exponent) > 40:  # far past int64 either way; scaleb would build a huge number
            raise ValueError(text)
        value = number.scaleb(exponent)
    if abs(value) > MAX_QUANTITY:
        raise ValueError(text)
    return value


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
    match = _IMAGE_REF.fullmatch(text)
    if not match or len(text) > MAX_REFERENCE:
        raise ValueError(text)
    registry = match["registry"]
    path = match["path"]
    # "library/python" has no dot, colon or "localhost" in its first part: that is a path.
    if registry and not ("." in registry or ":" in registry or registry == "localhost"):
        if not re.fullmatch(_COMPONENT, registry):
            raise ValueError(text)  # a path component: lowercase
        path = f"{registry}/{path}"
        registry = None
    return ImageRef(registry=registry, path=path, tag=match["tag"], digest=match["digest"])


def is_valid_tag(text: str) -> bool:
    return bool(_TAG.fullmatch(text))


def is_valid_digest(text: str) -> bool:
    return bool(DIGEST.fullmatch(text))


def is_valid_repository(text: str) -> bool:
    """Path components of a reference: lowercase, '/'-separated (acme/iris)."""
    return len(text) <= MAX_REFERENCE and bool(_REPOSITORY.fullmatch(text))


def registry_problem(text: str) -> str | None:
    """Why ``text`` cannot be the registry part of a reference (host[:port][/path]), or None."""
    host, _, path = text.partition("/")
    valid = re.fullmatch(_REGISTRY, host) is not None and (not path or is_valid_repository(path))
    if valid and len(text) <= MAX_REFERENCE:
        try:
            parse_image_ref(f"{text}/name")  # a host without a dot is a Docker Hub namespace
        except ValueError:
            pass
        else:
            return None
    return ("must be a registry host, with an optional :port and repository path, such as "
            "ghcr.io/acme or 127.0.0.1:5000 (no scheme, tag or trailing '/')")


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
