"""Every fine-tuning setting checked in one place, before any data loads and before a run folder exists.

One rule per setting (`RULES`): the allowed range and an example. `check_config` applies them to a complete
`FinetuneConfig` (after defaults, preset, flags and a resumed run's settings are merged), then the checks that
involve several settings at once (a validation split as large as CIFAR's training set, more trainable blocks than
the arch has). A bad value raises a VitlabError whose one-line message names the flag, the value, the allowed
range and an example, so `python -m vitlab.finetune` exits 2 before it has done anything.

Why: argparse checks types, not meaning. `--batch-size -5` used to train every epoch on zero images and report
"0.00%"; `--epochs 0` reported a random model's test accuracy as a result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitlab.errors import VitlabError

# Training images before validation is held out (CIFAR; shapes has its own split, a folder is known once read).
TRAIN_IMAGES = {"cifar100": 50_000, "cifar10": 50_000}
LARGEST_SEED = 2**63 - 1  # torch.Generator.manual_seed's limit


@dataclass(frozen=True)
class Rule:
    """A number's allowed closed range [low, high]; `optional` allows None (the setting's "take the default")."""

    low: float
    high: float
    example: str
    optional: bool = False
    whole: bool = True  # a count or an index: 2.5 epochs is refused


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
    if rule.whole:
        allowed = f"a whole number from {int(rule.low):,} to {int(rule.high):,}"
    else:
        allowed = f"a number from {rule.low:g} to {rule.high:g}"
    if rule.whole and isinstance(value, float):
        raise _refuse(name, value, allowed, rule.example)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse(name, value, allowed, rule.example)
    if not math.isfinite(value) or not rule.low <= value <= rule.high:
        raise _refuse(name, value, allowed, rule.example)


def check_config(config: Any) -> Any:
    """Check every setting of a complete FinetuneConfig; return it unchanged, or raise a VitlabError.

    Args:
        config: a `vitlab.config.FinetuneConfig` whose `pretrained` and `trainable_blocks` are resolved.
    """
    from vitlab.archs import num_blocks  # the rules know numbers; vitlab.archs knows the architectures

    for name, rule in RULES.items():
        check_value(name, getattr(config, name), rule)
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
