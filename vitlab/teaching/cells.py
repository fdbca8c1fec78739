"""A lesson as cells: read a jupytext `py:percent` file and run its code cells, as a script or a test does.

A lesson file is a notebook written as Python: `# %% [markdown]` starts a cell of prose (each line a comment), `# %%`
a cell of code. Jupyter (with jupytext) and VS Code open it as a notebook; `python lessons/NN_topic.py` runs it
through `run_lesson_file`, which executes the code cells in order in one namespace, with the command line the
lesson's `start` reads, and vitlab's exit codes:

    code = run_lesson_file("lessons/07_rollout.py", ["--discard", "0.5"])   # 0, or 2 after a one-line message
    code = run_lesson_file(path, [], replace={"patchify": lambda real: wrong_order})   # a test breaks one name

A `VitlabError` (missing weights, a refused flag) becomes one line on stderr and exit code 2; a `SystemExit` in a
cell (--help, or a lesson that ends early) gives its code; anything else, in particular a failed `assert_same`,
raises with its traceback, whose line numbers are the file's. At the end the run prints the lesson's questions
(its last markdown cell), which a notebook shows as a cell instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from vitlab.cli import command
from vitlab.errors import VitlabError

MARKER = re.compile(r"^# %%(?P<rest>.*)$")  # jupytext's percent format: "# %%" code, "# %% [markdown]" prose
QUESTIONS = "## Questions"  # the heading of a lesson's last markdown cell
Kind = Literal["code", "markdown", "raw"]  # raw cells (jupytext's "[raw]") are read and left out


@dataclass(frozen=True)
class Cell:
    """One cell of a lesson file."""

    kind: Kind
    source: str  # code as written; markdown without its "# " comment prefixes
    line: int  # the file's line number of the cell's first source line (1 = the file's first line)


@dataclass(frozen=True)
class LessonRun:
    """What `start` reads while `run_lesson_file` runs a lesson (None in a notebook: there is no such run)."""

    argv: list[str]  # the command line after the lesson's own FLAGS
    title: str  # the first line of the lesson's first markdown cell, for --help
    flags_only: bool = False  # stop once the flags are parsed and checked (run_all's check before it runs anything)


class FlagsChecked(Exception):
    """Raised by `start` in a flags-only run: the command line passed every check that needs no model."""


_ACTIVE: ContextVar[LessonRun | None] = ContextVar("vitlab_lesson_run", default=None)


def active_run() -> LessonRun | None:
    """The run `run_lesson_file` is making, or None (a notebook kernel, or a lesson file started by Python)."""
    return _ACTIVE.get()


def read_cells(path: str | Path) -> list[Cell]:
    """A py:percent file's cells in order; lines before the first marker (jupytext's header) belong to none."""
    cells: list[Cell] = []
    kind: Kind | None = None
    first, body = 0, []
    for number, text in enumerate([*Path(path).read_text().splitlines(), "# %%"], start=1):
        match = MARKER.match(text)
        if match is None:
            body.append(text)
            continue
        if kind is not None:
            cells.append(_cell(kind, body, first))
        kind, first, body = _kind(match["rest"]), number + 1, []
    return [cell for cell in cells if cell.kind != "raw"]


def _kind(rest: str) -> Kind:
    """A cell's kind from what follows "# %%" (an optional title, then "[markdown]", "[md]" or "[raw]")."""
    found = re.search(r"\[(markdown|md|raw)\]", rest)
    return "code" if found is None else "raw" if found[1] == "raw" else "markdown"


def _cell(kind: Kind, body: list[str], first: int) -> Cell:
    """A cell from its lines; `first` is the line number after its marker, moved past leading blank lines."""
    if kind == "markdown":
        body = [re.sub(r"^# ?", "", line) for line in body]
    return Cell(kind, "\n".join(body).strip("\n") + "\n", first + _leading_blank_lines(body))


def _leading_blank_lines(body: list[str]) -> int:
    return next((index for index, line in enumerate(body) if line.strip()), len(body))


def lesson_title(cells: Sequence[Cell]) -> str:
    """The first line of the first markdown cell, without its '#' heading marks."""
    first = next((cell for cell in cells if cell.kind == "markdown"), None)
    return first.source.splitlines()[0].lstrip("# ").strip() if first else ""


def questions(cells: Sequence[Cell]) -> str | None:
    """The lesson's closing questions: its last markdown cell when that starts with '## Questions'."""
    last = cells[-1] if cells else None
    return last.source.strip() if last and last.kind == "markdown" and last.source.startswith(QUESTIONS) else None


def run_lesson_file(path: str | Path, argv: Sequence[str] = (),
                    replace: Mapping[str, Callable[[Any], Any]] | None = None) -> int:
    """Run a lesson file's code cells with `argv` as its command line; its exit code (0, or 2 for a VitlabError).

    `replace` is for tests: after the cell that defines a name, the name is bound to `replace[name](old value)`,
    so a test can break the function a lesson uses and watch its assertion fail. PyTorch's thread count is
    restored afterwards (a lesson sets it for its model).
    """
    path = Path(path)
    cells = read_cells(path)
    threads = torch.get_num_threads()

    @command("vitlab")
    def execute(_: Sequence[str] | None) -> int:
        try:
            with _running(LessonRun(list(argv), lesson_title(cells))):
                _execute(path, cells, replace or {})
        except SystemExit as stop:  # --help, or a lesson that ends early with a code (sys.exit in a script)
            return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if (asked := questions(cells)) is not None:
            print("\n" + asked + "\n")
        return 0

    try:
        return execute(None)
    finally:
        torch.set_num_threads(threads)


def check_flags(path: str | Path, argv: Sequence[str]) -> VitlabError | None:
    """Run a lesson only up to its `start`: None when it takes `argv`, else the error it would refuse them with.

    Nothing is loaded or written; the lesson's imports run (they are cheap once another lesson has run them).
    """
    path = Path(path)
    cells = read_cells(path)
    try:
        with _running(LessonRun(list(argv), lesson_title(cells), flags_only=True)):
            _execute(path, cells, {})
    except FlagsChecked:
        return None
    except VitlabError as error:
        return error
    raise RuntimeError(f"{path.name} never calls vitlab.teaching.lesson.start, so its flags cannot be checked")


@contextmanager
def _running(run: LessonRun) -> Iterator[None]:
    token = _ACTIVE.set(run)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _execute(path: Path, cells: Sequence[Cell], replace: Mapping[str, Callable[[Any], Any]]) -> None:
    """Execute the code cells in one fresh namespace, as a kernel would; apply `replace` as names appear."""
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    pending = dict(replace)
    for cell in cells:
        if cell.kind != "code":
            continue
        code = compile("\n" * (cell.line - 1) + cell.source, str(path), "exec")  # tracebacks show the file's lines
        exec(code, namespace)  # running the lesson's own code is the point
        for name in [name for name in pending if name in namespace]:
            namespace[name] = pending.pop(name)(namespace[name])
    if pending:
        raise ValueError(f"{path.name} never defines {', '.join(sorted(pending))}: nothing to replace")
