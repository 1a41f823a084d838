"""Log set-up for the server process: plain or JSON lines on stderr, configured by ``run``.

Nothing here runs at import; ``configure`` is called once by ``server.run``. Request bodies are
never logged (they may hold personal data); the optional access log has method, path, status and
duration only.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

from mlship_runtime.settings import RuntimeSettings


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the shape log pipelines (Loki, CloudWatch) parse without rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(settings: RuntimeSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # uvicorn's per-request access lines would duplicate ours and cost throughput.
    logging.getLogger("uvicorn.access").disabled = True
