"""The sections of ``mlship.yaml`` the image stage reads: the model's source, the image, and
the pod's resources.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from mlship.config import grammar
from mlship.config.fields import (
    AwsRegion,
    Cidr,
    DnsLabel,
    DnsSubdomain,
    FieldProblem,
    GcpServiceAccount,
    ImageReference,
    Port,
    Quantity,
    Registry,
    Repository,
    RoleArn,
    Section,
    Url,
    Version,
    VolumeMountPath,
)
from mlship.config.quantities import is_valid_digest, is_valid_tag, parse_quantity

DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"


class S3Settings(Section):
    endpoint_url: Url | None = Field(None, description="S3 endpoint (MinIO, Ceph); None is AWS.")
    region: AwsRegion = Field("us-east-1", description="AWS_REGION for the download.")
    credentials_secret: DnsSubdomain | None = Field(
        None, description="Secret holding an AWS shared-credentials file under the key "
                          "'credentials'; mounted as a file, never as env.")
    role_arn: RoleArn | None = Field(None, description="IAM role for IRSA: annotates the "
                                                   "ServiceAccount instead of using a Secret.")
    egress_cidrs: list[Cidr] = Field(["0.0.0.0/0"], description="Where the S3 endpoint lives; "
                                     "the NetworkPolicy allows egress only there.")
    egress_port: Port = Field(443, description="Port of the S3 endpoint.")
    pod_identity: bool = Field(False, description="EKS Pod Identity: let the pods reach the "
                               "node's agent (169.254.170.23, fd00:ec2::23, port 80), whose "
                               "credentials the runtime fetches.")
    bandwidth_mb_s: float = Field(50.0, gt=0, description="Assumed download speed, used to "
                                                          "size the startup probe.")


class GcsSettings(Section):
    endpoint_url: Url | None = Field(None, description="Cloud Storage JSON API endpoint (Private "
                                     "Service Connect, an emulator); None is "
                                     "https://storage.googleapis.com.")
    emulator: bool = Field(False, description="endpoint_url is an emulator (fake-gcs-server): "
                           "rendered as STORAGE_EMULATOR_HOST, so no credentials are sent.")
    credentials_secret: DnsSubdomain | None = Field(
        None, description="Secret holding a service-account key file under the key "
                          "'key.json'; mounted as a file (GOOGLE_APPLICATION_CREDENTIALS), never "
                          "as env.")
    workload_identity: GcpServiceAccount | None = Field(
        None, description="GKE Workload Identity: the Google service account the pods act as "
                          "(the ServiceAccount annotation iam.gke.io/gcp-service-account); "
                          "tokens come from the GKE metadata server.")
    egress_cidrs: list[Cidr] = Field(["0.0.0.0/0"], description="Where the GCS endpoint lives; "
                                     "the NetworkPolicy allows egress only there.")
    egress_port: Port = Field(443, description="Port of the GCS endpoint.")
    bandwidth_mb_s: float = Field(50.0, gt=0, description="Assumed download speed, used to "
                                                          "size the startup probe.")

    @model_validator(mode="after")
    def _check(self) -> GcsSettings:
        if self.emulator and not self.endpoint_url:
            raise FieldProblem("emulator", True, "needs endpoint_url (the emulator's URL)")
        if self.credentials_secret and self.workload_identity:
            raise FieldProblem("workload_identity", self.workload_identity,
                               "use either credentials_secret or workload_identity, not both")
        return self


class VolumeSettings(Section):
    mount_path: VolumeMountPath = Field("/models", description="Where the volume is mounted "
                                        "read-only.")
    create_claim: bool = Field(False, description="Render a PersistentVolumeClaim too.")
    size: Quantity = Field("1Gi", description="Size of a created claim.")
    access_mode: Literal["ReadOnlyMany", "ReadWriteOnce", "ReadWriteMany"] = Field(
        "ReadOnlyMany", description="Access mode of a created claim; many replicas on many "
                                    "nodes need ReadOnlyMany or ReadWriteMany.")
    storage_class: DnsSubdomain | None = Field(None, description="StorageClass of a created "
                                               "claim.")


class InputProfile(Section):
    """The inputs real requests have: what the warm-up, memory sizing, optimize, the smoke
    test, generated inputs and synthetic canary traffic run the model at."""

    shapes: dict[str, list[Annotated[int, Field(ge=1)]]] = Field(
        {}, description="One request's shape per input, batch dimension included, e.g. "
                        "images: [1, 3, 640, 640]; inputs left out are derived. The pod "
                        "refuses to start when the model does not run at them.")
    sample: str | None = Field(None, description="A sample request (.npz, .npy or .json), "
                               "relative to mlship.yaml; used by local runs (serve -c, build "
                               "--smoke, optimize), not shipped in the image.")

    def shapes_text(self) -> str | None:
        """As the runtime's --input-shapes takes them; None when there are none."""
        return ",".join(f"{name}={'x'.join(map(str, dims))}"
                        for name, dims in self.shapes.items()) or None


