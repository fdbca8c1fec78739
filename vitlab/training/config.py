"""The fine-tuning job's settings: one dataclass, its presets, and the command line that fills it.

Precedence, lowest first: the dataclass defaults (the notebook's setting), then `--preset`, then the flags a user
typed. When resuming, the saved run's settings take the place of the defaults and preset. The config is complete
when `make_config` returns: the settings whose default depends on others (`pretrained`, `trainable_blocks`) are
resolved there, so config.json and the checkpoints hold the values the run used, and nothing changes them later.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vitlab.archs import (
    ARCHS,
    PRETRAINED,
    check_image_size,
    check_weights,
    default_weights,
    native_image_size,
    num_blocks,
)
from vitlab.cli import LARGEST_SEED, Parser, Rule, check_rules, number_flag, refuse
from vitlab.data import DATASETS
from vitlab.errors import CheckpointError, VitlabError
from vitlab.training.checkpoint import saved_run
from vitlab.training.train import RECIPES

# Training images before validation is held out (CIFAR; shapes has its own split, a folder is known once read).
TRAIN_IMAGES = {"cifar100": 50_000, "cifar10": 50_000}

# One rule per number a user types: the allowed range and an example (the arch's block count is checked later).
RULES: dict[str, Rule] = {
    "epochs": Rule(1, 10_000, "--epochs 5"),
    "batch_size": Rule(1, 65_536, "--batch-size 64"),
    "lr": Rule(1e-8, 10.0, "--lr 1e-3", optional=True, whole=False),
    "trainable_blocks": Rule(0, 10_000, "--trainable-blocks 3"),
    "seed": Rule(0, LARGEST_SEED, "--seed 42"),
    "subset": Rule(1, 10**9, "--subset 512", optional=True),
    "val_size": Rule(1, 10**9, "--val-size 5000"),
    "max_rotation": Rule(0.0, 180.0, "--max-rotation 10", whole=False),
}

# Settings a checkpoint's weights depend on: resuming with a different value would load mismatched weights.
FIXED_ON_RESUME = ("arch", "trainable_blocks", "dataset", "image_size")


@dataclass
class FinetuneConfig:
    arch: str = "vit_b_16"  # the notebook's model; "vit_tiny" is the 32x32 laptop model; vit_b_32 ... vit_h_14
    weights: str | None = None  # torchvision's weights member, e.g. IMAGENET1K_SWAG_E2E_V1; make_config turns None
    # into the arch's default (IMAGENET1K_V1; ViT-H/14: IMAGENET1K_SWAG_E2E_V1); vit_tiny keeps None
    image_size: int | None = None  # input side in pixels; make_config turns None into the weights' native size
    dataset: str = "cifar100"  # cifar100, cifar10, shapes (synthetic, offline) or folder (your ImageFolder)
    data_dir: str = "./data"  # where datasets are read from (and downloaded to)
    pretrained: str | None = None  # "imagenet", "fractal", "none" or a state-dict path; make_config turns None into
    # the arch's own base: imagenet for vit_b_16 (the notebook's start), fractal for vit_tiny (shipped in vitlab)
    epochs: int = 5  # the notebook trained 5 epochs
    batch_size: int = 64  # global batch: with torchrun, each of N processes takes batch_size / N
    lr: float | None = None  # head learning rate; None takes the recipe's (1e-3 for both recipes)
    trainable_blocks: int | None = 3  # last encoder blocks that train; None ("all", resolved by make_config to the
    # arch's block count) trains every block and the embeddings, as training from scratch needs
    recipe: str = "default"  # "default" (AdamW, warmup+cosine, smoothing, clipping, bf16 on CUDA) or "seed"
    seed: int = 42  # seeds the init, the validation split, the shuffling and the augmentation
    device: str = "auto"  # auto picks CUDA, then Apple's MPS, then the CPU
    out: str | None = None  # run folder; None makes runs/<timestamp>
    resume: str | None = None  # a run folder to continue from its last completed epoch
    subset: int | None = None  # use only the first N images of each split (smoke runs)
    val_size: int = 5000  # images held out of the training set for validation (CIFAR)
    max_rotation: float = 10.0  # degrees of random rotation in training, as the notebook
    compile: bool = False  # torch.compile the model: faster steps after a compile that costs tens of seconds
    cache_trunk: bool = False  # train the last blocks on cached outputs of the frozen trunk (flip-only augmentation)
    preset: str | None = None  # a named bundle of the settings above, e.g. "demo"
    quiet: bool = False  # no progress bars or per-epoch lines
    tensorboard: bool = True  # TensorBoard events in the run folder (losses, accuracy, lr, attention each epoch)


PRESETS: dict[str, dict] = {
    # The offline demo is the notebook's recipe in miniature: vit_tiny's shipped fractal-pretrained base, frozen,
    # with its last 2 blocks and a new head fine-tuned on the synthetic shapes. The frozen trunk runs once (the
    # shapes need no rotation), so each epoch trains only the top: well under 30 s on a 2-core laptop CPU.
    "demo": {
        "arch": "vit_tiny",
        "dataset": "shapes",
        "pretrained": "fractal",
        "epochs": 5,
        "batch_size": 64,
        # The head at 2e-2, the 2 pretrained blocks at a tenth of it (the default recipe). Measured on 2 cores, seed
        # 42: 1e-3 reached 55% test accuracy in 3 epochs, 5e-3 95.4% in 5, 1e-2 98.7% in 5, 2e-2 99.4% in 5.
        "lr": 2e-2,
        "trainable_blocks": 2,
        "cache_trunk": True,
        "max_rotation": 0.0,
    },
    # The notebook's job cut to fit a laptop CPU: ImageNet ViT-B/16 at 112 px (a 7x7 grid, 50 tokens instead of
    # 197), its frozen trunk cached once (flip-only augmentation), the last 3 blocks and a new head trained on a
    # CIFAR-100 subset. Sized from `python -m vitlab.bench --rows laptop_estimate` (README, "A laptop run").
    "laptop": {
        "arch": "vit_b_16",
        "dataset": "cifar100",
        "pretrained": "imagenet",
        "weights": "IMAGENET1K_V1",
        "image_size": 112,
        "trainable_blocks": 3,
        "cache_trunk": True,
        "max_rotation": 0.0,
        # Sized by `python -m vitlab.bench --rows laptop_estimate` on a 2-core CPU (README, "A laptop run").
        "subset": 8_000,  # the first 8,000 of train and of test
        "val_size": 2_000,
        "epochs": 3,
        "batch_size": 64,
    },
}

HELP = {
    "arch": f"model architecture: {', '.join(ARCHS)} (default: vit_b_16; vit_l_* and vit_h_14 are 300M and 630M "
    "parameters)",
    "weights": "torchvision's weights for --arch, by name: IMAGENET1K_V1 (default), IMAGENET1K_SWAG_E2E_V1 or "
    "IMAGENET1K_SWAG_LINEAR_V1 where torchvision has them (ViT-H/14: SWAG only, default IMAGENET1K_SWAG_E2E_V1)",
    "image_size": "input side in pixels, a multiple of the patch size (e.g. 112 for vit_b_16: 7x7 patches, 4x fewer "
    "tokens than 224); the position embeddings are interpolated to the new grid (default: the weights' own size, "
    "224, 384 for SWAG_E2E on vit_b_16, 32 for vit_tiny)",
    "dataset": f"dataset: {', '.join(DATASETS)} (default: cifar100)",
    "data_dir": "folder holding (or receiving) the dataset (default: ./data)",
    "pretrained": "'imagenet' (torchvision's archs: the --weights file), 'fractal' (vit_tiny: the base vitlab "
    "ships, pretrained on generated fractals), 'none' (random init) or PATH to a state-dict file (default: the "
    "arch's own base)",
    "epochs": "epochs to train (default: 5)",
    "batch_size": "global batch size; with torchrun it is split across processes (default: 64)",
    "lr": "learning rate of the new head; pretrained blocks use a tenth in the default recipe (default: 1e-3)",
    "trainable_blocks": "how many of the last encoder blocks train, or 'all' (default: 3)",
    "recipe": "'default': AdamW, warmup + cosine, label smoothing 0.1, clipping, bf16 on CUDA; "
    "'seed': the notebook's Adam at a constant 1e-3 (default: default)",
    "seed": "random seed for init, validation split, shuffling and augmentation (default: 42)",
    "device": "auto, cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, then CPU)",
    "out": "run folder for config, history, plots and checkpoints (default: runs/<timestamp>)",
    "resume": "continue the run in this folder from its last completed epoch",
    "subset": "use only the first N images of each split, for a quick smoke run",
    "val_size": "training images held out for validation (default: 5000)",
    "max_rotation": "largest random rotation in degrees during training (default: 10)",
    "compile": "torch.compile the model (pays off on a GPU for long runs)",
    "cache_trunk": "compute the frozen blocks' output once (each image as is and mirrored) and train the last "
    "blocks on that cache: faster epochs, more memory, flip as the only augmentation (sets --max-rotation 0)",
    "preset": "named settings: 'demo' fine-tunes vit_tiny's shipped pretrained base on synthetic shapes, offline, "
    "in under 30 s; 'laptop' fine-tunes ImageNet ViT-B/16 at 112 px on a CIFAR-100 subset with the trunk cached, "
    "sized for 30 minutes of a laptop CPU",
    "quiet": "no progress bars or per-epoch lines",
    "tensorboard": "write TensorBoard events into the run folder: losses, accuracies, learning rate, images/s and, "
    "each epoch, the attention of 8 validation images (default: on; --no-tensorboard turns it off; metrics.csv is "
    "always written)",
}


METAVARS = {"data_dir": "DIR", "out": "DIR", "resume": "DIR", "pretrained": "WEIGHTS", "epochs": "N",
            "batch_size": "N", "subset": "N", "val_size": "N", "seed": "N", "lr": "LR", "device": "DEVICE",
            "trainable_blocks": "N|all", "max_rotation": "DEGREES", "weights": "NAME",
            "image_size": "PIXELS"}


def _blocks(value: str) -> int | None:
    # None: make_config resolves it to the arch's block count
    return None if value == "all" else number_flag("trainable_blocks", RULES["trainable_blocks"])(value)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        rules=RULES,
        argument_default=argparse.SUPPRESS,  # an untyped flag stays out of the namespace: "all" (None) is kept
        prog="python -m vitlab.finetune",
        description="Fine-tune a Vision Transformer (by default the notebook's job: ImageNet ViT-B/16 on CIFAR-100, "
        "last 3 blocks and a new head) and write a run folder with curves, predictions and checkpoints.",
        epilog="Offline first run: python -m vitlab.finetune --preset demo",
    )
    # Each number is checked against its rule as it is parsed (a VitlabError: one line, exit 2), and again by
    # make_config once presets and a resumed run's settings are merged in.
    types = {name: number_flag(name, rule) for name, rule in RULES.items() if name != "trainable_blocks"}
    types["trainable_blocks"] = _blocks
    types["image_size"] = int  # its rule depends on the arch: check_config checks it
    choices = {"arch": ARCHS, "dataset": DATASETS, "recipe": tuple(RECIPES), "preset": tuple(PRESETS)}
    for field in fields(FinetuneConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=HELP[field.name])
        else:
            parser.add_argument(flag, type=types.get(field.name, str), choices=choices.get(field.name),
                                help=HELP[field.name], metavar=METAVARS.get(field.name))
    return parser


def explicit_flags(argv: list[str] | None) -> dict[str, Any]:
    """The settings the user actually typed, by field name (untyped flags are absent, not None)."""
    return vars(build_parser().parse_args(argv))


def make_config(flags: dict[str, Any], base: FinetuneConfig | None = None) -> FinetuneConfig:
    """Defaults (or `base`), then the preset, then the typed flags; returns the complete config.

    Complete: `pretrained` None becomes the arch's own base ("imagenet" for vit_b_16, "fractal" for vit_tiny),
    `weights` None the arch's default torchvision weights, `image_size` None those weights' native size (224 for
    IMAGENET1K_V1), `trainable_blocks` None ("all") the arch's block count, and `--cache-trunk` without
    `--max-rotation` sets it to 0. Every setting is then checked (`vitlab.cli`): a bad one is a VitlabError
    (exit 2).
    """
    values = vars(base if base is not None else FinetuneConfig()).copy()
    preset = flags.get("preset")
    if preset is not None:
        values.update(PRESETS[preset])
    values.update(flags)
    if values["cache_trunk"] and "max_rotation" not in flags:
        values["max_rotation"] = 0.0  # a cached trunk cannot see rotated images (see vitlab.training.trunk_cache)
    if values["pretrained"] is None:
        values["pretrained"] = PRETRAINED[values["arch"]]
    named = {name for name in PRETRAINED.values() if name != PRETRAINED[values["arch"]]}
    if values["pretrained"] in named:
        raise VitlabError(
            f"--pretrained {values['pretrained']} is not a base for --arch {values['arch']}: its own is "
            f"'{PRETRAINED[values['arch']]}'. Use --pretrained {PRETRAINED[values['arch']]}, none, or PATH."
        )
    if values["weights"] is None:
        values["weights"] = default_weights(values["arch"])
    check_weights(values["arch"], values["weights"])  # the native size below needs weights that exist
    if values["image_size"] is None:
        values["image_size"] = native_image_size(values["arch"], values["weights"])
    if values["trainable_blocks"] is None:
        values["trainable_blocks"] = num_blocks(values["arch"])
    if values["trainable_blocks"] == num_blocks(values["arch"]) and "cache_trunk" not in flags:
        values["cache_trunk"] = False  # nothing is frozen, so there is no trunk to cache: a preset's cache yields
    return check_config(FinetuneConfig(**values))


def resolve_config(argv: list[str] | None) -> tuple[FinetuneConfig, dict | None]:
    """The run's settings from the command line, and with `--resume` also the checkpoint to continue from."""
    flags = explicit_flags(argv)
    if "resume" in flags:
        return resume_config(flags)
    return make_config(flags), None


