"""The stdlib S3 client: SigV4 against AWS's published example and botocore's signer, the
credential chain, and addressing. (Against a real endpoint: test_runtime_fetch.py.)"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from mlship_runtime.s3 import (
    EMPTY_SHA256,
    Credentials,
    S3Client,
    S3Config,
    S3Error,
    resolve_credentials,
    sign,
)

EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")


def test_sigv4_matches_the_aws_documentation_example():
    # "Example: GET Object" of the S3 SigV4 header-based authentication documentation.
    now = datetime(2013, 5, 24, tzinfo=timezone.utc)
    headers = {"host": "examplebucket.s3.amazonaws.com", "range": "bytes=0-9",
               "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": "20130524T000000Z"}
    authorization = sign("GET", "/test.txt", "", headers, EMPTY_SHA256, EXAMPLE, "us-east-1", now)
    assert authorization == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


@pytest.mark.parametrize(("key", "params", "token"), [
    ("models/v1/model.onnx", {}, None),
    ("odd keys/with spaces+plus/ü.onnx", {}, "session-token/=="),
    ("", {"list-type": "2", "prefix": "a b/", "continuation-token": "x/y+z="}, None),
])
def test_sigv4_agrees_with_botocore(key, params, token, monkeypatch):
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    creds = Credentials("AKIDEXAMPLE", "secret/with+chars", token)
    client = S3Client(S3Config(region="eu-west-1", endpoint_url="http://127.0.0.1:9000"),
                      environ={})
    host, path = client._location("bucket", key)
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    from mlship_runtime.s3 import _canonical_query

    query = _canonical_query(params)
    headers = {"host": host, "x-amz-date": "20260102T030405Z", "x-amz-content-sha256": EMPTY_SHA256}
    if token:
        headers["x-amz-security-token"] = token
    ours = sign("GET", path, query, headers, EMPTY_SHA256, creds, "eu-west-1", now)

    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: now.replace(tzinfo=None))
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method="GET", url=url)
    signer = S3SigV4Auth(BotoCredentials("AKIDEXAMPLE", "secret/with+chars", token), "s3",
                         "eu-west-1")
    signer.add_auth(request)
    theirs = request.headers["Authorization"]
    assert ours.split("Signature=")[1] == theirs.split("Signature=")[1]


def test_addressing_path_for_custom_endpoints_virtual_for_aws():
    custom = S3Client(S3Config(endpoint_url="http://127.0.0.1:5005"), environ={})
    assert custom._location("b-1", "k/x.onnx") == ("127.0.0.1:5005", "/b-1/k/x.onnx")
    aws = S3Client(S3Config(region="eu-west-1"), environ={})
    assert aws._location("models", "k") == ("models.s3.eu-west-1.amazonaws.com", "/k")
    assert aws._location("dotted.bucket", "k")[1] == "/dotted.bucket/k"  # TLS needs path-style
    virtual = S3Client(S3Config(endpoint_url="http://minio:9000", addressing_style="virtual"),
                       environ={})
    assert virtual._location("b-1", "k") == ("b-1.minio:9000", "/k")


def test_config_from_the_sdk_variables():
    config = S3Config.from_env({"AWS_DEFAULT_REGION": "ap-south-1",
                                "AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3":
                                "http://s3:2", "MLSHIP_RUNTIME_S3_ADDRESSING_STYLE": "PATH"})
    assert (config.region, config.endpoint_url, config.addressing_style) == (
        "ap-south-1", "http://s3:2", "path")
    with pytest.raises(S3Error, match="expected auto, path or virtual"):
        S3Config.from_env({"MLSHIP_RUNTIME_S3_ADDRESSING_STYLE": "sideways"})


def test_credential_chain_env_then_shared_file(tmp_path):
    shared = tmp_path / "credentials"
    shared.write_text("[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = s1\n"
                      "[team]\naws_access_key_id=AKIDTEAM\naws_secret_access_key=s2\n"
                      "aws_session_token=tok\n")
    config = S3Config()
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(shared)}
    assert resolve_credentials(env, config).access_key == "AKIDFILE"
    team = resolve_credentials({**env, "AWS_PROFILE": "team"}, config)
    assert (team.access_key, team.token, team.source) == ("AKIDTEAM", "tok", f"{shared} [team]")
    first = resolve_credentials({**env, "AWS_ACCESS_KEY_ID": "AKIDENV",
                                 "AWS_SECRET_ACCESS_KEY": "s3"}, config)
    assert first.access_key == "AKIDENV"
    with pytest.raises(S3Error, match=r"profile \[nope\] has no aws_access_key_id"):
        resolve_credentials({**env, "AWS_PROFILE": "nope"}, config)
    with pytest.raises(S3Error, match="no AWS credentials"):
        resolve_credentials({"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"},
                            config)
    with pytest.raises(S3Error, match="AWS_WEB_IDENTITY_TOKEN_FILE /nonexistent/token"):
        resolve_credentials({"AWS_ROLE_ARN": "arn:aws:iam::1:role/r",
                             "AWS_WEB_IDENTITY_TOKEN_FILE": "/nonexistent/token"}, config)


def test_unreachable_endpoint_is_one_line(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = S3Client(S3Config(endpoint_url=f"http://127.0.0.1:{port}"),
                      environ={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    with pytest.raises(S3Error, match=rf"s3://b-1/k: cannot reach http://127.0.0.1:{port}"):
        client.get("b-1", "k")
