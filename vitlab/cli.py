"""The one command-line kit every vitlab command uses: rules for numbers, one parser, one exit-code table.

    RULES = {"epochs": Rule(1, 10_000, "--epochs 5")}                 # a number's range and an example
    parser = Parser(prog="python -m vitlab.finetune")                 # usage errors are one line
    parser.add_argument("--epochs", type=number_flag("epochs", RULES["epochs"]))   # checked as it is parsed

    @command("vitlab")                                                # errors -> one line and an exit code
    def main(argv: list[str] | None = None) -> int:
        args = parser.parse_args(argv)
        ...

A user's mistake is a `VitlabError` whose one-line message names the flag, the value, what is allowed and an
example; `command` prints it without a traceback and returns the code `EXIT_CODES` gives its type: bad input 2,
a failed write or a failed run 1, an interruption 130. Everything is checked before any work starts, so a refused
command line has written nothing.

Why a kit: argparse checks types, not meaning. `--batch-size -5` once trained every epoch on zero images and reported
"0.00%"; `--epochs 0` reported a random model's test accuracy as a result.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from vitlab.errors import Interrupted, StorageError, TrainingFailed, UsageError, VitlabError

LARGEST_SEED = 2**63 - 1  # torch.Generator.manual_seed's limit

# From an error's type to the process's exit status; the first entry that matches wins, so subclasses come first.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (StorageError, 1),  # a file could not be written (full disk): not the user's input
    (TrainingFailed, 1),  # the run itself failed (a NaN loss): the input was fine
    (Interrupted, 130),  # Ctrl-C, with what was kept and how to continue
    (KeyboardInterrupt, 130),
    (VitlabError, 2),  # bad input, refused before any work
)


@dataclass(frozen=True)
class Rule:
    """A number's allowed range [low, high] (`low_open`: (low, high]); `optional` allows None ("take the default")."""

    low: float
    high: float
    example: str  # a valid use of the flag, shown in every message about it
    optional: bool = False
    whole: bool = True  # a count or an index: 2.5 epochs is refused
    low_open: bool = False  # low itself is refused: a learning rate or a mask share of 0 makes no run


def flag_name(name: str) -> str:
    """A setting's flag as a user types it: "batch_size" -> "--batch-size"."""
    return "--" + name.replace("_", "-")


def refuse(name: str, value: Any, allowed: str, example: str) -> VitlabError:
    """The one-line error for a value a flag does not take."""
    return VitlabError(f"{flag_name(name)} {value} is not allowed: it must be {allowed} (for example {example}).")


def allowed_values(rule: Rule) -> str:
    """What `rule` allows, in words: "a whole number from 1 to 1,000"."""
    if rule.whole:
        return f"a whole number from {int(rule.low):,} to {int(rule.high):,}"
    if rule.low_open:
        return f"a number above {rule.low:g} and at most {rule.high:g}"
    return f"a number from {rule.low:g} to {rule.high:g}"


def check_value(name: str, value: Any, rule: Rule) -> None:
    """Raise a VitlabError unless `value` is a finite number in the rule's range (or None where optional)."""
    if value is None and rule.optional:
        return
    allowed = allowed_values(rule)
    if rule.whole and isinstance(value, float):
        raise refuse(name, value, allowed, rule.example)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise refuse(name, value, allowed, rule.example)
    if not math.isfinite(value) or not rule.low <= value <= rule.high or (rule.low_open and value == rule.low):
        raise refuse(name, value, allowed, rule.example)


def check_rules(settings: Any, rules: Mapping[str, Rule]) -> None:
    """Apply every rule of a table to the same-named attribute of `settings`; raise a VitlabError at the first bad."""
    for name, rule in rules.items():
        check_value(name, getattr(settings, name), rule)


def number_flag(name: str, rule: Rule) -> Callable[[str], int | float]:
    """An argparse `type` for `--name`: the typed text as a number in the rule's range, else a VitlabError.

    A VitlabError is not one of the errors argparse catches, so it leaves `parse_args` as it is and `command`
    prints it as one line and exits 2: the message names the flag, the value, the range and an example.
    """

    def parse(text: str) -> int | float:
        try:
            value = int(text) if rule.whole else float(text)
        except ValueError:
            raise refuse(name, repr(text), allowed_values(rule), rule.example) from None
        check_value(name, value, rule)
        return value

    parse.__name__ = f"{name} ({allowed_values(rule)})"  # what argparse would name the type in its own messages
    return parse


