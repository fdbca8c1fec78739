"""Every fine-tuning setting checked in one place, before any data loads and before a run folder exists.

The rule format shared by every vitlab command line (`Rule`, `check_value`, `number_flag` for argparse, `check_rules`
for a whole settings table, `folder_to_write`, and `OneLineParser`, whose usage errors are one line and exit 2):
`python -m vitlab.pretrain` and the lessons keep their own tables in this format.

One rule per fine-tuning setting (`RULES`): the allowed range and an example. `check_config` applies them to a complete
`FinetuneConfig` (after defaults, preset, flags and a resumed run's settings are merged), then the checks that
involve several settings at once (a validation split as large as CIFAR's training set, more trainable blocks than
the arch has). A bad value raises a VitlabError whose one-line message names the flag, the value, the allowed
range and an example, so `python -m vitlab.finetune` exits 2 before it has done anything.

Why: argparse checks types, not meaning. `--batch-size -5` used to train every epoch on zero images and report
"0.00%"; `--epochs 0` reported a random model's test accuracy as a result.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from vitlab.errors import VitlabError

# Training images before validation is held out (CIFAR; shapes has its own split, a folder is known once read).
TRAIN_IMAGES = {"cifar100": 50_000, "cifar10": 50_000}
LARGEST_SEED = 2**63 - 1  # torch.Generator.manual_seed's limit


@dataclass(frozen=True)
class Rule:
    """A number's allowed range [low, high] (`low_open`: (low, high]); `optional` allows None ("take the default")."""

    low: float
    high: float
    example: str
    optional: bool = False
    whole: bool = True  # a count or an index: 2.5 epochs is refused
    low_open: bool = False  # low itself is refused: a learning rate or a mask share of 0 makes no run


