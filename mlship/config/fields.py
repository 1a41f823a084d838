"""The building blocks of every ``mlship.yaml`` section: the base class, the error a rule raises,
and field types checked by the grammar of where their value lands (DNS labels, quantities,
image references, environment variable names, CIDRs).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mlship.config.quantities import parse_image_ref, parse_quantity

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CIDR = re.compile(r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$|^[0-9a-fA-F:]+/\d{1,3}$")


class FieldProblem(ValueError):
    """A rule broken at ``subpath`` below the validated object; the message says what fits."""

    def __init__(self, subpath: str, value: object, allowed: str) -> None:
        super().__init__(allowed)
        self.subpath = subpath
        self.value = value
        self.allowed = allowed


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise FieldProblem("", value, "must be a DNS-1123 label: lowercase letters, digits and "
                                      "'-', starting with a letter, at most 63 characters")
    return value


def _quantity(value: str) -> str:
    try:
        number = parse_quantity(value)
    except ValueError:
        raise FieldProblem("", value, "must be a Kubernetes quantity such as 500m, 2, 512Mi, "
                                      "1Gi or 1e9") from None
    if number < 0:
        raise FieldProblem("", value, "must not be negative")
    return value


def _image_ref(value: str) -> str:
    try:
        parse_image_ref(value)
    except ValueError:
        raise FieldProblem("", value, "must be an image reference such as "
                                      "registry.example.com/team/name:tag") from None
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise FieldProblem("", value,
                           "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return value


def _cidr(value: str) -> str:
    if not _CIDR.match(value):
        raise FieldProblem("", value, "must be a CIDR such as 10.0.0.0/8")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
Quantity = Annotated[str, AfterValidator(_quantity)]
ImageReference = Annotated[str, AfterValidator(_image_ref)]
EnvName = Annotated[str, AfterValidator(_env_name)]
Cidr = Annotated[str, AfterValidator(_cidr)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, and loaded configs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


