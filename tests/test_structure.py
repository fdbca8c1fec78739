"""The code's shape, checked: the layers' import direction, no import cycle, short functions and modules.

These are the limits ARCHITECTURE.md promises a reader. Imports inside functions count as edges too: hiding a cycle
or an upward import in a function does not remove it.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vitlab"
MAX_MODULE_LINES = 400
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


# The layers, lowest first: a module imports only from its own layer or the layers below (ARCHITECTURE.md).
# `vitlab/__init__.py` re-exports the public API from every layer below the teaching tools and is imported by no
# module inside the package (an import of it would hide an upward edge).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("vitlab.errors", "vitlab.cli", "vitlab.archs", "vitlab.integrity", "vitlab.faults", "vitlab.atomic",
              "vitlab.shipped", "vitlab.model", "vitlab.device", "vitlab.capture_grad", "vitlab.matmul_attention",
              "vitlab.capture", "vitlab.data", "vitlab.plotting", "vitlab.external")),
    ("analysis", ("vitlab.analysis",)),
    ("training", ("vitlab.training",)),
    ("teaching", ("vitlab.teaching", "vitlab.explorer")),
    ("bench", ("vitlab.bench",)),
    ("commands", ("vitlab.finetune", "vitlab.pretrain")),
)


def layer_of(module: str) -> int:
    """The index in LAYERS of the layer `module` belongs to (a KeyError names a module no layer claims)."""
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise KeyError(f"{module} belongs to no layer of tests/test_structure.py's LAYERS: add it where it belongs")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every edge that goes from a layer to a layer above it, or into the package facade, as 'a -> b' lines."""
    wrong = []
    for source, targets in sorted(graph.items()):
        if source == "vitlab":
            continue
        for target in sorted(targets):
            if target == "vitlab" or layer_of(target) > layer_of(source):
                wrong.append(f"{source} ({LAYERS[layer_of(source)][0]}) -> {target}")
    return wrong


def test_the_layer_check_finds_a_planted_upward_import() -> None:
    graph = {"vitlab.model": {"vitlab.analysis.attention"}, "vitlab.analysis.attention": {"vitlab.capture"},
             "vitlab.capture": set(), "vitlab.training.demo": {"vitlab"}}
    assert upward_imports(graph) == ["vitlab.model (core) -> vitlab.analysis.attention",
                                     "vitlab.training.demo (training) -> vitlab"]


def test_every_module_imports_only_from_its_layer_or_below() -> None:
    wrong = upward_imports(import_graph())
    assert not wrong, "imports that go up a layer:\n" + "\n".join(wrong)


def test_nothing_in_vitlab_imports_the_bench() -> None:
    users = sorted(source for source, targets in import_graph().items()
                   if not source.startswith("vitlab.bench") and any(t.startswith("vitlab.bench") for t in targets))
    assert not users, f"{users} import vitlab.bench: the benchmark measures vitlab, nothing in vitlab depends on it"


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


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    suffixes = {".py", ".md", ".toml", ".json", ".txt", ".cfg", ""}
    return [ROOT / name for name in listed.splitlines() if Path(name).suffix in suffixes and (ROOT / name).is_file()]


def test_nothing_points_outside_the_repository() -> None:
    """A reader has only this repository: no path into a development machine's folders, and every relative link in
    the Markdown files names a file that is here."""
    outside = re.compile(r"\.\./shared/|/work/(main|wt)\b|shared/seed/")
    found = [f"{path.relative_to(ROOT)}:{n}" for path in tracked_text_files() if path != Path(__file__).resolve()
             for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if outside.search(line)]
    assert not found, f"paths outside the repository: {found}"
    broken = []
    for path in tracked_text_files():
        if path.suffix != ".md":
            continue
        for target in re.findall(r"\]\(([^)#\s]+)", path.read_text()):
            if "://" not in target and not target.startswith("mailto:") and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, f"links to files that are not in the repository: {broken}"
