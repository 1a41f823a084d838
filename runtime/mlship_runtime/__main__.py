"""``python -m mlship_runtime --model PATH [options]``: the container's ENTRYPOINT.

Settings come from ``MLSHIP_RUNTIME_<FIELD>`` env vars, overridden by options; invalid settings
exit 2 with one line saying which and why.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from mlship_runtime.options import parse_settings
    from mlship_runtime.server import run

    try:
        settings = parse_settings(argv)
    except ValueError as exc:
        print(f"mlship-runtime: invalid settings: {exc}", file=sys.stderr)
        return 2
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
