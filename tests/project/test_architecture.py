"""The package tree is the pipeline: no import circles, and no module imports from a later stage.

Counts every import, at module level, inside functions and under TYPE_CHECKING alike: a
deferred import still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Each stage may import from the stages before it, never after (the runtime stands apart).
STAGES = ["mlship.errors", "mlship.resources", "mlship.kube", "mlship.config", "mlship.model",
          "mlship.render", "mlship.serving", "mlship.image", "mlship.cluster", "mlship.rollout",
          "mlship.cli", "mlship.__main__"]


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(modules: dict[str, Path], package: str) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] == package:
                    targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}"
                               in modules else node.module for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names
                           if alias.name.split(".")[0] == package]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize(("root", "package"), [(REPO / "mlship", "mlship"),
                                               (REPO / "runtime" / "mlship_runtime",
                                                "mlship_runtime")])
def test_no_import_circles(root: Path, package: str) -> None:
    assert _cycles(_imports(_modules(root), package)) == []


def _stage(module: str) -> int | None:
    return next((i for i, stage in enumerate(STAGES)
                 if module == stage or module.startswith(stage + ".")), None)


def test_no_module_imports_from_a_later_stage() -> None:
    graph = _imports(_modules(REPO / "mlship"), "mlship")
    later = sorted((module, target) for module, targets in graph.items() for target in targets
                   if (_stage(module) or 0) < (_stage(target) or 0))
    assert later == []


def test_the_runtime_imports_nothing_of_mlship() -> None:
    """It ships alone in the image."""
    for path in (REPO / "runtime" / "mlship_runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "mlship", path
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "mlship" for a in node.names), path


def test_modules_stay_small() -> None:
    sizes = {path.relative_to(REPO).as_posix(): len(path.read_text().splitlines())
             for root in (REPO / "mlship", REPO / "runtime" / "mlship_runtime")
             for path in root.rglob("*.py")}
    assert {path: lines for path, lines in sizes.items() if lines > 400} == {}
