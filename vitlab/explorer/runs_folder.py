"""Which checkpoints the explorer may read: only files under one runs folder, named when the app starts.

    streamlit run streamlit_app.py                          # the runs/ folder where the app was started
    streamlit run streamlit_app.py -- --runs /srv/vit-runs  # another folder (after streamlit's own "--")

Why: served to a classroom, anyone who reaches the page can type into the checkpoint field. Without a fence it
would open any file the server's account can read, and its error messages would tell who typed what exists where.
Inside the folder, a path is followed through symlinks first: a link that points out of the folder is refused too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vitlab.cli import Parser
from vitlab.errors import CheckpointError, UsageError

DEFAULT_RUNS = "runs"  # what python -m vitlab.finetune --out runs/NAME and the README use


def runs_folder(argv: Sequence[str]) -> Path:
    """The runs folder the person starting the app named with `--runs DIR` (default: runs).

    The app's arguments are its own (streamlit keeps those before its "--"), so anything else is a mistake, such as
    `--run DIR`, which would otherwise leave the page on the default folder unnoticed: a UsageError naming it. An
    empty DIR (an unset shell variable) would fence the whole working folder: refused too.
    """
    parser = Parser(prog="streamlit run streamlit_app.py --", add_help=False, allow_abbrev=False,
                    examples={"runs": "--runs runs"})
    parser.add_argument("--runs", default=DEFAULT_RUNS, metavar="DIR")
    known, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise UsageError(f"streamlit_app.py does not take {' '.join(unknown)}: its one flag, after streamlit's "
                         f"own --, is --runs DIR, the folder whose checkpoints the page may read (for example "
                         f"streamlit run streamlit_app.py -- --runs runs).")
    if not known.runs.strip():
        raise UsageError("--runs is empty: it must name the folder whose checkpoints the page may read (for example "
                         "streamlit run streamlit_app.py -- --runs runs).")
    return Path(known.runs).expanduser()


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every symlink followed, is `root` or under it."""
    return path.resolve().is_relative_to(root.resolve())


def within_runs(typed: str | Path, root: Path) -> Path:
    """A typed path as the path under `root` it names, or a CheckpointError saying that only `root` is read.

    A relative path is read from `root` ("demo" is root/demo), else from the current folder as typed ("runs/demo");
    either way it must end up inside `root` once ".." and symlinks are resolved.
    """
    path = Path(typed).expanduser()
    candidates = [path] if path.is_absolute() else [root / path, path]
    found = next((c for c in candidates if c.exists()), candidates[0])
    if not is_inside(found, root):
        raise CheckpointError(
            f"{typed} is outside the runs folder {root}: the explorer reads checkpoints only under {root}. Choose a "
            f"run in the list, or copy the run into {root}/ (whoever starts the app can name another folder with "
            f"streamlit run streamlit_app.py -- --runs DIR)."
        )
    return found
