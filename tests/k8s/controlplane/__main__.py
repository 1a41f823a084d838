"""``python tests/k8s/controlplane --check|--serve`` (or ``python -m controlplane`` with tests/k8s
on the path): see :mod:`controlplane.selfcheck`."""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a directory: sys.path[0] is this package's own directory. Put its parent
    # (tests/k8s) there instead, so the modules import as controlplane.* and nothing else.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from controlplane.selfcheck import main

sys.exit(main())
