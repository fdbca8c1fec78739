"""The fine-tuning command line: every flag of `python -m vitlab.finetune`, its help, and what it resolves to.

Each flag is a field of `FinetuneConfig`, filled by name; an untyped flag stays out of the namespace, so the config
knows what the user typed (a preset's setting yields where it cannot apply, a typed one is refused). Which flag
applies to what is `vitlab.training.config`'s; what a flag may change with `--resume` is `vitlab.training.resume`'s.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from vitlab.archs import ARCHS
from vitlab.cli import Parser, number_flag
from vitlab.data import DATASETS
from vitlab.training.config import NOT_FLAGS, PRESETS, RULES, FinetuneConfig, make_config
from vitlab.training.resume import resume_config
from vitlab.training.train import RECIPES

HELP = {
    "arch": f"model architecture: {', '.join(ARCHS)} (default: vit_b_16; vit_l_* and vit_h_14 are 300M and 630M "
    "parameters)",
    "weights": "torchvision's weights for --arch, by name: IMAGENET1K_V1 (default), IMAGENET1K_SWAG_E2E_V1 or "
    "IMAGENET1K_SWAG_LINEAR_V1 where torchvision has them (ViT-H/14: SWAG only, default IMAGENET1K_SWAG_E2E_V1)",
    "image_size": "input side in pixels, a multiple of the patch size (e.g. 112 for vit_b_16: 7x7 patches, 4x fewer "
    "tokens than 224); the position embeddings are interpolated to the new grid (default: the weights' own size, "
    "224, 384 for SWAG_E2E on vit_b_16, 32 for vit_tiny)",
    "dataset": f"dataset: {', '.join(DATASETS)} (default: cifar100)",
    "data_dir": "folder holding (or receiving) the dataset, for the datasets read from disk (default: ./data)",
    "pretrained": "'imagenet' (torchvision's archs: the --weights file), 'fractal' (vit_tiny: the base vitlab "
    "ships, pretrained on generated fractals), 'none' (random init), PATH to a state-dict file, or PATH to a timm or "
    "Hugging Face ViT (a save_pretrained or timm hub folder, or a timm state-dict file with --timm-name): its body "
    "with a new head, at its own size and normalisation, no --arch (default: the arch's own base)",
    "timm_name": "the timm name of a --pretrained timm state-dict file that has no timm config.json beside it, e.g. "
    "vit_small_patch16_224.dino (no tensor holds the head count)",
    "epochs": "epochs to train (default: 5)",
    "batch_size": "global batch size; with torchrun it is split across processes (default: 64)",
    "lr": "learning rate of the new head; pretrained blocks use a tenth in the default recipe (default: 1e-3)",
    "trainable_blocks": "how many of the last encoder blocks train, or 'all' (default: 3)",
    "recipe": "'default': AdamW, warmup + cosine, label smoothing 0.1, clipping, bf16 on CUDA; "
    "'notebook': the notebook's Adam at a constant 1e-3 (default: default)",
    "seed": "random seed for init, validation split, shuffling and augmentation (default: 42)",
    "device": "auto, cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, then CPU)",
    "out": "run folder for config, history, plots and checkpoints (default: runs/<timestamp>)",
    "resume": "continue the run in this folder from its last completed epoch, with its own settings (only --device, "
    "--data-dir, --compile, --quiet and, at a constant learning rate, --epochs may change)",
    "subset": "use only the first N images of each split, for a quick smoke run",
    "val_size": "training images held out for validation, for cifar100, cifar10 and fashion_mnist (default: 5000)",
    "max_rotation": "largest random rotation in degrees during training (default: 10)",
    "compile": "torch.compile the model, or with --cache-trunk its trained top (pays off on a GPU for long runs)",
    "cache_trunk": "compute the frozen blocks' output once (each image as is and mirrored) and train the last "
    "blocks on that cache: faster epochs, more memory, flip as the only augmentation (sets --max-rotation 0); one "
    "process only (a preset's cache yields under torchrun)",
    "preset": "named settings: 'demo' fine-tunes vit_tiny's shipped pretrained base on the Fashion-MNIST photos "
    "shipped with vitlab, offline, in under a minute on a laptop CPU; 'laptop' fine-tunes ImageNet ViT-B/16 at "
    "112 px on a CIFAR-100 subset with the trunk cached, sized to fit 30 minutes of a 2-core CPU. A flag typed beside "
    "it wins, and a preset setting that cannot apply yields with a note; every on/off setting has a --no- form to "
    "undo it",
    "quiet": "no progress bars or per-epoch lines",
    "tensorboard": "write TensorBoard events into the run folder: losses, accuracies, learning rate, images/s and, "
    "each epoch, the attention of 8 validation images (default: on; --no-tensorboard turns it off; metrics.csv is "
    "always written)",
}


METAVARS = {"data_dir": "DIR", "out": "DIR", "resume": "DIR", "pretrained": "WEIGHTS", "epochs": "N",
            "batch_size": "N", "subset": "N", "val_size": "N", "seed": "N", "lr": "LR", "device": "DEVICE",
            "trainable_blocks": "N|all", "max_rotation": "DEGREES", "weights": "NAME",
            "image_size": "PIXELS", "timm_name": "NAME"}


def _blocks(value: str) -> int | None:
    # None: make_config resolves it to the arch's block count
    return None if value == "all" else number_flag("trainable_blocks", RULES["trainable_blocks"])(value)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        rules=RULES,
        examples={"arch": "--arch vit_tiny", "dataset": "--dataset shapes", "recipe": "--recipe notebook",
                  "preset": "--preset demo"},
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
        if field.name in NOT_FLAGS:
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":  # --flag and --no-flag: any preset's choice can be undone
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=HELP[field.name])
        else:
            parser.add_argument(flag, type=types.get(field.name, str), choices=choices.get(field.name),
                                help=HELP[field.name], metavar=METAVARS.get(field.name))
    return parser


def explicit_flags(argv: list[str] | None) -> dict[str, Any]:
    """The settings the user actually typed, by field name (untyped flags are absent, not None)."""
    return vars(build_parser().parse_args(argv))


def resolve_config(argv: list[str] | None, notes: list[str] | None = None) -> tuple[FinetuneConfig, dict | None]:
    """The run's settings from the command line, and with `--resume` also the checkpoint to continue from.

    `notes` receives a line for each setting of a preset that yielded (see `make_config`).
    """
    flags = explicit_flags(argv)
    if "resume" in flags:
        return resume_config(flags)
    return make_config(flags, notes=notes), None