class ModelFile(Section):
    """One model file and where it comes from; the main ``model`` and each of ``models``."""

    source: str = Field(..., description="A local .onnx file (baked into the image as its last "
                        "layer), s3://BUCKET/KEY or gs://BUCKET/KEY (fetched at start), or "
                        "pvc://CLAIM/PATH.")
    version: Version = Field("1", description="Model version: the app.kubernetes.io/version label "
                                          "and the image tag under tag_policy 'version'.")
    sha256: str | None = Field(None, description="sha256 of the model file, recorded by init.")
    size_bytes: int | None = Field(None, ge=0, description="Model plus external data, recorded "
                                   "by init; sizes probes and caches of remote models.")
    load_seconds: float | None = Field(
        None, gt=0, le=86400, description="The model's load and warm-up time in its image, "
        "measured and recorded by `mlship build --smoke`; sizes the startup probe "
        "(docs/rendering.md). None: estimated from the size.")
    profile: InputProfile = Field(default_factory=InputProfile)

    @property
    def kind(self) -> Literal["image", "s3", "gcs", "volume"]:
        if self.source.startswith("s3://"):
            return "s3"
        if self.source.startswith("gs://"):
            return "gcs"
        if self.source.startswith("pvc://"):
            return "volume"
        return "image"

    @property
    def fetched(self) -> bool:
        """Downloaded from object storage when the pod starts (s3:// or gs://)."""
        return self.kind in ("s3", "gcs")

    @property
    def claim_and_path(self) -> tuple[str, str]:
        claim, _, path = self.source.removeprefix("pvc://").partition("/")
        return claim, path

    @model_validator(mode="after")
    def _check_uri(self) -> ModelFile:
        problem = _source_problem(self.kind, self.source)
        if problem is not None:
            raise FieldProblem("source", self.source, problem)
        if self.sha256 is not None and not re.fullmatch(r"[a-f0-9]{64}", self.sha256):
            raise FieldProblem("sha256", self.sha256, "must be 64 lowercase hex digits")
        return self


def _source_problem(kind: str, source: str) -> str | None:  # noqa: PLR0911 - one per scheme
    if kind == "gcs":
        return _gs_problem(source)
    if kind == "s3":
        bucket, _, key = source.removeprefix("s3://").partition("/")
        if not bucket:
            return "an s3:// URI needs a bucket: s3://BUCKET/KEY"
        if grammar.s3_bucket(bucket) is not None:
            return f"{grammar.s3_bucket(bucket)}: s3://BUCKET/KEY"
        if not key or key.endswith("/") or len(key.encode()) > 1024:
            return "an s3:// URI needs an object key (at most 1024 bytes): s3://BUCKET/KEY"
    elif kind == "volume":
        claim, _, path = source.removeprefix("pvc://").partition("/")
        if grammar.dns_label(claim) is not None or grammar.relative_path(path) is not None:
            return "must be pvc://CLAIM/PATH with a DNS-1123 claim name and a normalized path"
    elif "${{" in source or not source:
        # The path is a word of the CI pipeline's inspect step, where GitHub would expand it.
        return "must be a path to the model file, without '${{'"
    return None


def _gs_problem(source: str) -> str | None:
    bucket, _, key = source.removeprefix("gs://").partition("/")
    if grammar.gcs_bucket(bucket) is not None:
        return f"{grammar.gcs_bucket(bucket)}: gs://BUCKET/KEY"
    if not key or key.endswith("/") or len(key.encode()) > 1024:
        return "a gs:// URI needs an object name (at most 1024 bytes): gs://BUCKET/KEY"
    return None


class ModelSource(ModelFile):
    """The main model: served under the app's name; its S3, GCS and volume settings serve every
    model of the process (``models`` come from the same place)."""

    s3: S3Settings = Field(default_factory=S3Settings)
    gcs: GcsSettings = Field(default_factory=GcsSettings)
    volume: VolumeSettings = Field(default_factory=VolumeSettings)


class ImageSettings(Section):
    base: ImageReference | None = Field(
        None, description=f"Base of both stages; None means {DEFAULT_BASE_IMAGE}, or the CUDA "
                          "image matching gpu.onnxruntime_gpu_version.")
    registry: Registry | None = Field(None, description="e.g. ghcr.io/acme or 127.0.0.1:5000; "
                                      "None for a local image.")
    repository: Repository | None = Field(None, description="Image repository path; None means "
                                          "the name.")
    tag_policy: Literal["model-sha", "version", "fixed"] = Field(
        "model-sha", description="Tag from the model's sha256, from model.version, or image.tag.")
    tag: str | None = Field(None, description="The tag under tag_policy 'fixed'.")
    digest: str | None = Field(None, description="sha256:... once pushed; pins the image.")
    install_from: Literal["wheelhouse", "index"] = Field(
        "wheelhouse", description="pip installs from wheels/ in the build context (no network) "
                                  "or from a package index.")
    size_budget_mb: int = Field(110, ge=1, description="Largest acceptable image size.")
    pull_secrets: list[DnsLabel] = Field([], description="imagePullSecrets names.")
    source_url: str = Field("", description="org.opencontainers.image.source label: an "
                            "http(s) URL, or empty.")

    @model_validator(mode="after")
    def _check_tag(self) -> ImageSettings:
        if self.tag_policy == "fixed" and not self.tag:
            raise FieldProblem("tag", self.tag, "must be set when tag_policy is 'fixed'")
        if self.tag is not None and not is_valid_tag(self.tag):
            raise FieldProblem("tag", self.tag, "must be a Docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]"
                                                "{0,127})")
        if self.digest is not None and not is_valid_digest(self.digest):
            raise FieldProblem("digest", self.digest, "must be sha256: and 64 lowercase hex "
                                                      "digits")
        if self.source_url and grammar.http_url(self.source_url) is not None:
            raise FieldProblem("source_url", self.source_url, f"{grammar.http_url('')}, or empty")
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
