"""The building blocks of every ``mlship.yaml`` section: the base class, the error a rule raises,
and field types checked by the grammar of where their value lands (``mlship.config.grammar``):
DNS names, label keys and values, quantities, image references, URLs, mount paths.

Every string of every section, whatever its type, is one line of printable text (``Section``):
no value can end a line of a rendered file, or hide in one under review.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from mlship.config import grammar, paths
from mlship.config.quantities import (
    is_valid_repository,
    parse_image_ref,
    parse_quantity,
    registry_problem,
)


class FieldProblem(ValueError):
    """A rule broken at ``subpath`` below the validated object; the message says what fits.
    ``subpath`` is dotted (``limits.cpu``) or a tuple of keys (a label key holds dots)."""

    def __init__(self, subpath: str | tuple[str, ...], value: object, allowed: str) -> None:
        super().__init__(allowed)
        self.subpath = subpath
        self.value = value
        self.allowed = allowed

    @property
    def parts(self) -> tuple[str, ...]:
        if isinstance(self.subpath, tuple):
            return self.subpath
        return tuple(part for part in self.subpath.split(".") if part)


def _check(check: Callable[[str], str | None], grammar_name: str) -> AfterValidator:
    """The validator raising ``check``'s problem as a FieldProblem; ``grammar_name`` is what
    the key reference (mlship.config.docs) calls the type."""
    def validate(value: str) -> str:
        problem = check(value)
        if problem is not None:
            raise FieldProblem("", value, problem)
        return value

    validate.grammar = grammar_name  # type: ignore[attr-defined]
    return AfterValidator(validate)


def grammar_of(metadata: Any) -> str | None:
    """The grammar name of a field type's metadata (its ``_check`` validator), if any."""
    return next((getattr(item.func, "grammar", None) for item in metadata
                 if isinstance(item, AfterValidator) and hasattr(item.func, "grammar")), None)


def _schema(pattern: str | None = None, max_length: int | None = None) -> Any:
    """What the published JSON Schema shows editors (the check itself is ``_check``'s)."""
    extra: dict[str, Any] = {}
    if pattern:
        extra["pattern"] = pattern
    if max_length:
        extra["maxLength"] = max_length
    return Field(json_schema_extra=extra or None)


def _quantity(value: str) -> str | None:
    try:
        number = parse_quantity(value)
    except ValueError:
        return ("must be a Kubernetes quantity such as 500m, 2, 512Mi, 1Gi or 1e9, at most "
                "2^63-1 (about 8Ei)")
    if number < 0:
        return "must not be negative"
    return None


def _image_ref(value: str) -> str | None:
    try:
        parse_image_ref(value)
    except ValueError:
        return "must be an image reference such as registry.example.com/team/name:tag"
    return None


def _repository(value: str) -> str | None:
    return None if is_valid_repository(value) else \
        "must be an image repository path: lowercase components separated by '/', e.g. team/iris"


_LABEL = "[a-zA-Z0-9]([-a-zA-Z0-9_.]{0,61}[a-zA-Z0-9])?"
_SUB = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"

DnsLabel = Annotated[str, _check(grammar.dns_label, "DNS label"),
                     _schema("^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", 63)]
DnsSubdomain = Annotated[str, _check(grammar.dns_subdomain, "DNS subdomain"),
                         _schema(f"^{_SUB}$", 253)]
LabelKey = Annotated[str, _check(grammar.qualified_name, "label key"),
                     _schema(f"^({_SUB}/)?{_LABEL}$", 317)]
LabelValue = Annotated[str, _check(grammar.label_value, "label value"),
                       _schema(f"^({_LABEL})?$", 63)]
Labels = dict[LabelKey, LabelValue]
ResourceName = Annotated[str, _check(grammar.resource_name, "resource name"),
                         _schema(f"^{_SUB}/{_LABEL}$", 317)]
