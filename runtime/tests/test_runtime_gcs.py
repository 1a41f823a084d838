"""Google Cloud Storage: the runtime serves gs:// models from a real emulator (fake-gcs-server
on loopback) with every sha256 verified, and finds OAuth2 tokens the way Google's libraries do,
each link against a loopback fake that checks what a real endpoint checks (the JWT's RS256
signature and claims, the metadata server's Metadata-Flavor header)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from mlship_runtime import gcp_credentials, rs256
from mlship_runtime.gcs import GCSClient, GCSConfig, GCSError
from mlship_runtime.manifest import MANIFEST_NAME, Manifest, ManifestFile
from test_runtime_fetch import error_lines, infer, wait_exit

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(fmt: serialization.PrivateFormat) -> str:
    return KEY.private_bytes(serialization.Encoding.PEM, fmt,
                             serialization.NoEncryption()).decode()


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8,
                                 serialization.PrivateFormat.TraditionalOpenSSL])
def test_rs256_signatures_verify_with_cryptography(fmt):
    key = rs256.load_pem(_pem(fmt))
    for message in (b"", b"header.claims", bytes(range(256)) * 40):
        KEY.public_key().verify(rs256.sign(key, message), message, padding.PKCS1v15(),
                                hashes.SHA256())
    assert "BEGIN" not in repr(key)
    assert str(key.d) not in repr(key)


@pytest.mark.parametrize(("pem", "problem"), [
    ("not a key", "not PEM text"),
    ("-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----", "not base64"),
    ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "a PUBLIC KEY"),
    ("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----", "PKCS#8"),
])
def test_unusable_keys_are_named_not_dumped(pem, problem):
    with pytest.raises(rs256.KeyFormatError, match=problem):
        rs256.load_pem(pem)


class _Fake(http.server.BaseHTTPRequestHandler):
    """A loopback endpoint whose answers a test sets: ``route(handler) -> (status, headers,
    body)``; every request is recorded."""

    route: Callable[[_Fake], tuple[int, dict[str, str], bytes]]
    seen: list[dict[str, Any]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.seen.append({"method": self.command, "path": self.path,
                          "headers": dict(self.headers), "body": self.body})
        status, headers, body = type(self).route(self)
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[Callable[..., tuple[str, list[dict[str, Any]]]]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(route: Callable[[Any], tuple[int, dict[str, str], bytes]]
              ) -> tuple[str, list[dict[str, Any]]]:
        seen: list[dict[str, Any]] = []
        handler = type("Handler", (_Fake,), {"route": staticmethod(route), "seen": seen})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _token_endpoint(request: Any) -> tuple[int, dict[str, str], bytes]:
    """What Google's token endpoint checks of a service account's assertion."""
    form = urllib.parse.parse_qs(request.body.decode())
    if form.get("grant_type") == ["refresh_token"]:
        ok = form.get("refresh_token") == ["refresh-1"] and form.get("client_secret") == ["s"]
        return (200, {}, json.dumps({"access_token": "user-token", "expires_in": 3599})
                .encode()) if ok else (400, {}, b'{"error": "invalid_grant"}')
    header, claims, signature = form["assertion"][0].split(".")
    padded = signature + "=" * (-len(signature) % 4)
    try:
        KEY.public_key().verify(base64.urlsafe_b64decode(padded),
                                f"{header}.{claims}".encode(), padding.PKCS1v15(),
                                hashes.SHA256())
    except Exception:
        return 400, {}, b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}'
    body = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    # Checked here and answered as Google does (an assertion here would only kill the thread).
    claims_ok = (body["iss"] == "loader@mlship-test.iam.gserviceaccount.com"
                 and body["scope"] == gcp_credentials.READ_ONLY
                 and body["aud"] == f"http://{request.headers['Host']}/token"
                 and 3590 <= body["exp"] - body["iat"] <= 3600
                 and abs(body["iat"] - time.time()) < 60
                 and json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
                 == {"alg": "RS256", "typ": "JWT", "kid": "k1"})
    if not claims_ok:
        return 400, {}, b'{"error": "invalid_grant", "error_description": "bad claims"}'
    return 200, {}, json.dumps({"access_token": "sa-token", "expires_in": 3599,
                                "token_type": "Bearer"}).encode()


def _key_file(tmp_path: Path, token_host: str, key: str | None = None) -> Path:
    path = tmp_path / "key.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "mlship-test", "private_key_id": "k1",
        "private_key": key or _pem(serialization.PrivateFormat.PKCS8),
        "client_email": "loader@mlship-test.iam.gserviceaccount.com",
        "token_uri": f"http://{token_host}/token"}))
    return path


def _object_store(request: Any) -> tuple[int, dict[str, str], bytes]:
    """A GCS JSON API that wants a bearer token, as the real one does."""
    if request.headers.get("Authorization") not in ("Bearer sa-token", "Bearer user-token",
                                                    "Bearer wi-token"):
        return 401, {}, b'{"error": {"code": 401, "message": "Invalid Credentials"}}'
    return 200, {}, b"model bytes"


def _get(environ: dict[str, str], store: str) -> bytes:
    client = GCSClient(GCSConfig(f"http://{store}"), environ=environ)
    return client.get("b", "p/m.onnx")


def test_service_account_key_file_signs_a_jwt_the_token_endpoint_accepts(fake, tmp_path):
    token_host, token_seen = fake(_token_endpoint)
    store, store_seen = fake(_object_store)
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(_key_file(tmp_path, token_host)),
           "GCE_METADATA_HOST": "127.0.0.1:9", "HOME": str(tmp_path)}
    assert _get(env, store) == b"model bytes"
    assert store_seen[0]["path"] == "/storage/v1/b/b/o/p%2Fm.onnx?alt=media"
    assert len(token_seen) == 1


def test_a_key_the_endpoint_does_not_know_is_refused_with_the_file_named(fake, tmp_path):
    token_host, _ = fake(_token_endpoint)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    path = _key_file(tmp_path, token_host, key=other)
    with pytest.raises(GCSError, match=f"{path} .*refused: HTTP 400 Invalid JWT Signature") \
            as err:
        _get({"GOOGLE_APPLICATION_CREDENTIALS": str(path)}, "127.0.0.1:9")
    assert err.value.code == "NoCredentials"
    assert "PRIVATE KEY" not in str(err.value)


def test_gcloud_user_credentials_on_a_laptop(fake, tmp_path):
    token_host, _ = fake(_token_endpoint)
    store, store_seen = fake(_object_store)
    config = tmp_path / "gcloud"
    config.mkdir()
    (config / "application_default_credentials.json").write_text(json.dumps({
        "type": "authorized_user", "client_id": "c", "client_secret": "s",
        "refresh_token": "refresh-1", "quota_project_id": "billing-project",
        "token_uri": f"http://{token_host}/token"}))
    assert _get({"CLOUDSDK_CONFIG": str(config), "GCE_METADATA_HOST": "127.0.0.1:9"},
                store) == b"model bytes"
    assert store_seen[0]["headers"]["x-goog-user-project"] == "billing-project"


def _metadata(request: Any) -> tuple[int, dict[str, str], bytes]:
    if request.headers.get("Metadata-Flavor") != "Google" or \
            request.path != gcp_credentials.METADATA_TOKEN_PATH:
        return 403, {}, b"missing Metadata-Flavor"
    return 200, {"Metadata-Flavor": "Google"}, json.dumps(
        {"access_token": "wi-token", "expires_in": 3599, "token_type": "Bearer"}).encode()


def test_workload_identity_through_the_metadata_server(fake, tmp_path):
    metadata, seen = fake(_metadata)
    store, _ = fake(_object_store)
    env = {"GCE_METADATA_HOST": metadata, "HOME": str(tmp_path)}
    assert _get(env, store) == b"model bytes"
    assert len(seen) == 1


def test_no_credentials_anywhere_is_one_line_with_what_to_do(tmp_path):
    env = {"GCE_METADATA_HOST": "127.0.0.1:9", "HOME": str(tmp_path)}
    with pytest.raises(GCSError, match=r"no Google credentials found .*GOOGLE_APPLICATION_"
                                       r"CREDENTIALS.*Workload Identity"):
        _get(env, "127.0.0.1:9")
    missing = {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "absent.json")}
    with pytest.raises(GCSError, match=r"absent\.json: no such file"):
        _get(missing, "127.0.0.1:9")


def test_emulator_host_sends_no_credentials(fake, tmp_path):
    def anonymous(request: Any) -> tuple[int, dict[str, str], bytes]:
        return (200, {}, b"ok") if "Authorization" not in request.headers else (400, {}, b"")

    store, _ = fake(anonymous)
    client = GCSClient(environ={"STORAGE_EMULATOR_HOST": store,
                                "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "no.json")})
    assert client.config.anonymous
    assert client.get("b", "k") == b"ok"


# ---- end to end against fake-gcs-server -------------------------------------------------

@pytest.fixture(scope="module")
def mlp_external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bench MLP with its weights in weights/mlp.bin (as test_runtime_fetch's)."""
    import modelzoo

    root = tmp_path_factory.mktemp("external")
    inline = modelzoo.mlp(root / "inline.onnx")
    (root / "weights").mkdir()
    onnx.save_model(onnx.load(str(inline)), str(root / "mlp.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights/mlp.bin", size_threshold=1024)
    inline.unlink()
    return root / "mlp.onnx"


@pytest.mark.gcs
def test_serves_a_gs_model_with_every_sha256_verified(fake_gcs, start_server, mlp_external,
                                                      tmp_path):
    import numpy as np
    import onnxruntime as ort

    bucket = fake_gcs.new_bucket()
    manifest = fake_gcs.upload_model(bucket, "mlp/v1/", mlp_external, ("weights/mlp.bin",))
    cache = tmp_path / "cache"
    server = start_server(f"gs://{bucket}/mlp/v1/mlp.onnx", "--cache-dir", str(cache),
                          "--model-sha256", manifest.digest, env=fake_gcs.env())
    server.wait_ready(60)
    x = np.random.default_rng(7).standard_normal((2, 256)).astype(np.float32)
    expected = ort.InferenceSession(str(mlp_external)).run(None, {"x": x})[0]
    np.testing.assert_allclose(infer(server.url, "mlp", x), expected, rtol=1e-5, atol=1e-5)
    assert "downloaded 2 of 2 file(s)" in server.log()
    assert (cache / manifest.digest / "weights" / "mlp.bin").is_file()
    assert server.stop() == 0


@pytest.mark.gcs
@pytest.mark.parametrize("case", ["tampered", "longer than its manifest", "missing object",
                                  "missing bucket", "pinned digest differs"])
def test_gs_failures_exit_11_with_one_clear_line(fake_gcs, start_server, mlp_external,
                                                 tmp_path, case):
    bucket = fake_gcs.new_bucket()
    manifest = fake_gcs.upload_model(bucket, "p/", mlp_external, ("weights/mlp.bin",))
    weights = bytearray((mlp_external.parent / "weights/mlp.bin").read_bytes())
    source, args = f"gs://{bucket}/p/mlp.onnx", []
    if case == "tampered":
        weights[100] ^= 0xFF
        fake_gcs.put(bucket, "p/weights/mlp.bin", bytes(weights))
        expected = f"gs://{bucket}/p/weights/mlp.bin: sha256 mismatch: expected " \
                   f"{manifest.files[1].sha256}"
        assert hashlib.sha256(weights).hexdigest() != manifest.files[1].sha256
    elif case == "longer than its manifest":
        fake_gcs.put(bucket, "p/weights/mlp.bin", bytes(weights) + b"\0" * 4096)
        expected = f"gs://{bucket}/p/weights/mlp.bin: larger than the " \
                   f"{manifest.files[1].size_bytes} bytes its manifest gives"
    elif case == "missing object":
        fake_gcs.delete(bucket, "p/weights/mlp.bin")
        expected = f"gs://{bucket}/p/weights/mlp.bin: no such object"
    elif case == "missing bucket":
        source = "gs://mlship-no-such-bucket/p/mlp.onnx"
        expected = "gs://mlship-no-such-bucket"
    else:
        args = ["--model-sha256", "0" * 64]
        expected = f"the model's digest is {manifest.digest} but the configuration pins"
    server = start_server(source, "--cache-dir", str(tmp_path / "c"), *args,
                          env=fake_gcs.env())
    code, ever_ready = wait_exit(server)
    assert (code, ever_ready) == (11, False), server.log()
    [line] = error_lines(server)
    assert expected in line, line
    assert "Traceback" not in server.log()
    assert not list((tmp_path / "c").rglob("*.bin"))


@pytest.mark.gcs
def test_gcs_client_lists_uploads_and_round_trips(fake_gcs, tmp_path):
    bucket = fake_gcs.new_bucket()
    client = GCSClient(environ=fake_gcs.env())
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 4096)
    client.upload(bucket, "a/b c/big.bin", source)
    document = Manifest("m.onnx", (ManifestFile("m.onnx", 1, "a" * 64),)).to_json().encode()
    client.upload(bucket, "a/" + MANIFEST_NAME, document, "application/json")
    assert client.get(bucket, f"a/{MANIFEST_NAME}") == document
    assert sorted(client.list(bucket, "a/")) == [("a/b c/big.bin", 1 << 20),
                                                 (f"a/{MANIFEST_NAME}", len(document))]
    size, digest = client.download(bucket, "a/b c/big.bin", tmp_path / "out", max_bytes=1 << 20)
    assert (size, digest) == (1 << 20, hashlib.sha256(source.read_bytes()).hexdigest())
    with pytest.raises(GCSError) as err:
        client.download(bucket, "a/b c/big.bin", tmp_path / "out", max_bytes=1000)
    assert err.value.code == "TooLarge"
    with pytest.raises(GCSError) as err:
        client.get(bucket, "a/absent")
    assert err.value.code == "NoSuchKey"