def resume_config(flags: dict[str, Any]) -> tuple[FinetuneConfig, dict | None]:
    """The settings of the run in `flags["resume"]` with the typed `flags` on top, and its checkpoint.pt.

    A run stopped before its first checkpoint.pt gives None: it starts again from epoch 1 with its config.json.

    The saved settings go through make_config too: a run saved before the config was resolved there may hold
    `pretrained` or `trainable_blocks` None. `--preset` is ignored (the saved run replaces it), and a flag that would
    change what the saved weights fit (FIXED_ON_RESUME) is a CheckpointError.
    """
    settings, checkpoint = saved_run(flags["resume"])  # checkpoint None: stopped before epoch 1 completed
    stored = FinetuneConfig(**settings)
    if stored.pretrained is None and stored.arch == "vit_tiny":
        stored.pretrained = "none"  # saved before vit_tiny had a base: None meant a random init then
    saved = make_config({}, base=stored)
    flags = {name: value for name, value in flags.items() if name != "preset"}
    for name in FIXED_ON_RESUME:  # checked on the typed values, before they meet the saved settings
        typed = flags.get(name, getattr(saved, name))
        if name == "trainable_blocks" and typed is None:
            typed = num_blocks(saved.arch)  # "all"
        if typed != getattr(saved, name):
            raise CheckpointError(
                f"Cannot resume {flags['resume']} with --{name.replace('_', '-')} {typed}: that run was made with "
                f"{name}={getattr(saved, name)!r}, and its weights only fit that setting. Drop the flag, or start "
                f"a new run with --out."
            )
    config = make_config({**flags, "out": flags["resume"]}, base=saved)
    return config, checkpoint


