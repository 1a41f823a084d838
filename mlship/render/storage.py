"""What pods need to reach S3 or Google Cloud Storage: the runtime's env, the download cache,
the credentials.

S3 applies when the model is ``s3://`` (fetched at start) or a batch CronJob reads or writes
``s3://`` (its pods share the ConfigMap and the NetworkPolicy with the Deployment). Credentials
come from a Secret holding a shared-credentials file, or from the ServiceAccount's role
(IRSA-style web identity): a projected token for audience ``sts.amazonaws.com`` that the
runtime exchanges at STS, rendered here so it works with or without the EKS webhook (which
leaves a container alone when it already has ``AWS_ROLE_ARN`` and the ``aws-iam-token``
volume).

GCS applies when the model is ``gs://``. Credentials come from a Secret holding a
service-account key file (mounted as a file, ``GOOGLE_APPLICATION_CREDENTIALS``), or from GKE
Workload Identity: the ServiceAccount's ``iam.gke.io/gcp-service-account`` annotation, the
tokens served by the GKE metadata server the runtime asks (mlship_runtime.gcp_credentials).
An emulator endpoint is ``STORAGE_EMULATOR_HOST`` (no credentials), another endpoint
``MLSHIP_GCS_ENDPOINT_URL``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlship.config.paths import AWS_CREDENTIALS_DIR, GCP_CREDENTIALS_DIR, MODEL_CACHE_DIR, TOKEN_DIR
from mlship.config.quantities import mebibytes

if TYPE_CHECKING:
    from mlship.config.schema import MlshipConfig

TOKEN_TTL_S = 86400
# The cache holds the model's files once (downloads are renamed into place, never copied);
# the headroom covers the manifest and a size recorded before a re-export.
CACHE_HEADROOM = 1.1
CACHE_SLACK_BYTES = 16 * 2**20


def uses_s3(config: MlshipConfig) -> bool:
    batch = config.batch
    return config.model.kind == "s3" or (batch.enabled and any(
        uri.startswith("s3://") for uri in (batch.input, batch.output)))


def uses_gcs(config: MlshipConfig) -> bool:
    return config.model.kind == "gcs"


def workload_identity(config: MlshipConfig) -> str | None:
    return config.model.gcs.workload_identity if uses_gcs(config) else None


def role_arn(config: MlshipConfig) -> str | None:
    return (config.model.s3.role_arn or config.service_account.role_arn) if uses_s3(config) \
        else None


def cache_bytes(model_bytes: int) -> int:
    """sizeLimit of the download cache for a model of ``model_bytes`` (with external data)."""
    return math.ceil(model_bytes * CACHE_HEADROOM) + CACHE_SLACK_BYTES


def gcs_env(config: MlshipConfig) -> dict[str, str]:
    """The variables the runtime's GCS client reads, and where it caches the model."""
    gcs = config.model.gcs
    env: dict[str, str] = {}
    if gcs.endpoint_url:
        env["STORAGE_EMULATOR_HOST" if gcs.emulator else "MLSHIP_GCS_ENDPOINT_URL"] = \
            gcs.endpoint_url
    if gcs.credentials_secret:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = f"{GCP_CREDENTIALS_DIR}/key.json"
    env["MLSHIP_RUNTIME_CACHE_DIR"] = MODEL_CACHE_DIR
    if config.model.sha256 and not config.serves_repository:
        env["MLSHIP_RUNTIME_MODEL_SHA256"] = config.model.sha256
    return env


def storage_env(config: MlshipConfig) -> dict[str, str]:
    """AWS SDK variables the runtime's S3 client reads, the GCS client's, and where it caches
    the model (a gs:// model may still have a batch job on s3://: both then)."""
    env = gcs_env(config) if uses_gcs(config) else {}
    if not uses_s3(config):
        return env
    s3 = config.model.s3
    env["AWS_REGION"] = s3.region
    if s3.endpoint_url:
        env["AWS_ENDPOINT_URL"] = s3.endpoint_url
    if s3.credentials_secret:
        env["AWS_SHARED_CREDENTIALS_FILE"] = f"{AWS_CREDENTIALS_DIR}/credentials"
    role = role_arn(config)
    if role:
        env["AWS_ROLE_ARN"] = role
        env["AWS_WEB_IDENTITY_TOKEN_FILE"] = f"{TOKEN_DIR}/token"
    if config.model.kind == "s3":
        env["MLSHIP_RUNTIME_CACHE_DIR"] = MODEL_CACHE_DIR
        # Pins the model: a different push is refused, not served. With several models each
        # pin is in the repository document (mlship.config.repository).
        if config.model.sha256 and not config.serves_repository:
            env["MLSHIP_RUNTIME_MODEL_SHA256"] = config.model.sha256
    return env


def storage_volumes(config: MlshipConfig, model_bytes: int) -> tuple[list[dict[str, Any]],
                                                                    list[dict[str, Any]]]:
    """The cache emptyDir (s3:// models), the credentials Secret, the projected token."""
    volumes, mounts = _gcs_volumes(config, model_bytes) if uses_gcs(config) else ([], [])
    if not uses_s3(config):
        return volumes, mounts
    if config.model.kind == "s3":
        volumes.append({"name": "model-cache",
                        "emptyDir": {"sizeLimit": mebibytes(cache_bytes(model_bytes))}})
        mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE_DIR})
    if config.model.s3.credentials_secret:
        volumes.append({"name": "aws-credentials", "secret": {
            "secretName": config.model.s3.credentials_secret, "defaultMode": 0o440}})
        mounts.append({"name": "aws-credentials", "mountPath": AWS_CREDENTIALS_DIR,
                       "readOnly": True})
    if role_arn(config):
        volumes.append({"name": "aws-iam-token", "projected": {"defaultMode": 0o440, "sources": [
            {"serviceAccountToken": {"audience": "sts.amazonaws.com",
                                     "expirationSeconds": TOKEN_TTL_S, "path": "token"}}]}})
        mounts.append({"name": "aws-iam-token", "mountPath": TOKEN_DIR, "readOnly": True})
    return volumes, mounts


def _gcs_volumes(config: MlshipConfig, model_bytes: int) -> tuple[list[dict[str, Any]],
                                                                 list[dict[str, Any]]]:
    """The cache emptyDir and the key-file Secret (Workload Identity needs no volume)."""
    volumes: list[dict[str, Any]] = [{"name": "model-cache", "emptyDir": {
        "sizeLimit": mebibytes(cache_bytes(model_bytes))}}]
    mounts: list[dict[str, Any]] = [{"name": "model-cache", "mountPath": MODEL_CACHE_DIR}]
    secret = config.model.gcs.credentials_secret
    if secret:
        volumes.append({"name": "gcp-credentials", "secret": {
            "secretName": secret, "defaultMode": 0o440,
            "items": [{"key": "key.json", "path": "key.json"}]}})
        mounts.append({"name": "gcp-credentials", "mountPath": GCP_CREDENTIALS_DIR,
                       "readOnly": True})
    return volumes, mounts
