"""Container HEALTHCHECK without curl: ``python -m mlship_runtime.healthcheck``.

Exits 0 when the local runtime answers ready, 1 otherwise. Reads the same port setting as the
server (``MLSHIP_RUNTIME_PORT``) so the image needs no extra tools.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("MLSHIP_RUNTIME_PORT", "8080")
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
