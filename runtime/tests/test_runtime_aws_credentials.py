"""The runtime's AWS credential chain against real endpoints on loopback: moto's S3 and STS, a
container-credentials endpoint (what the EKS Pod Identity agent and the ECS agent serve) that
answers only with the right Authorization token, and an IMDSv2 endpoint that answers only
within a session token. Nothing here dials a non-loopback address: every other link is unset,
and instance metadata is disabled or pointed at loopback."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mlship_runtime.aws_credentials import ECS_AGENT, container_url
from mlship_runtime.s3 import S3Client, S3Config, S3Error, resolve_credentials

TOKEN = "eks-pod-identity-token-0123456789"
NO_IMDS = {"AWS_EC2_METADATA_DISABLED": "true"}


class Endpoint:
    """A loopback HTTP endpoint; ``answer(handler)`` -> (status, JSON body); records requests."""

    def __init__(self, answer: Any) -> None:
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                endpoint.requests.append({"method": self.command, "path": self.path,
                                          **{k.lower(): v for k, v in self.headers.items()}})
                status, body = answer(self)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def serving(answer: Any) -> Iterator[Endpoint]:
    endpoint = Endpoint(answer)
    try:
        yield endpoint
    finally:
        endpoint.close()


def session_keys(moto_s3, name: str) -> dict[str, str]:
    """Real temporary credentials from moto's STS, for a role allowed to use S3."""
    iam = moto_s3.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName=f"mlship-{name}",
                           AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName=f"mlship-{name}", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    keys = moto_s3.client("sts").assume_role(RoleArn=role, RoleSessionName=name)["Credentials"]
    return {"AccessKeyId": keys["AccessKeyId"], "SecretAccessKey": keys["SecretAccessKey"],
            "Token": keys["SessionToken"],
            "Expiration": keys["Expiration"].astimezone(timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ")}


def agent(keys: dict[str, str], token_file: Path | None = None, token: str = TOKEN):
    """The Pod Identity agent: credentials for the token in the file (read at every request:
    the agent's token rotates), 401 for anything else."""
    def answer(handler: BaseHTTPRequestHandler) -> tuple[int, Any]:
        expected = token_file.read_text().strip() if token_file else token
        if handler.headers.get("Authorization") != expected:
            return 401, {"message": "invalid authorization token"}
        return 200, keys
    return answer


def pod_env(moto_s3, url: str, token_file: Path, **extra: str) -> dict[str, str]:
    """A pod on EKS Pod Identity: the two variables the webhook injects, no keys."""
    env = moto_s3.env(AWS_CONTAINER_CREDENTIALS_FULL_URI=f"{url}/v1/credentials",
                      AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file), **extra)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    return env


@pytest.mark.s3
def test_the_runtime_fetches_from_s3_with_pod_identity_credentials(moto_s3, start_server,
                                                                    models, tmp_path):
    keys = session_keys(moto_s3, f"pod-{tmp_path.name[-8:]}")
    bucket = moto_s3.new_bucket()
    moto_s3.upload_model(bucket, "tiny/", models["tiny"])
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(TOKEN)
    with serving(agent(keys, token_file)) as endpoint:
        server = start_server(f"s3://{bucket}/tiny/tiny.onnx", "--cache-dir",
                              str(tmp_path / "cache"), env=pod_env(moto_s3, endpoint.url,
                                                                   token_file))
        server.wait_ready(60)
        assert server.stop() == 0
    assert endpoint.requests, "the runtime never asked the container endpoint"
    assert {r["authorization"] for r in endpoint.requests} == {TOKEN}
    assert {r["path"] for r in endpoint.requests} == {"/v1/credentials"}


@pytest.mark.s3
def test_a_wrong_token_is_exit_11_naming_the_endpoint(moto_s3, start_server, models, tmp_path):
    bucket = moto_s3.new_bucket()
    moto_s3.upload_model(bucket, "tiny/", models["tiny"])
    token_file = tmp_path / "token"
    token_file.write_text("a-stale-token")
    with serving(agent({}, token=TOKEN)) as endpoint:
        server = start_server(f"s3://{bucket}/tiny/tiny.onnx", "--cache-dir",
                              str(tmp_path / "cache"),
                              env=pod_env(moto_s3, endpoint.url, token_file))
        deadline = time.monotonic() + 60
        while server.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        code = server.stop()
    assert code == 11, server.log()
    errors = [line for line in server.log().splitlines() if " ERROR mlship_runtime" in line]
    assert len(errors) == 1, server.log()
    assert f"container credentials at {endpoint.url}/v1/credentials: HTTP 401" in errors[0]
    assert "Traceback" not in server.log()


@pytest.mark.s3
def test_expiring_credentials_are_renewed_with_the_rotated_token(moto_s3, tmp_path):
    """Pod Identity credentials expire and the agent's token file rotates: the client renews
    them before expiry, reading the file again."""
    keys = session_keys(moto_s3, f"renew-{tmp_path.name[-8:]}")
    soon = (datetime.now(timezone.utc) + timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    bucket = moto_s3.new_bucket()
    moto_s3.client().put_object(Bucket=bucket, Key="k", Body=b"payload")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with serving(agent({**keys, "Expiration": soon}, token_file)) as endpoint:
        env = pod_env(moto_s3, endpoint.url, token_file)
        client = S3Client(environ=env)
        assert client.get(bucket, "k") == b"payload"
        token_file.write_text("rotated-token")
        assert client.get(bucket, "k") == b"payload"  # within 5 min of expiry: fetched again
    assert [r["authorization"] for r in endpoint.requests] == [TOKEN, "rotated-token"]


def test_botocore_order_earlier_links_win_and_the_agent_is_not_asked(tmp_path):
    """env, web identity, shared files, then the container provider, then IMDS: botocore's."""
    shared = tmp_path / "credentials"
    shared.write_text("[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = s\n")
    with serving(agent({"AccessKeyId": "AKIDPOD", "SecretAccessKey": "x", "Token": "t",
                        "Expiration": "2099-01-01T00:00:00Z"})) as endpoint:
        pod = {**NO_IMDS, "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{endpoint.url}/creds",
               "AWS_CONTAINER_AUTHORIZATION_TOKEN": TOKEN, "HOME": str(tmp_path)}
        config = S3Config()
        assert resolve_credentials({**pod, "AWS_ACCESS_KEY_ID": "AKIDENV",
                                    "AWS_SECRET_ACCESS_KEY": "s"}, config).access_key == "AKIDENV"
        assert resolve_credentials({**pod, "AWS_SHARED_CREDENTIALS_FILE": str(shared)},
                                   config).access_key == "AKIDFILE"
        assert endpoint.requests == []
        found = resolve_credentials(pod, config)
        assert (found.access_key, found.token) == ("AKIDPOD", "t")
        assert found.source == f"container credentials ({endpoint.url}/creds)"
        assert found.expires == datetime(2099, 1, 1, tzinfo=timezone.utc).timestamp()
    assert len(endpoint.requests) == 1


def test_a_full_uri_off_loopback_over_http_is_refused_before_any_connection():
    env = {**NO_IMDS, "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://credentials.invalid/v1"}
    with pytest.raises(S3Error, match=r"fetched only over https, from a loopback address, or "
                                      r"from the ECS/EKS agent \(169\.254\.170\.2, "):
        resolve_credentials(env, S3Config())
    # The relative URI (ECS task roles) always means the ECS agent, as botocore builds it.
    assert container_url({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc",
                          "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:1/x"}) == \
        f"http://{ECS_AGENT}/v2/credentials/abc"


def test_a_token_with_a_line_break_is_not_sent(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("abc\r\nX-Injected: 1")
    with serving(agent({})) as endpoint:
        env = {**NO_IMDS, "AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint.url,
               "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file)}
        with pytest.raises(S3Error, match="holds a line break"):
            resolve_credentials(env, S3Config())
    assert endpoint.requests == []


@pytest.mark.s3
def test_instance_metadata_v2_last(moto_s3, tmp_path):
    """IMDSv2 as EC2 answers it: a PUT for a session token, then the role and its keys only
    with that token (IMDSv1 requests are refused, as on instances requiring v2)."""
    keys = {**session_keys(moto_s3, f"imds-{tmp_path.name[-8:]}"), "Code": "Success"}
    session = "imds-session-token"

    def imds(handler: BaseHTTPRequestHandler) -> tuple[int, Any]:
        if handler.command == "PUT" and handler.path == "/latest/api/token":
            ttl = handler.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            return (200, session.encode()) if ttl else (400, b"")
        if handler.headers.get("X-aws-ec2-metadata-token") != session:
            return 401, b""
        base = "/latest/meta-data/iam/security-credentials/"
        if handler.path == base:
            return 200, b"mlship-node-role"
        return (200, keys) if handler.path == base + "mlship-node-role" else (404, b"")

    bucket = moto_s3.new_bucket()
    moto_s3.client().put_object(Bucket=bucket, Key="k", Body=b"from imds")
    with serving(imds) as endpoint:
        env = moto_s3.env(AWS_EC2_METADATA_DISABLED="false",
                          AWS_EC2_METADATA_SERVICE_ENDPOINT=endpoint.url)
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        client = S3Client(environ=env)
        assert client.get(bucket, "k") == b"from imds"
        assert client.credentials().source == f"instance metadata role mlship-node-role " \
                                              f"({endpoint.url})"
        with pytest.raises(S3Error, match=r"instance metadata: disabled"):
            resolve_credentials({**env, "AWS_EC2_METADATA_DISABLED": "true"}, S3Config())
    assert endpoint.requests[0]["method"] == "PUT"
