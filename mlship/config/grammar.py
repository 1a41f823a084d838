"""The grammars of where mlship.yaml's values land, as checks: each returns why a value does not
fit (the end of a ``<key>: <value> is invalid: ...`` line), or None.

Kubernetes names and labels follow apimachinery's validation (DNS-1123 labels and subdomains,
qualified names, label values), image references the OCI distribution grammar, the rest the
format of the field they fill (Gateway API hostnames, cron schedules, ARNs, URLs). Every pattern
is matched against the whole string (``fullmatch``): ``$`` would accept a trailing newline.
"""

from __future__ import annotations

import ipaddress
import re

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
                      "\ud800-\udfff]")
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN_PART = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_SUBDOMAIN_PART}(\.{_SUBDOMAIN_PART})*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PROMETHEUS_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KIND = re.compile(r"[A-Za-z]([-A-Za-z0-9]*[A-Za-z0-9])?")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}")
_REGION = re.compile(r"[a-z0-9]([-a-z0-9]{0,62})")
_ARN = re.compile(r"arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}")
_URL_CHARS = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]"
_URL = re.compile(rf"https?://(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{{1,5}})?"
                  rf"(?P<rest>[/?#]{_URL_CHARS}*)?")
_CRON_FIELD = r"[0-9A-Za-z*/,?-]+"
_CRON = re.compile(rf"@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
                   rf"|{_CRON_FIELD}( +{_CRON_FIELD}){{4}}")
_PROMETHEUS_DURATION = re.compile(r"[0-9]+(ms|s|m|h|d)")
DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h)")
_RELEASE = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)?")
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
# user-managed (NAME@PROJECT.iam...) and the Compute Engine default service account
_GCP_SA = re.compile(r"[a-z][a-z0-9-]{4,61}[a-z0-9]@[a-z0-9][a-z0-9.:-]{3,61}[a-z0-9]"
                     r"\.iam\.gserviceaccount\.com|[0-9]{1,19}-compute@developer\.gserviceaccount\.com")

LINE_OF_TEXT = ("must be one line of printable text (no control characters, line breaks or "
                "invisible formatting characters)")
DNS_LABEL = ("must be a DNS-1123 label: lowercase letters, digits and '-', starting with a "
             "letter, at most 63 characters")
DNS_SUBDOMAIN = ("must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
                 "starting and ending with a letter or digit, at most 253 characters")
LABEL_VALUE = ("must be a Kubernetes label value: at most 63 letters, digits, '-', '_' and '.',"
               " starting and ending with a letter or digit")
QUALIFIED_NAME = ("must be a Kubernetes label key: an optional DNS-subdomain prefix and '/', "
                  "then at most 63 letters, digits, '-', '_' and '.', starting and ending with "
                  "a letter or digit (e.g. team or example.com/team)")


def text_problem(value: str) -> str | None:
    """Any string of mlship.yaml: no character that could end a line or hide in a review."""
    return LINE_OF_TEXT if _CONTROL.search(value) else None


def dns_label(value: str) -> str | None:
    return None if _DNS_LABEL.fullmatch(value) else DNS_LABEL


def dns_subdomain(value: str) -> str | None:
    return None if len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value) else DNS_SUBDOMAIN


def label_value(value: str) -> str | None:
    return None if value == "" or (len(value) <= 63 and _LABEL_NAME.fullmatch(value)) \
        else LABEL_VALUE


def version(value: str) -> str | None:
    """A model version: the app.kubernetes.io/version label and an image tag."""
    return None if value and label_value(value) is None else \
        ("must be a non-empty Kubernetes label value (it is the app.kubernetes.io/version "
         "label and may be the image tag): at most 63 letters, digits, '-', '_' and '.', "
         "starting and ending with a letter or digit")


def qualified_name(value: str, *, prefixed: bool = False) -> str | None:
    """A label, annotation, node-selector or taint key; ``prefixed``: the prefix is required
    (extended resource names such as nvidia.com/gpu)."""
    prefix, slash, name = value.rpartition("/")
    valid = (0 < len(name) <= 63 and _LABEL_NAME.fullmatch(name) is not None
             and (not slash or dns_subdomain(prefix) is None) and (slash or not prefixed))
    if valid:
        return None
    if prefixed:
        return "must be a resource name with a domain prefix, such as nvidia.com/gpu"
    return QUALIFIED_NAME


