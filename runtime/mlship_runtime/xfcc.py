"""The caller's identity behind a mesh sidecar: Envoy's ``x-forwarded-client-cert`` header."""

from __future__ import annotations

import re

MAX_XFCC = 16 * 1024
MAX_IDENTITY = 512
# KEY=VALUE, the value bare or double-quoted (then it may hold , ; and \" escapes); pairs are
# separated by ; and elements (one per proxy hop) by ,
_XFCC_PAIR = re.compile(r'\s*([^=,;\s]+)=("(?:[^"\\]|\\.)*"|[^,;"]*)\s*([,;]?)')
_ESCAPED = re.compile(r"\\(.)")


def forwarded_identity(header: bytes) -> str | None:
    """The SPIFFE ID (``URI=spiffe://...``) of the last element of an
    ``x-forwarded-client-cert`` header: the one the pod's own sidecar appended for the peer
    it terminated mTLS with (elements before it came from further hops). Quoted values may
    hold ``,`` ``;`` and ``\\"``; a malformed or oversized header gives None."""
    if len(header) > MAX_XFCC:
        return None
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError:
        return None
    elements: list[list[tuple[str, str]]] = [[]]
    position = 0
    while position < len(text):
        pair = _XFCC_PAIR.match(text, position)
        if pair is None or pair.end() == position:
            return None
        key, value, separator = pair.groups()
        if value.startswith('"'):
            value = _ESCAPED.sub(r"\1", value[1:-1])
        elements[-1].append((key, value))
        position = pair.end()
        if separator == ",":
            elements.append([])
        elif not separator and position < len(text):
            return None
    last = next((element for element in reversed(elements) if element), [])
    for name, uri in last:
        if name.lower() == "uri" and uri.startswith("spiffe://"):
            return uri[:MAX_IDENTITY]
    return None
