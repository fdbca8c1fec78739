"""Run every lesson in order, each as its own `python lessons/NN_topic.py`, and print a table of how it went.

    python lessons/run_all.py                          # all lessons, default mode (small demo model, offline)
    python lessons/run_all.py --only 01 07             # just lessons 01 and 07
    python lessons/run_all.py --arch vit_b_16          # any other flag is passed on to every lesson

Figures go to OUT_ROOT/NN_topic/ (default lesson_outputs/). The exit code is 0 when every lesson succeeded, else 1.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vitlab.cli import Parser

LESSONS_DIR = Path(__file__).resolve().parent


def lesson_files(only: Sequence[str] | None = None) -> list[Path]:
    """The lesson scripts in course order, optionally only those whose name starts with one of `only`."""
    files = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.py"))
    if only:
        files = [f for f in files if f.stem.startswith(tuple(only))]
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python lessons/run_all.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out-root", metavar="DIR", default="lesson_outputs",
                        help="each lesson writes to DIR/NN_topic (default: lesson_outputs)")
    parser.add_argument("--only", nargs="+", metavar="NN", default=None, help="run only these lessons, e.g. 01 07")
    parser.add_argument("--quiet", action="store_true", help="hide the lessons' own output, show only the table")
    args, passed_on = parser.parse_known_args(argv)
    files = lesson_files(args.only)
    if not files:
        print(f"No lesson matches --only {' '.join(args.only)}.", file=sys.stderr)
        return 2

    results = []
    for path in files:
        print(f"running {path.stem} ..." if args.quiet else f"\n===== {path.stem} =====", flush=True)
        command = [sys.executable, str(path), "--out", str(Path(args.out_root) / path.stem), *passed_on]
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=args.quiet, text=True)
        seconds = time.perf_counter() - started
        if args.quiet and completed.returncode != 0:
            print(completed.stdout[-2000:] + completed.stderr[-4000:], file=sys.stderr)
        results.append((path.stem, seconds, completed.returncode))

    width = max(len(name) for name, _, _ in results)
    print(f"\n{'lesson':<{width}}  {'seconds':>7}  status")
    for name, seconds, code in results:
        print(f"{name:<{width}}  {seconds:7.1f}  {'ok' if code == 0 else f'FAILED (exit {code})'}")
    failed = sum(code != 0 for _, _, code in results)
    print(f"\n{len(results) - failed} of {len(results)} lessons succeeded; figures in {args.out_root}/")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
