"""The code's shape, checked: no import cycle inside vitlab/, short functions, modules a reader can hold in their head.

These are the limits ARCHITECTURE.md promises a reader. Imports inside functions count as edges too: hiding a cycle
in a function does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vitlab"
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
MAX_FIGURE_FUNCTION_LINES = 80  # lessons only: a function that draws a figure may spend more lines on it
FIGURE_WORDS = ("figure", "plot", "draw")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The vitlab modules `path` imports anywhere in its body (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from vitlab.data import batches` names a module; `from vitlab import capture` may name one too.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None. Depth-first search with colours."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        targets = imported_modules(path, set(modules))
        # A package's __init__ importing its own submodules is how a package exports names, not a cycle; a
        # submodule importing its package (for a name the package re-exports) is an edge to the package.
        graph[name] = {t for t in targets if t != name and not (path.name == "__init__.py" and t.startswith(name))}
    return graph


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_inside_vitlab() -> None:
    graph = import_graph()
    assert len(graph) > 20  # the walk found the package
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def python_files(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


@pytest.mark.parametrize("path", python_files("vitlab", "lessons"), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_short(path: Path) -> None:
    source = path.read_text()
    assert len(source.splitlines()) < MAX_MODULE_LINES, f"{path.name} has {len(source.splitlines())} lines"
    in_lessons = path.parent.name == "lessons"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            figure = in_lessons and any(word in node.name for word in FIGURE_WORDS)
            limit = MAX_FIGURE_FUNCTION_LINES if figure else MAX_FUNCTION_LINES
            assert length <= limit, f"{path.name}:{node.lineno} {node.name} is {length} lines (limit {limit})"
