"""Write the lessons as .ipynb notebooks, for Colab or a Jupyter without jupytext.

    python -m vitlab.teaching.notebooks                       # lessons/NN_topic.py -> lesson_notebooks/NN_topic.ipynb
    python -m vitlab.teaching.notebooks --only 01 07 --out DIR

Run it from the repository's folder. The lesson files stay the single source: the notebooks are written into a
folder git ignores (lesson_notebooks/), never beside the lessons, and are rewritten each time. Needs jupytext
(pip install jupytext, or vitlab's dev extras).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from vitlab.cli import Parser, command, folder_to_write
from vitlab.errors import VitlabError

LESSON_PATTERN = "[0-9][0-9]_*.py"


def lesson_files(folder: str | Path, only: Sequence[str] | None = None) -> list[Path]:
    """The lesson files in course order, optionally only those whose name starts with one of `only` ("07")."""
    files = sorted(Path(folder).glob(LESSON_PATTERN))
    return [path for path in files if not only or path.stem.startswith(tuple(only))]


def write_notebooks(lessons: Sequence[Path], out: str | Path) -> list[Path]:
    """Convert each py:percent lesson into `out`/NN_topic.ipynb (markdown and code cells, no outputs)."""
    jupytext = _jupytext()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in lessons:
        notebook = jupytext.read(path, fmt="py:percent")
        target = folder / f"{path.stem}.ipynb"
        jupytext.write(notebook, target, fmt="ipynb")
        written.append(target)
    return written


def _jupytext():
    """The jupytext module, or a one-line error that says how to install it."""
    try:
        import jupytext
    except ImportError:
        raise VitlabError("Writing notebooks needs jupytext, which is not installed: pip install jupytext (or "
                          "pip install -e '.[dev]' in vitlab's folder).") from None
    return jupytext


@command("vitlab")
def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m vitlab.teaching.notebooks", description=__doc__.splitlines()[0],
                    allow_abbrev=False)
    parser.add_argument("--lessons", metavar="DIR", default="lessons",
                        help="the folder of the lesson files (default: lessons, from the repository's folder)")
    parser.add_argument("--out", metavar="DIR", default="lesson_notebooks",
                        help="where the .ipynb files go (default: lesson_notebooks, which git ignores)")
    parser.add_argument("--only", nargs="+", metavar="NN", default=None, help="only these lessons, e.g. 01 07")
    args = parser.parse_args(argv)
    folder_to_write("out", args.out)
    lessons = lesson_files(args.lessons, args.only)
    if not lessons:
        wanted = f" matching --only {' '.join(args.only)}" if args.only else ""
        raise VitlabError(f"--lessons {args.lessons} holds no lesson file{wanted} (NN_topic.py). Run this from "
                          f"vitlab's folder, or give --lessons DIR.")
    if Path(args.out).resolve() == Path(args.lessons).resolve():
        raise VitlabError(f"--out {args.out} is the lessons' own folder: notebooks go to a folder of their own "
                          f"(for example --out lesson_notebooks), so that the .py files stay the only source.")
    for path in write_notebooks(lessons, args.out):
        print(f"  wrote {path}")
    print(f"Open them in Jupyter, or upload one to Colab (after installing vitlab there); {len(lessons)} notebooks.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
