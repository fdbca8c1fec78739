"""The benchmark's flags, checked before any row runs: a bad value is one `VitlabError` line naming the flag, the
value, what is allowed and an example (`python -m vitlab.bench` prints it and exits 2, writing nothing).

    parser = FlagParser(prog="python -m vitlab.bench")   # argparse's own errors become VitlabErrors too
    args = parser.parse_args(argv)
    rows = check_flags(args, tuple(BENCHES), ROWS)          # the rows to run, in order
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from vitlab.errors import VitlabError


@dataclass(frozen=True)
class Count:
    """A whole-number flag's allowed range, what it counts and a value to show as an example."""

    low: int
    high: int
    what: str
    example: int

    def describe(self, flag: str) -> str:
        return f"{flag} takes a whole number from {self.low:,} to {self.high:,} ({self.what}), for example " \
               f"{flag} {self.example}"


# Upper bounds say "absurd", not "impossible": far past what any row needs, short of what would run for days.
COUNTS = {
    "repeats": Count(1, 1_000, "timed repeats per side", 3),
    "batch_size": Count(1, 4_096, "images per batch in every row", 8),
    "epoch_images": Count(10, 50_000, "train+val images of the epoch row; 50,000 is CIFAR-100's training set", 200),
}


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors (a word where a number goes, an unknown flag) raise one-line VitlabErrors."""

    def error(self, message: str) -> NoReturn:
        flag = re.match(r"argument (--[\w-]+)", message)
        count = COUNTS.get(flag.group(1).lstrip("-").replace("-", "_")) if flag else None
        example = {"--arch": "for example --arch vit_tiny"}.get(flag.group(1) if flag else "", "")
        hint = count.describe(flag.group(1)) if count else example or f"see {self.prog} --help"
        raise VitlabError(f"{message}: {hint}.")


def check_flags(
    args: argparse.Namespace, known_rows: tuple[str, ...], default_rows: tuple[str, ...]
) -> tuple[str, ...]:
    """Refuse any bad flag value before work starts; return the rows to run (`default_rows` without --rows).

    Raises:
        VitlabError: a count out of its range, an unknown, repeated or missing row name, or a --json path that
            cannot be written. (A bad --device is `vitlab.device.pick_device`'s to refuse.)
    """
    for name, count in COUNTS.items():
        value = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        if value is not None and not count.low <= value <= count.high:
            raise VitlabError(f"{flag} {value} is out of range: {count.describe(flag)}.")
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