def folder_to_write(name: str, path: str | Path | None) -> None:
    """Refuse an output folder that cannot be one (empty, or an existing file, or under a file), before any work."""
    if path is None:
        return
    text = str(path)
    if not text.strip():
        raise VitlabError(f"{flag_name(name)} is empty: it must name a folder to write into (for example "
                          f"{flag_name(name)} runs/demo).")
    folder = Path(text).expanduser()
    blocked = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise VitlabError(f"{flag_name(name)} {text} cannot be a folder: {blocked} is a file. Choose another folder "
                          f"(for example {flag_name(name)} runs/demo); vitlab never overwrites a file.")


def file_to_write(name: str, text: str) -> None:
    """Refuse an output file that cannot be written (empty, a folder, or under a folder this user cannot write in),
    before any work."""
    folder = next(folder for folder in Path(text).absolute().parents if folder.exists())  # where it would be made
    if not text.strip() or Path(text).is_dir():
        raise VitlabError(f"{flag_name(name)} {text!r} is {'a folder' if text.strip() else 'empty'}; give a file to "
                          f"write, for example {flag_name(name)} out.{name}.")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise VitlabError(f"{flag_name(name)} {text}: {folder} is not a folder this user can write in; give another "
                          f"path, for example {flag_name(name)} out.{name}.")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors (unknown flag, missing value, bad choice) are one-line `UsageError`s.

    argparse's own prints the whole usage block and exits, which hides the one line that says what was wrong and
    bypasses the command's exit-code table. The message adds the flag's rule when the parser knows it (`rules`).
    """

    def __init__(self, *args: Any, rules: Mapping[str, Rule] | None = None,
                 examples: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rules = dict(rules or {})  # number flags: their range and example
        self.examples = dict(examples or {})  # other flags: a valid use, e.g. {"arch": "--arch vit_tiny"}

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        """argparse's, except that `--flag=--` is a missing value: argparse drops a "--" value (it reads it as the
        end of the options) and hands the flag an empty list that no type check sees."""
        for text in args if args is not None else sys.argv[1:]:
            if text.startswith("--") and text.endswith("=--"):
                self.error(f"argument {text[:-3]}: expected one argument")
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        flag = re.match(r"argument (--[\w-]+)", message)
        name = flag.group(1).lstrip("-").replace("-", "_") if flag else ""
        if name in self.rules:
            hint = f"{flag.group(1)} takes {allowed_values(self.rules[name])}, for example {self.rules[name].example}"
        elif name in self.examples:
            hint = f"for example {self.examples[name]}"
        else:
            hint = f"see {self.prog} --help for every flag"
        raise UsageError(f"{message}; {hint}.")


def command(prog: str) -> Callable[[Callable[[Sequence[str] | None], int | None]], Callable[..., int]]:
    """Decorator for a command's `main(argv)`: an expected failure becomes one line on stderr and its exit code.

    `EXIT_CODES` maps the error's type to the code; anything else is a bug and raises with its traceback.
    """

    def wrap(body: Callable[[Sequence[str] | None], int | None]) -> Callable[..., int]:
        @functools.wraps(body)
        def main(argv: Sequence[str] | None = None) -> int:
            try:
                return body(argv) or 0
            except tuple(kind for kind, _ in EXIT_CODES) as error:
                print(f"\n{prog}: {error or 'interrupted.'}" if isinstance(error, KeyboardInterrupt | Interrupted)
                      else f"{prog}: {error}", file=sys.stderr)
                return exit_code(error)

        return main

    return wrap


def exit_code(error: BaseException) -> int:
    """The exit status `EXIT_CODES` gives `error` (1 for anything it does not list)."""
    return next((code for kind, code in EXIT_CODES if isinstance(error, kind)), 1)
