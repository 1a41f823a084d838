"""What the two pyproject files promise each other: the checkout's test extras cover the
runtime's own, the runtime's version has one source, and the image's runtime wheel is what
runtime/pyproject.toml builds."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import mlship_runtime
import tomllib

from mlship.image import wheelhouse

REPO = Path(__file__).resolve().parents[2]


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=~!;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_checkouts_test_extras_cover_the_runtimes() -> None:
    root = {_name(r) for r in _project(REPO / "pyproject.toml")["optional-dependencies"]["test"]}
    root |= {_name(r) for r in _project(REPO / "pyproject.toml")["dependencies"]}
    runtime = {_name(r) for r in
               _project(REPO / "runtime" / "pyproject.toml")["optional-dependencies"]["test"]}
    assert runtime - root == set()


def test_the_runtime_dependencies_are_mlships_too() -> None:
    root = {_name(r) for r in _project(REPO / "pyproject.toml")["dependencies"]}
    runtime = {_name(r) for r in _project(REPO / "runtime" / "pyproject.toml")["dependencies"]}
    assert runtime - root == set()


def test_the_runtime_wheel_is_built_from_its_pyproject(tmp_path: Path) -> None:
    project = _project(REPO / "runtime" / "pyproject.toml")
    assert project["dynamic"] == ["version"]  # one source: mlship_runtime/__init__.py
    first = wheelhouse.runtime_wheel(tmp_path)  # reproducible: tests/image/test_build_push.py
    assert first.name == f"mlship_runtime-{mlship_runtime.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(first) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"mlship_runtime-{mlship_runtime.__version__}.dist-info/METADATA")
    assert "mlship_runtime/server.py" in names
    assert "mlship_runtime/py.typed" in names
    requires = {_name(line.split(":", 1)[1].strip()) for line in metadata.decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert requires == {_name(r) for r in project["dependencies"]}