def resource_name(value: str) -> str | None:
    return qualified_name(value, prefixed=True)


def env_name(value: str) -> str | None:
    return None if _ENV_NAME.fullmatch(value) else \
        "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"


def prometheus_label(value: str) -> str | None:
    return None if _PROMETHEUS_LABEL.fullmatch(value) else \
        "must be a Prometheus label name ([A-Za-z_][A-Za-z0-9_]*)"


def cidr(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "must be a CIDR such as 10.0.0.0/8 or fd00::/8"
    return None if "/" in value else "must be a CIDR such as 10.0.0.0/8 or fd00::/8"


def http_url(value: str) -> str | None:
    """An http(s) URL of the characters RFC 3986 allows (no spaces, quotes or backticks)."""
    match = _URL.fullmatch(value)
    if match is None or len(value) > 2048:
        return "must be an http:// or https:// URL (RFC 3986 characters only)"
    return None


def hostname(value: str, *, wildcard: bool = True) -> str | None:
    """A DNS name, optionally ``*.``-prefixed (Gateway API and Istio hosts)."""
    name = value.removeprefix("*.") if wildcard else value
    if dns_subdomain(name) is None:
        return None
    return ("must be a lowercase DNS name such as api.example.com" +
            (", optionally starting with *." if wildcard else ""))


def istio_host(value: str) -> str | None:
    return None if value == "*" or hostname(value) is None else \
        "must be *, or a lowercase DNS name such as reviews or api.example.com (*. allowed)"


def istio_gateway(value: str) -> str | None:
    namespace, slash, name = value.rpartition("/")
    if value == "mesh" or (dns_subdomain(name) is None and
                           (not slash or dns_label(namespace) is None)):
        return None
    return "must be mesh, or a Gateway as NAME or NAMESPACE/NAME (DNS names)"


def kind(value: str) -> str | None:
    return None if len(value) <= 63 and _KIND.fullmatch(value) else \
        "must be a Kubernetes kind such as Gateway or Service"


def api_group(value: str) -> str | None:
    return None if value == "" or dns_subdomain(value) is None else \
        "must be '' (the core group) or an API group such as gateway.networking.k8s.io"


def header_name(value: str) -> str | None:
    return None if _HEADER_NAME.fullmatch(value) else \
        "must be an HTTP header name (RFC 9110 token characters, at most 256)"


def aws_region(value: str) -> str | None:
    return None if _REGION.fullmatch(value) else \
        "must be a region name such as us-east-1 (lowercase letters, digits and '-')"


def role_arn(value: str) -> str | None:
    return None if _ARN.fullmatch(value) else \
        "must be an IAM role ARN such as arn:aws:iam::123456789012:role/NAME"


def cron(value: str) -> str | None:
    return None if _CRON.fullmatch(value) else \
        "must be a cron schedule of five fields such as '0 2 * * *', or @daily, @hourly, ..."


def prometheus_duration(value: str) -> str | None:
    return None if _PROMETHEUS_DURATION.fullmatch(value) else \
        "must be a Prometheus duration: a whole number and ms, s, m, h or d (e.g. 30s, 15m)"


def duration(value: str) -> str | None:
    return None if DURATION.fullmatch(value) else \
        "must be a duration: a number and ms, s, m or h (e.g. 30s, 1.5m, 500ms)"


def release(value: str) -> str | None:
    return None if _RELEASE.fullmatch(value) else "must be a version such as 1.20.1"


def s3_bucket(value: str) -> str | None:
    if _S3_BUCKET.fullmatch(value) and ".." not in value:
        return None
    return "an S3 bucket name is 3-63 lowercase letters, digits, '.' and '-'"


def gcs_bucket(value: str) -> str | None:
    if _GCS_BUCKET.fullmatch(value) and ".." not in value and not value.startswith("goog"):
        return None
    return "a GCS bucket name is 3-63 lowercase letters, digits, '.', '_' and '-'"


def gcp_service_account(value: str) -> str | None:
    return None if _GCP_SA.fullmatch(value) else \
        "must be a Google service account such as NAME@PROJECT.iam.gserviceaccount.com"


def relative_path(value: str) -> str | None:
    """A normalized relative path (a file on a claim): no '..', '.', '//' or leading '/'."""
    parts = value.split("/")
    if value and not value.startswith("/") and all(part not in ("", ".", "..") for part in parts):
        return None
    return "must be a normalized relative path (no leading '/', no '..', '.' or '//')"