RULES: dict[str, Rule] = {
    "epochs": Rule(1, 10_000, "--epochs 5"),
    "batch_size": Rule(1, 65_536, "--batch-size 64"),
    "lr": Rule(1e-8, 10.0, "--lr 1e-3", optional=True, whole=False),
    "trainable_blocks": Rule(0, 10_000, "--trainable-blocks 3"),  # the arch's block count is checked below
    "seed": Rule(0, LARGEST_SEED, "--seed 42"),
    "subset": Rule(1, 10**9, "--subset 512", optional=True),
    "val_size": Rule(1, 10**9, "--val-size 5000"),
    "max_rotation": Rule(0.0, 180.0, "--max-rotation 10", whole=False),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _refuse(name: str, value: Any, allowed: str, example: str) -> VitlabError:
    return VitlabError(f"{_flag(name)} {value} is not allowed: it must be {allowed} (for example {example}).")


def check_value(name: str, value: Any, rule: Rule) -> None:
    """Raise a VitlabError unless `value` is a finite number in the rule's range (or None where optional)."""
    if value is None and rule.optional:
        return
    allowed = allowed_values(rule)
    if rule.whole and isinstance(value, float):
        raise _refuse(name, value, allowed, rule.example)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse(name, value, allowed, rule.example)
    if not math.isfinite(value) or not rule.low <= value <= rule.high or (rule.low_open and value == rule.low):
        raise _refuse(name, value, allowed, rule.example)


def allowed_values(rule: Rule) -> str:
    """What `rule` allows, in words: "a whole number from 1 to 1,000"."""
    if rule.whole:
        return f"a whole number from {int(rule.low):,} to {int(rule.high):,}"
    if rule.low_open:
        return f"a number above {rule.low:g} and at most {rule.high:g}"
    return f"a number from {rule.low:g} to {rule.high:g}"


def number_flag(name: str, rule: Rule) -> Callable[[str], int | float]:
    """An argparse `type` for `--name`: the typed text as a number in the rule's range, else a VitlabError.

    A VitlabError is not one of the errors argparse catches, so it leaves `parse_args` as it is and the command's
    `main` prints it as one line and exits 2: the message names the flag, the value, the range and an example.
    """

    def parse(text: str) -> int | float:
        try:
            value = int(text) if rule.whole else float(text)
        except ValueError:
            raise _refuse(name, repr(text), allowed_values(rule), rule.example) from None
        check_value(name, value, rule)
        return value

    parse.__name__ = f"{name} ({allowed_values(rule)})"  # what argparse would name the type in its own messages
    return parse


def check_rules(settings: Any, rules: Mapping[str, Rule]) -> None:
    """Apply every rule of a table to the same-named attribute of `settings`; raise a VitlabError at the first bad."""
    for name, rule in rules.items():
        check_value(name, getattr(settings, name), rule)


def folder_to_write(name: str, path: str | Path | None) -> None:
    """Refuse an output folder that cannot be one (empty, or an existing file, or under a file), before any work."""
    if path is None:
        return
    text = str(path)
    if not text.strip():
        raise VitlabError(f"{_flag(name)} is empty: it must name a folder to write into (for example "
                          f"{_flag(name)} runs/demo).")
    folder = Path(text).expanduser()
    blocked = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise VitlabError(f"{_flag(name)} {text} cannot be a folder: {blocked} is a file. Choose another folder "
                          f"(for example {_flag(name)} runs/demo); vitlab never overwrites a file.")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors (unknown flag, missing value, bad choice) are one line, exit status 2.

    argparse's own prints the whole usage block first, which hides the one line that says what was wrong.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"vitlab: {message}. See {self.prog} --help for every flag.\n")


def check_config(config: Any) -> Any:
    """Check every setting of a complete FinetuneConfig; return it unchanged, or raise a VitlabError.

    Args:
        config: a `vitlab.config.FinetuneConfig` whose `pretrained` and `trainable_blocks` are resolved.
    """
    from vitlab.archs import num_blocks  # the rules know numbers; vitlab.archs knows the architectures

    check_rules(config, RULES)
    check_weights(config.arch, config.weights)
    check_image_size(config.arch, config.image_size)
    blocks = num_blocks(config.arch)
    if config.trainable_blocks > blocks:
        raise _refuse("trainable_blocks", config.trainable_blocks, f"from 0 to {blocks} ({config.arch} has {blocks}"
                      " blocks) or 'all'", "--trainable-blocks 3")
    _check_sizes(config)
    _check_paths(config)
    return config


def check_weights(arch: str, weights: str | None) -> None:
    """`--weights` names one of `arch`'s torchvision weights (vit_tiny has none: its base ships with vitlab)."""
    from vitlab.archs import weights_enum

    if weights is None and arch == "vit_tiny":
        return
    weights_enum(arch, weights)  # the VitlabError lists the arch's weights and gives an example


def check_image_size(arch: str, image_size: Any) -> None:
    """`--image-size` is a multiple of the arch's patch size, from a 2x2 grid of patches to 1024 px (None: native)."""
    from vitlab.archs import image_size_range, spec

    if image_size is None:
        return
    patch = spec(arch).patch_size
    low, high = image_size_range(arch)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size % patch \
            or not low <= image_size <= high:
        example = patch * max(2, 112 // patch)  # 112 px for 16-px patches: a 7x7 grid, 4x fewer tokens than 224
        raise _refuse("image_size", image_size, f"a multiple of {patch} ({arch}'s patch size) from {low} to {high}",
                      f"--image-size {example}")


def _check_sizes(config: Any) -> None:
    """The validation split against CIFAR's training set. A batch larger than the training set is allowed: each
    epoch then trains one smaller batch (`vitlab.data.batches` keeps the last, partial batch)."""
    total = TRAIN_IMAGES.get(config.dataset)
    if config.dataset.startswith("cifar") and config.val_size >= total:
        raise _refuse("val_size", config.val_size, f"less than CIFAR's {total:,} training images", "--val-size 5000")


def _check_paths(config: Any) -> None:
    """Files the run must read exist now, not after minutes of loading."""
    named = {"imagenet", "fractal", "none"}
    if config.pretrained not in named and not Path(config.pretrained).expanduser().is_file():
        raise VitlabError(f"--pretrained {config.pretrained} is not a file. Pass a state-dict file (.pth), or one "
                          f"of: imagenet (vit_b_16), fractal (vit_tiny), none (for example --pretrained none).")
    if config.dataset == "folder" and not Path(config.data_dir).expanduser().is_dir():
        raise VitlabError(f"--data-dir {config.data_dir} is not a folder. --dataset folder reads one subfolder per "
                          f"class from it (for example --data-dir ~/pictures/pets).")