def check_config(config: FinetuneConfig) -> FinetuneConfig:
    """Check every setting of a complete config (after defaults, preset, flags and a resumed run's settings are
    merged); return it unchanged, or raise a VitlabError naming the flag, the value, what is allowed and an example.
    """
    check_rules(config, RULES)
    check_weights(config.arch, config.weights)
    check_image_size(config.arch, config.image_size)
    blocks = num_blocks(config.arch)
    if config.trainable_blocks > blocks:
        raise refuse("trainable_blocks", config.trainable_blocks, f"from 0 to {blocks} ({config.arch} has {blocks}"
                     " blocks) or 'all'", "--trainable-blocks 3")
    total = TRAIN_IMAGES.get(config.dataset)
    if total is not None and config.val_size >= total:
        raise refuse("val_size", config.val_size, f"less than CIFAR's {total:,} training images",
                     "--val-size 5000")
    _check_paths(config)
    return config


def _check_paths(config: FinetuneConfig) -> None:
    """Files the run must read exist now, not after minutes of loading."""
    named = {"imagenet", "fractal", "none"}
    if config.pretrained not in named and not Path(config.pretrained).expanduser().is_file():
        raise VitlabError(f"--pretrained {config.pretrained} is not a file. Pass a state-dict file (.pth), or one "
                          f"of: imagenet (vit_b_16), fractal (vit_tiny), none (for example --pretrained none).")
    if config.dataset == "folder" and not Path(config.data_dir).expanduser().is_dir():
        raise VitlabError(f"--data-dir {config.data_dir} is not a folder. --dataset folder reads one subfolder per "
                          f"class from it (for example --data-dir ~/pictures/pets).")
