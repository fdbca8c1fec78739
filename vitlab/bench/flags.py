"""The benchmark's flags, checked before any row runs: a bad value is one `VitlabError` line naming the flag, the
value, what is allowed and an example (`python -m vitlab.bench` prints it and exits 2, writing nothing).

    parser = Parser(prog="python -m vitlab.bench", rules=RULES)   # usage errors are one-line VitlabErrors
    parser.add_argument("--repeats", type=COUNT_TYPES["repeats"])   # a count checked as it is parsed
    args = parser.parse_args(argv)
    rows = check_flags(args, tuple(BENCHES), ROWS)          # the rows to run, in order
"""

from __future__ import annotations

import argparse
import difflib
import os
from pathlib import Path

from vitlab.cli import Rule, number_flag
from vitlab.errors import VitlabError

# Upper bounds say "absurd", not "impossible": far past what any row needs, short of what would run for days.
RULES = {  # in vitlab.cli' format, as every vitlab command line
    "repeats": Rule(1, 1_000, "--repeats 3"),  # timed repeats per side
    "batch_size": Rule(1, 4_096, "--batch-size 8"),  # images per batch in every row
    "epoch_images": Rule(10, 50_000, "--epoch-images 200"),  # train+val images of the epoch row (CIFAR-100: 50,000)
}
# argparse types: each count checked against its rule as it is parsed (a one-line VitlabError).
COUNT_TYPES = {name: number_flag(name, rule) for name, rule in RULES.items()}


def check_flags(
    args: argparse.Namespace, known_rows: tuple[str, ...], default_rows: tuple[str, ...]
) -> tuple[str, ...]:
    """Refuse any bad flag value before work starts; return the rows to run (`default_rows` without --rows).

    The counts were checked as they were parsed (COUNT_TYPES).

    Raises:
        VitlabError: an unknown, repeated or missing row name, or a --json path that cannot be written. (A bad
            --device is `vitlab.device.pick_device`'s to refuse.)
    """
    if args.json is not None:
        check_json_path(args.json)
    return default_rows if args.rows is None else check_rows(args.rows, known_rows)


def check_rows(text: str, known_rows: tuple[str, ...]) -> tuple[str, ...]:
    """The row names of `--rows A,B`, each known and named once; a typo is told the closest name."""
    rows = tuple(r.strip() for r in text.split(",") if r.strip())
    example = f"for example --rows {known_rows[0]},{known_rows[1]}"
    if not rows:
        raise VitlabError(f"--rows {text!r} names no row. Choose from: {', '.join(known_rows)}; {example}.")
    for row in rows:
        if row not in known_rows:
            close = difflib.get_close_matches(row, known_rows, n=1)
            guess = f" (did you mean {close[0]}?)" if close else ""
            raise VitlabError(f"--rows {text}: unknown row {row!r}{guess}. Choose from: {', '.join(known_rows)}; "
                              f"{example}.")
        if rows.count(row) > 1:
            raise VitlabError(f"--rows {text} names {row} twice; name each row once, {example}.")
    return rows


def check_json_path(text: str) -> None:
    """--json PATH must be a file that can be written: not a folder, under a folder that exists or can be made."""
    path = Path(text)
    if text.strip() == "" or path.is_dir():
        raise VitlabError(f"--json {text!r} is {'empty' if not text.strip() else 'a folder'}; give a file to "
                          f"write, for example --json bench.json.")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise VitlabError(f"--json {text}: {ancestor} is not a folder this user can write in; give another path, "
                          f"for example --json bench.json.")