Version = Annotated[str, _check(grammar.version, "version label"), _schema(f"^{_LABEL}$", 63)]
Quantity = Annotated[str, _check(_quantity, "quantity"),
                     _schema(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$")]
ImageReference = Annotated[str, _check(_image_ref, "image reference"), _schema(max_length=255)]
Registry = Annotated[str, _check(registry_problem, "registry"), _schema(max_length=255)]
Repository = Annotated[str, _check(_repository, "repository path"), _schema(max_length=255)]
EnvName = Annotated[str, _check(grammar.env_name, "env name"), _schema("^[A-Za-z_][A-Za-z0-9_]*$")]
PrometheusLabel = Annotated[str, _check(grammar.prometheus_label, "Prometheus label"),
                            _schema("^[A-Za-z_][A-Za-z0-9_]*$")]
Cidr = Annotated[str, _check(grammar.cidr, "CIDR")]
Url = Annotated[str, _check(grammar.http_url, "URL"), _schema("^https?://", 2048)]
RoleArn = Annotated[str, _check(grammar.role_arn, "IAM role ARN"),
                    _schema("^arn:aws[a-z-]*:iam::[0-9]{12}:role/")]
GcpServiceAccount = Annotated[str, _check(grammar.gcp_service_account, "GCP service account"),
                              _schema(r"^[a-z0-9-]+@[a-z0-9.:-]+\.gserviceaccount\.com$")]
AwsRegion = Annotated[str, _check(grammar.aws_region, "region"),
                      _schema("^[a-z0-9][-a-z0-9]{0,62}$")]
Cron = Annotated[str, _check(grammar.cron, "cron schedule")]
PrometheusDuration = Annotated[str, _check(grammar.prometheus_duration, "Prometheus duration"),
                               _schema("^[0-9]+(ms|s|m|h|d)$")]
Duration = Annotated[str, _check(grammar.duration, "duration"),
                     _schema("^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$")]
Release = Annotated[str, _check(grammar.release, "version"),
                    _schema("^[0-9]+\\.[0-9]+(\\.[0-9]+)?$")]
HeaderName = Annotated[str, _check(grammar.header_name, "header name"),
                       _schema("^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}$")]
Hostname = Annotated[str, _check(grammar.hostname, "hostname"), _schema(f"^(\\*\\.)?{_SUB}$", 253)]
IstioHost = Annotated[str, _check(grammar.istio_host, "Istio host")]
IstioGateway = Annotated[str, _check(grammar.istio_gateway, "Istio gateway")]
Kind = Annotated[str, _check(grammar.kind, "kind"),
                 _schema("^[A-Za-z]([-A-Za-z0-9]*[A-Za-z0-9])?$", 63)]
ApiGroup = Annotated[str, _check(grammar.api_group, "API group"), _schema(f"^({_SUB})?$", 253)]
SecretMountPath = Annotated[str, _check(paths.secret_mount_path, "mount path"), _schema("^/[^/]")]
VolumeMountPath = Annotated[str, _check(paths.volume_mount_path, "mount path"), _schema("^/[^/]")]
Port = Annotated[int, Field(ge=1, le=65535)]


def _unprintable(value: object, path: tuple[str, ...] = ()) -> tuple[tuple[str, ...], str] | None:
    """Where in ``value`` (a string, or strings in lists and maps) a string breaks the rule."""
    if isinstance(value, str):
        return (path, value) if grammar.text_problem(value) else None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _unprintable(item, (*path, str(index)))
            if found:
                return found
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unprintable(key, path) or _unprintable(item, (*path, str(key)))
            if found:
                return found
    return None


class Section(BaseModel):
    """Base of every section: unknown keys are errors, loaded configs are immutable, and every
    string is one line of printable text."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="after")
    @classmethod
    def _printable_text(cls, value: Any) -> Any:
        found = _unprintable(value)
        if found is not None:
            raise FieldProblem(found[0], found[1], grammar.LINE_OF_TEXT)
        return value
