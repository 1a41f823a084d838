"""A real S3 endpoint for tests: moto's server on a free 127.0.0.1 port, as a child process.

Used by runtime/tests/conftest.py and tests/conftest.py (one implementation, loaded by path).
IAM authentication is switched on once an access key exists, so a wrong key id or secret gets
the InvalidAccessKeyId / SignatureDoesNotMatch answers real S3 gives, and every request the
runtime signs is checked against botocore's own SigV4 computation inside moto.
``MLSHIP_TEST_S3_ENDPOINT`` points the tests at an already running moto server instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGION = "us-east-1"


def moto_missing() -> str | None:
    """None when a moto server can be used, else why not."""
    endpoint = os.environ.get("MLSHIP_TEST_S3_ENDPOINT")
    if endpoint:
        host, _, port = endpoint.split("://")[-1].partition(":")
        try:
            socket.create_connection((host, int(port or 80)), timeout=1).close()
        except OSError:
            return f"no S3 server at MLSHIP_TEST_S3_ENDPOINT={endpoint}"
        return None
    try:
        import flask  # noqa: F401 - moto's server needs it (moto[server])
        import moto.server  # noqa: F401
    except ImportError as exc:
        return f"moto[server] is not installed ({exc}); pip install '.[test]'"
    return None


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoS3:
    endpoint: str
    access_key: str = ""
    secret_key: str = ""
    process: subprocess.Popen[bytes] | None = None
    buckets: list[str] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a child process: this endpoint and key, nothing from ~/.aws."""
        base = {key: value for key, value in os.environ.items()
                if not key.startswith("AWS_") and not key.startswith("MLSHIP_RUNTIME_")}
        base.update(AWS_ENDPOINT_URL=self.endpoint, AWS_REGION=REGION,
                    AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                    AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                    AWS_EC2_METADATA_DISABLED="true")
        base.update(extra)
        return base

    def client(self, service: str = "s3", **keys: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=keys.get("key", self.access_key),
                            aws_secret_access_key=keys.get("secret", self.secret_key),
                            config=Config(s3={"addressing_style": "path"}))

    def new_bucket(self, stem: str = "mlship") -> str:
        name = f"{stem}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def allow_unauthenticated(self, actions: int) -> None:
        """Let the next ``actions`` requests through without a signature. moto (5.2) demands
        one even for STS AssumeRoleWithWebIdentity, which real STS accepts unsigned."""
        _reset_auth(self.endpoint, str(actions))

    def upload_model(self, bucket: str, prefix: str, model: Path,
                     extra: tuple[str, ...] = ()) -> Any:
        """What `mlship model push` leaves in S3: the files, then the manifest (returned)."""
        from mlship_runtime.manifest import MANIFEST_NAME, Manifest, ManifestFile, sha256_file

        rels = (model.name, *extra)
        manifest = Manifest(model=model.name, files=tuple(
            ManifestFile(rel, (model.parent / rel).stat().st_size,
                         sha256_file(model.parent / rel)) for rel in rels), mlship_version="test")
        client = self.client()
        for rel in rels:
            client.upload_file(str(model.parent / rel), bucket, prefix + rel)
        client.put_object(Bucket=bucket, Key=prefix + MANIFEST_NAME,
                          Body=manifest.to_json().encode())
        return manifest

    @contextlib.contextmanager
    def unauthenticated(self) -> Iterator[None]:
        """Signatures unchecked inside the block. moto (5.2) rebuilds the signed URL with its
        query decoded, so any request whose query holds a '/' (ListObjectsV2 prefix=a/) fails
        its check, for botocore's signatures and ours alike; real S3 accepts both."""
        _reset_auth(self.endpoint, "inf")
        try:
            yield
        finally:
            _reset_auth(self.endpoint, "0")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(log_path: Path, host: str = "127.0.0.1") -> MotoS3:
    """A moto server with IAM auth on and an allow-all user whose key the tests use.

    ``host`` is the one address it listens on: loopback, or the real test node's bridge
    address for pods (tests/k8s/controlplane/nodenet.py); MLSHIP_TEST_S3_ENDPOINT only
    replaces a loopback one."""
    endpoint = os.environ.get("MLSHIP_TEST_S3_ENDPOINT") if host == "127.0.0.1" else None
    process = None
    if not endpoint:
        port = _free_port(host)
        endpoint = f"http://{host}:{port}"
        with log_path.open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host,
                                        "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: "
                                       f"{log_path.read_text()}") from None
                time.sleep(0.1)
    server = MotoS3(endpoint, "bootstrap", "bootstrap", process)
    _reset_auth(endpoint, "inf")  # the bootstrap key may create the user
    iam = server.client("iam")
    user = f"mlship-tests-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    server.access_key, server.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
    _reset_auth(endpoint, "0")  # from now on every request is authenticated and authorized
    return server


def _reset_auth(endpoint: str, count: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(),
                                     method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
