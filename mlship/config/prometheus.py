"""``rollout.analysis.prometheus``: how mlship reaches a Prometheus that wants credentials.

Managed and multi-tenant Prometheus (Grafana Cloud, Mimir, Cortex, Thanos behind a gateway,
Amazon Managed Prometheus) refuse anonymous queries. The settings follow Prometheus' own HTTP
client configuration: a bearer token, basic auth, a CA bundle, extra headers (the tenant's
``X-Scope-OrgID``), or SigV4 for Amazon Managed Prometheus. Secrets never live in mlship.yaml:
they come from files (a mounted Secret, a projected token) or from the environment
(``MLSHIP_PROMETHEUS_TOKEN``, ``MLSHIP_PROMETHEUS_PASSWORD``, and the AWS chain for SigV4).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from mlship.config.fields import FieldProblem, Section

_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
TOKEN_ENV = "MLSHIP_PROMETHEUS_TOKEN"
PASSWORD_ENV = "MLSHIP_PROMETHEUS_PASSWORD"
# Set by mlship itself from the settings below; a header of these names would fight them.
_OWN_HEADERS = {"authorization", "host", "x-amz-date", "x-amz-security-token",
                "x-amz-content-sha256"}


class BasicAuth(Section):
    username: str = Field(..., min_length=1, description="User name.")
    password_file: str | None = Field(None, description="File holding the password (relative "
                                      f"to mlship.yaml); None reads {PASSWORD_ENV}.")


class SigV4(Section):
    region: str | None = Field(None, description="AWS region of the workspace; None reads "
                                                 "AWS_REGION / AWS_DEFAULT_REGION.")
    service: str = Field("aps", min_length=1, description="Signing name: aps for Amazon "
                                                         "Managed Prometheus.")
    profile: str | None = Field(None, description="AWS profile; None is the default chain "
                                                  "(env, web identity, files, container, "
                                                  "instance role).")


class PrometheusAccess(Section):
    bearer_token_file: str | None = Field(
        None, description=f"File holding a bearer token, re-read at every query (rotated "
                          f"tokens work); {TOKEN_ENV} in the environment is used when set.")
    basic_auth: BasicAuth | None = Field(None, description="Basic authentication.")
    sigv4: SigV4 | None = Field(None, description="Sign every query with AWS SigV4 (Amazon "
                                                  "Managed Prometheus).")
    ca_file: str | None = Field(None, description="CA bundle for an https prometheus_url with "
                                                  "a private CA (relative to mlship.yaml).")
    headers: dict[str, str] = Field({}, description="Extra headers on every query, e.g. "
                                                    "{X-Scope-OrgID: tenant} for Mimir, Cortex "
                                                    "and Thanos.")
    allow_plain_http: bool = Field(False, description="Send credentials over plain http to a "
                                   "non-loopback address (a cluster-internal Service); "
                                   "refused by default.")

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        import re

        for name in headers:
            if not re.match(_HEADER_NAME, name):
                raise FieldProblem(name, name, "is not an HTTP header name")
            if name.lower() in _OWN_HEADERS:
                raise FieldProblem(name, name, "is set by mlship from bearer_token_file, "
                                               "basic_auth or sigv4; use those")
        return headers

    @model_validator(mode="after")
    def _one_scheme(self) -> PrometheusAccess:
        chosen = [name for name, value in (("bearer_token_file", self.bearer_token_file),
                                           ("basic_auth", self.basic_auth),
                                           ("sigv4", self.sigv4)) if value is not None]
        if len(chosen) > 1:
            raise FieldProblem(chosen[1], "...", f"choose one of {', '.join(chosen)}: each "
                                                 "sets the Authorization header")
        return self
