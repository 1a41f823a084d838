"""Log set-up for the server process: plain or JSON lines on stderr, configured by ``run``.

Nothing here runs at import; ``configure`` is called once by ``server.run``. Request bodies are
never logged (they may hold personal data); the optional access log has method, path, status and
duration only. What a client or a model source controls (a path, a URL, an error text) cannot
forge a line: plain lines escape control characters (CR, LF, ANSI escapes) as ``\\xNN``, JSON
lines are escaped by the encoder, and in both the signature, credential and token of a
pre-signed URL and the password of a ``scheme://user:password@host`` URL are redacted.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

from mlship_runtime.settings import RuntimeSettings

REDACTED = "REDACTED"
# Query parameters that carry a credential: SigV4 and SigV2 pre-signed S3 URLs, GCS signed URLs,
# Azure SAS, and generic tokens.
_SECRET_PARAMS = re.compile(
    r"(?i)([?&;](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|"
    r"awsaccesskeyid|x-goog-signature|x-goog-credential|sig|token|access_token|auth|"
    r"password|passwd|secret|api[-_]?key|key)=)[^&;#\s\"']*")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/@:\s\"']*:)[^/@\s\"']*@")
# C0 controls (CR, LF, ESC of ANSI sequences...), DEL and C1 controls: written as \xNN.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7f, 0xa0))}
_CONTROLS_KEEP_NEWLINE = {code: text for code, text in _CONTROLS.items() if code != 0x0a}


def redact(text: str) -> str:
    """``text`` with URL credentials replaced by ``REDACTED``."""
    if "=" in text:
        text = _SECRET_PARAMS.sub(rf"\g<1>{REDACTED}", text)
    if "@" in text:
        text = _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)
    return text


def escape(text: str) -> str:
    """``text`` on one line: every control character as ``\\xNN``."""
    return text.translate(_CONTROLS)


def one_line(error: BaseException) -> str:
    """An exception's first line, or its type when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class PlainFormatter(logging.Formatter):
    """``time level logger: message``, one line per record (a traceback keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name
        record.message = escape(redact(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:
        return redact(super().formatException(ei)).translate(  # type: ignore[arg-type]
            _CONTROLS_KEEP_NEWLINE)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the shape log pipelines (Loki, CloudWatch) parse without rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


def configure(settings: RuntimeSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # uvicorn's per-request access lines would duplicate ours and cost throughput.
    logging.getLogger("uvicorn.access").disabled = True
