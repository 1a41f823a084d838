"""RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signing on the standard library, for the one thing the
runtime signs: the JWT a Google service account exchanges for an access token.

Why not ``cryptography``: its wheel (with cffi) adds ~13 MB to an image that has ~5 MB left
under its budget (docs/model-storage.md has the measurement), and signing one JWT an hour needs
only a DER parser and ``pow``. The key is a PEM ``PRIVATE KEY`` (PKCS#8, what Google's key
files hold) or ``RSA PRIVATE KEY`` (PKCS#1). Signing uses the CRT with RSA blinding (a fresh
random factor per signature, so the time taken says nothing about the key) and verifies its
own result before returning it, so a fault never leaks a signature that exposes a factor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import secrets
from dataclasses import dataclass

# DER of DigestInfo for SHA-256 (RFC 8017 section 9.2, note 1), followed by the 32-byte hash.
_SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")
_RSA_OID = bytes.fromhex("2a864886f70d010101")


class KeyFormatError(ValueError):
    """The key is not an RSA private key this module reads; says which part is wrong."""


@dataclass(frozen=True, repr=False)
class RsaKey:
    n: int
    e: int
    d: int
    p: int
    q: int

    def __repr__(self) -> str:  # never the private parts, in a log or a traceback
        return f"RsaKey({self.n.bit_length()} bits)"

    @property
    def size(self) -> int:
        return (self.n.bit_length() + 7) // 8


def _der(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(tag, contents, next offset) of the DER element at ``offset``."""
    if offset + 2 > len(data):
        raise KeyFormatError("truncated DER")
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise KeyFormatError("bad DER length")
        length = int.from_bytes(data[offset:offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise KeyFormatError("truncated DER")
    return tag, data[offset:offset + length], offset + length


def _sequence(data: bytes) -> list[tuple[int, bytes]]:
    tag, body, _ = _der(data, 0)
    if tag != 0x30:
        raise KeyFormatError("expected a DER SEQUENCE")
    return _elements(body)


def _elements(body: bytes) -> list[tuple[int, bytes]]:
    """The (tag, contents) of each element of a SEQUENCE's contents."""
    items, offset = [], 0
    while offset < len(body):
        item_tag, content, offset = _der(body, offset)
        items.append((item_tag, content))
    return items


def _pkcs1(der: bytes) -> RsaKey:
    items = _sequence(der)
    if len(items) < 9 or any(tag != 0x02 for tag, _ in items[:9]):
        raise KeyFormatError("not an RSAPrivateKey (PKCS#1)")
    version, n, e, d, p, q = (int.from_bytes(content, "big") for _, content in items[:6])
    if version != 0 or p * q != n or n.bit_length() < 2048:
        raise KeyFormatError("not a two-prime RSA key of at least 2048 bits")
    return RsaKey(n, e, d, p, q)


def load_pem(pem: str) -> RsaKey:
    """An RSA key from PEM text; KeyFormatError (never the key material) when it is not one."""
    lines = [line.strip() for line in pem.strip().splitlines()]
    if len(lines) < 3 or not lines[0].startswith("-----BEGIN ") or \
            not lines[-1].startswith("-----END "):
        raise KeyFormatError("not PEM text (-----BEGIN ... PRIVATE KEY-----)")
    kind = lines[0].removeprefix("-----BEGIN ").removesuffix("-----")
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("the PEM body is not base64") from None
    if kind == "RSA PRIVATE KEY":
        return _pkcs1(der)
    if kind != "PRIVATE KEY":
        raise KeyFormatError(f"a {kind}, not a PRIVATE KEY")
    items = _sequence(der)  # PrivateKeyInfo: version, AlgorithmIdentifier, OCTET STRING
    if len(items) < 3 or items[1][0] != 0x30 or items[2][0] != 0x04:
        raise KeyFormatError("not a PKCS#8 PrivateKeyInfo")
    algorithm = _elements(items[1][1])
    if not algorithm or algorithm[0] != (0x06, _RSA_OID):
        raise KeyFormatError("not an RSA key (Google service-account keys are RSA)")
    return _pkcs1(items[2][1])


def sign(key: RsaKey, message: bytes) -> bytes:
    """The RS256 signature of ``message``."""
    digest_info = _SHA256_PREFIX + hashlib.sha256(message).digest()
    padding = key.size - len(digest_info) - 3
    if padding < 8:
        raise KeyFormatError("the key is too small for SHA-256")
    m = int.from_bytes(b"\x00\x01" + b"\xff" * padding + b"\x00" + digest_info, "big")
    while True:
        r = secrets.randbelow(key.n - 2) + 2
        if math.gcd(r, key.n) == 1:
            break
    blinded = (m * pow(r, key.e, key.n)) % key.n
    # CRT: two half-size exponentiations (Garner's recombination).
    s1 = pow(blinded, key.d % (key.p - 1), key.p)
    s2 = pow(blinded, key.d % (key.q - 1), key.q)
    h = (pow(key.q, -1, key.p) * (s1 - s2)) % key.p
    s = ((s2 + h * key.q) * pow(r, -1, key.n)) % key.n
    if pow(s, key.e, key.n) != m:
        raise KeyFormatError("the signature does not verify: the key is inconsistent")
    return s.to_bytes(key.size, "big")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
