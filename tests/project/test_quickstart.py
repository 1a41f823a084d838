"""docs/quickstart.md as a script: every fenced ``bash`` block runs, in order, in a fresh folder,
with `mlship` and `python` of this checkout; only the blocks marked ``<!-- needs a cluster -->``
(kind, k3d, a registry) are left out. The serving port is swapped for a free one."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "docs" / "quickstart.md"
SKIP_MARK = "<!-- needs a cluster -->"
_BLOCK = re.compile(r"^(?P<mark><!-- needs a cluster -->\n)?```bash\n(?P<body>.*?)^```$",
                    re.MULTILINE | re.DOTALL)


def blocks(text: str) -> list[tuple[bool, str]]:
    """(runs in the test, the block's text) for every bash block."""
    return [(match["mark"] is None, match["body"]) for match in _BLOCK.finditer(text)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_marks_leave_out_only_cluster_steps() -> None:
    found = blocks(QUICKSTART.read_text(encoding="utf-8"))
    skipped = [body for runs, body in found if not runs]
    assert QUICKSTART.read_text(encoding="utf-8").count(SKIP_MARK) == len(skipped)
    assert all(re.search(r"\b(kind|k3d|kubectl|docker run|--push|rollout|sed -i)\b", body)
               for body in skipped), skipped
    assert sum(runs for runs, _ in found) >= 4


@pytest.mark.slow
def test_every_quickstart_command_runs(tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, command in (("mlship", f'"{sys.executable}" -m mlship'),
                          ("python", f'"{sys.executable}"')):
        (tools / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (tools / name).chmod(0o755)
    port = str(_free_port())
    script = "set -euo pipefail\n" + "".join(
        body.replace("8080", port) for runs, body in blocks(QUICKSTART.read_text("utf-8"))
        if runs)
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLSHIP_")
           or key == "MLSHIP_WHEELHOUSE"}
    env.update(PATH=f"{tools}{os.pathsep}{env['PATH']}", NO_COLOR="1")
    result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (work / "mlship.yaml").is_file()
    assert (work / "mlship-out" / "k8s" / "deployment.yaml").is_file()
    assert (work / "build-context" / "wheels").is_dir()
    assert '"outputs"' in result.stdout  # curl's /predict answer
