"""Run every lesson in order, each as its own `python lessons/NN_topic.py`, and print a table of how it went.

    python lessons/run_all.py                          # all lessons, default mode (small demo model, offline)
    python lessons/run_all.py --only 01 07             # just lessons 01 and 07
    python lessons/run_all.py --arch vit_b_16          # any other flag is passed on to every lesson

Figures go to OUT_ROOT/NN_topic/ (default lesson_outputs/). Before running anything, every lesson checks the flags
passed on to it, so a typo, or a lesson's own flag given to lessons that lack it, is refused at once (exit 2, one
line) instead of failing sixteen times. The exit code is 0 when every lesson succeeded, else 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vitlab.cli import Parser, command
from vitlab.errors import VitlabError
from vitlab.teaching.cells import check_flags
from vitlab.teaching.notebooks import lesson_files

LESSONS_DIR = Path(__file__).resolve().parent


def refuse_flags_a_lesson_refuses(files: list[Path], passed_on: list[str]) -> None:
    """Ask each lesson whether it takes the passed-on flags; a VitlabError naming the first that does not."""
    if any(flag == "--out" or flag.startswith("--out=") for flag in passed_on):
        raise VitlabError("--out is set for each lesson by run_all (OUT_ROOT/NN_topic): give --out-root DIR instead.")
    refusing = [(path.stem, error) for path in files if (error := check_flags(path, passed_on)) is not None]
    if refusing:
        name, error = refusing[0]
        takers = [path.stem[:2] for path in files if path.stem not in dict(refusing)]
        hint = f" (--only {' '.join(takers)} runs the lessons that take them)" if takers else ""
        raise VitlabError(f"{len(refusing)} of {len(files)} lessons refuse the flags passed on, {name} first: "
                          f"{error}{hint}")


def run(files: list[Path], passed_on: list[str], out_root: str, quiet: bool) -> list[tuple[str, float, int]]:
    """Run each lesson as a script; (name, seconds, exit code) for each."""
    results = []
    for path in files:
        print(f"running {path.stem} ..." if quiet else f"\n===== {path.stem} =====", flush=True)
        started = time.perf_counter()
        completed = subprocess.run([sys.executable, str(path), "--out", str(Path(out_root) / path.stem), *passed_on],
                                   capture_output=quiet, text=True)
        if quiet and completed.returncode != 0:
            print(completed.stdout[-2000:] + completed.stderr[-4000:], file=sys.stderr)
        results.append((path.stem, time.perf_counter() - started, completed.returncode))
    return results


@command("vitlab")
def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python lessons/run_all.py", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out-root", metavar="DIR", default="lesson_outputs",
                        help="each lesson writes to DIR/NN_topic (default: lesson_outputs)")
    parser.add_argument("--only", nargs="+", metavar="NN", default=None, help="run only these lessons, e.g. 01 07")
    parser.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False,
                        help="hide the lessons' own output, show only the table (default: --no-quiet)")
    args, passed_on = parser.parse_known_args(argv)
    files = lesson_files(LESSONS_DIR, args.only)
    if not files:
        raise VitlabError(f"No lesson matches --only {' '.join(args.only)}: give lesson numbers such as 01 07.")
    if passed_on:  # without them every lesson runs on its defaults, which are valid
        refuse_flags_a_lesson_refuses(files, passed_on)

    results = run(files, passed_on, args.out_root, args.quiet)
    width = max(len(name) for name, _, _ in results)
    print(f"\n{'lesson':<{width}}  {'seconds':>7}  status")
    for name, seconds, code in results:
        print(f"{name:<{width}}  {seconds:7.1f}  {'ok' if code == 0 else f'FAILED (exit {code})'}")
    failed = sum(code != 0 for _, _, code in results)
    print(f"\n{len(results) - failed} of {len(results)} lessons succeeded; figures in {args.out_root}/")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
