"""The sections of ``mlship.yaml`` the image stage reads: the model's source, the image, and
the pod's resources.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from mlship.config.fields import (
    _DNS_LABEL,
    Cidr,
    DnsLabel,
    FieldProblem,
    ImageReference,
    Port,
    Quantity,
    Section,
)
from mlship.config.quantities import DIGEST, is_valid_tag, parse_quantity

DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"


class S3Settings(Section):
    endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, Ceph); None is AWS.")
    region: str = Field("us-east-1", description="AWS_REGION for the download.")
    credentials_secret: str | None = Field(
        None, description="Secret holding an AWS shared-credentials file under the key "
                          "'credentials'; mounted as a file, never as env.")
    role_arn: str | None = Field(None, description="IAM role for IRSA: annotates the "
                                                   "ServiceAccount instead of using a Secret.")
    egress_cidrs: list[Cidr] = Field(["0.0.0.0/0"], description="Where the S3 endpoint lives; "
                                     "the NetworkPolicy allows egress only there.")
    egress_port: Port = Field(443, description="Port of the S3 endpoint.")
    pod_identity: bool = Field(False, description="EKS Pod Identity: let the pods reach the "
                               "node's agent (169.254.170.23, fd00:ec2::23, port 80), whose "
                               "credentials the runtime fetches.")
    bandwidth_mb_s: float = Field(50.0, gt=0, description="Assumed download speed, used to "
                                                          "size the startup probe.")


class VolumeSettings(Section):
    mount_path: str = Field("/models", description="Where the volume is mounted read-only.")
    create_claim: bool = Field(False, description="Render a PersistentVolumeClaim too.")
    size: Quantity = Field("1Gi", description="Size of a created claim.")
    access_mode: Literal["ReadOnlyMany", "ReadWriteOnce", "ReadWriteMany"] = Field(
        "ReadOnlyMany", description="Access mode of a created claim; many replicas on many "
                                    "nodes need ReadOnlyMany or ReadWriteMany.")
    storage_class: str | None = Field(None, description="StorageClass of a created claim.")


class ModelFile(Section):
    """One model file and where it comes from; the main ``model`` and each of ``models``."""

    source: str = Field(..., description="A local .onnx file (baked into the image as its last "
                        "layer), s3://BUCKET/KEY (fetched at start), or pvc://CLAIM/PATH.")
    version: str = Field("1", description="Model version: the app.kubernetes.io/version label "
                                          "and the image tag under tag_policy 'version'.")
    sha256: str | None = Field(None, description="sha256 of the model file, recorded by init.")
    size_bytes: int | None = Field(None, ge=0, description="Model plus external data, recorded "
                                   "by init; sizes probes and caches of remote models.")

    @property
    def kind(self) -> Literal["image", "s3", "volume"]:
        if self.source.startswith("s3://"):
            return "s3"
        if self.source.startswith("pvc://"):
            return "volume"
        return "image"

    @property
    def claim_and_path(self) -> tuple[str, str]:
        claim, _, path = self.source.removeprefix("pvc://").partition("/")
        return claim, path

    @model_validator(mode="after")
    def _check_uri(self) -> ModelFile:
        if self.kind == "s3":
            bucket, _, key = self.source.removeprefix("s3://").partition("/")
            if not bucket:
                raise FieldProblem("source", self.source, "an s3:// URI needs a bucket: "
                                                          "s3://BUCKET/KEY")
            if not key or key.endswith("/"):
                raise FieldProblem("source", self.source, "an s3:// URI needs an object key: "
                                                          "s3://BUCKET/KEY")
        if self.kind == "volume":
            claim, path = self.claim_and_path
            if not _DNS_LABEL.match(claim) or not path:
                raise FieldProblem("source", self.source, "must be pvc://CLAIM/PATH with a "
                                                          "DNS-1123 claim name")
        if self.sha256 is not None and not re.fullmatch(r"[a-f0-9]{64}", self.sha256):
            raise FieldProblem("sha256", self.sha256, "must be 64 lowercase hex digits")
        return self


class ModelSource(ModelFile):
    """The main model: served under the app's name; its S3 and volume settings serve every
    model of the process (``models`` come from the same place)."""

    s3: S3Settings = Field(default_factory=S3Settings)
    volume: VolumeSettings = Field(default_factory=VolumeSettings)


class ImageSettings(Section):
    base: ImageReference | None = Field(
        None, description=f"Base of both stages; None means {DEFAULT_BASE_IMAGE}, or the CUDA "
                          "image matching gpu.onnxruntime_gpu_version.")
    registry: str | None = Field(None, description="e.g. ghcr.io/acme; None for a local image.")
    repository: str | None = Field(None, description="Image repository; None means the name.")
    tag_policy: Literal["model-sha", "version", "fixed"] = Field(
        "model-sha", description="Tag from the model's sha256, from model.version, or image.tag.")
    tag: str | None = Field(None, description="The tag under tag_policy 'fixed'.")
    digest: str | None = Field(None, description="sha256:... once pushed; pins the image.")
    install_from: Literal["wheelhouse", "index"] = Field(
        "wheelhouse", description="pip installs from wheels/ in the build context (no network) "
                                  "or from a package index.")
    size_budget_mb: int = Field(110, ge=1, description="Largest acceptable image size.")
    pull_secrets: list[DnsLabel] = Field([], description="imagePullSecrets names.")
    source_url: str = Field("", description="org.opencontainers.image.source label.")

    @model_validator(mode="after")
    def _check_tag(self) -> ImageSettings:
        if self.tag_policy == "fixed" and not self.tag:
            raise FieldProblem("tag", self.tag, "must be set when tag_policy is 'fixed'")
        if self.tag is not None and not is_valid_tag(self.tag):
            raise FieldProblem("tag", self.tag, "must be a Docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]"
                                                "{0,127})")
        if self.digest is not None and not DIGEST.match(self.digest):
            raise FieldProblem("digest", self.digest, "must be sha256: and 64 hex digits")
        return self


class Resources(Section):
    cpu: Quantity = Field(..., description="CPU quantity, e.g. 250m or 2.")
    memory: Quantity = Field(..., description="Memory quantity, e.g. 512Mi; init suggests it "
                                              "from the model's memory estimate.")


class ResourceSettings(Section):
    requests: Resources = Field(default_factory=lambda: Resources(cpu="250m", memory="256Mi"))
    limits: Resources = Field(default_factory=lambda: Resources(cpu="2", memory="512Mi"))

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> ResourceSettings:
        for key in ("memory", "cpu"):
            request, limit = getattr(self.requests, key), getattr(self.limits, key)
            if parse_quantity(limit) < parse_quantity(request):
                raise FieldProblem(f"limits.{key}", limit,
                                   f"must be >= requests.{key} ({request})")
        return self
