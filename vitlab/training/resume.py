"""`--resume DIR`: continue a stopped run with the settings it began with, and what a typed flag may change then.

A resumed run is the same run, continued: an interrupted and resumed run ends with the weights an uninterrupted one
would have. So the saved run fixes its settings, and a flag typed with `--resume` is either one that changes only how
the run is carried out (`ON_RESUME` "free": the device, where the data is, compiling, printing), or it must repeat
the saved value; anything else is refused (a CheckpointError: exit 2) before any work, naming the flag, the saved
value and what to do instead. A preset cannot be resumed into (the saved settings replace it), and `--out` names no
other folder than the one resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitlab.errors import CheckpointError
from vitlab.training.checkpoint import saved_run
from vitlab.training.config import FinetuneConfig, block_count, make_config
from vitlab.training.train import RECIPES

# What each setting of a saved run allows when typed again with --resume:
#   "weights": the checkpoint's weights fit only the saved value;
#   "plan":    the saved run's numbers depend on it (its schedule, data split, augmentation, random numbers);
#   "free":    it changes how the run is carried out, not what it computes;
#   "epochs":  the saved count, or with a constant learning rate (the notebook recipe) any count not below the
#              epochs already done: a warmup + cosine schedule is planned over the saved count and cannot stretch;
#   "folder":  --out may only name the folder being resumed; "refused": never with --resume (a preset);
#   "set":     no flag: make_config fills it (an imported model's spec), and the saved value holds.
ON_RESUME: dict[str, str] = {
    "arch": "weights", "weights": "weights", "image_size": "weights", "dataset": "weights",
    "trainable_blocks": "weights", "pretrained": "weights", "timm_name": "weights", "imported": "set",
    "recipe": "plan", "lr": "plan", "seed": "plan", "batch_size": "plan", "subset": "plan", "val_size": "plan",
    "max_rotation": "plan", "cache_trunk": "plan",
    "epochs": "epochs",
    "device": "free", "data_dir": "free", "compile": "free", "quiet": "free", "tensorboard": "free",
    "out": "folder", "resume": "folder", "preset": "refused",
}

# Recipe names a saved config.json may hold, mapped to the recipe they name ("seed": the notebook's recipe).
RENAMED_RECIPES = {"seed": "notebook"}

WHY = {
    "weights": "its weights only fit that setting",
    "plan": "a resumed run continues with the settings it began with (its schedule, data split and random numbers)",
}


def resume_config(flags: dict[str, Any]) -> tuple[FinetuneConfig, dict | None]:
    """The settings of the run in `flags["resume"]`, with the typed `flags` that may change, and its checkpoint.pt.

    A run stopped before its first checkpoint.pt gives None: it starts again from epoch 1 with its config.json.
    A typed flag that the saved run fixes (`ON_RESUME`) and that differs from it is a CheckpointError (exit 2).
    """
    folder = flags["resume"]
    settings, checkpoint = saved_run(folder)  # checkpoint None: stopped before epoch 1 completed
    saved = make_config({}, base=_upgraded(settings))
    done = 0 if checkpoint is None else checkpoint["epoch"]
    for name, typed in flags.items():
        _refuse_change(name, typed, saved, folder, done)
    free = {name: value for name, value in flags.items() if ON_RESUME[name] in ("free", "epochs")}
    return make_config({**free, "resume": folder, "out": folder}, base=saved), checkpoint


def _upgraded(settings: dict[str, Any]) -> FinetuneConfig:
    """A saved config.json as today's settings: names that changed are mapped, values left open are filled."""
    stored = FinetuneConfig(**settings)
    stored.recipe = RENAMED_RECIPES.get(stored.recipe, stored.recipe)
    if stored.pretrained is None and stored.arch == "vit_tiny":
        stored.pretrained = "none"  # saved before vit_tiny had a base: None meant a random init then
    return stored


def _refuse_change(name: str, typed: Any, saved: FinetuneConfig, folder: str, done: int) -> None:
    """Raise a CheckpointError if `--name typed` cannot be given when resuming the run `saved` in `folder`."""
    rule, flag = ON_RESUME[name], "--" + name.replace("_", "-")
    if rule == "refused":
        raise CheckpointError(f"{flag} {typed} cannot be used with --resume: the saved run's settings replace any "
                              f"preset. Drop {flag}, or start a new run with --out.")
    if rule == "folder" and not _same_folder(typed, folder):
        raise CheckpointError(f"--out {typed} cannot be used with --resume {folder}: a resumed run writes into its "
                              f"own folder. Drop --out (copy the folder first to continue it elsewhere).")
    if rule == "epochs":
        _refuse_epochs(typed, saved, folder, done)
    if rule not in WHY:
        return
    value = block_count(saved) if name == "trainable_blocks" and typed is None else typed  # None: "all"
    if value != getattr(saved, name):
        as_typed = (flag if typed else f"--no-{flag[2:]}") if isinstance(typed, bool) else \
            f"{flag} {'all' if typed is None else typed}"
        raise CheckpointError(
            f"Cannot resume {folder} with {as_typed}: that run was made with {name}={getattr(saved, name)!r}, and "
            f"{WHY[rule]}. Drop the flag, or start a new run with --out."
        )


def _refuse_epochs(epochs: int, saved: FinetuneConfig, folder: str, done: int) -> None:
    """`--epochs` with --resume: the saved count, or any count from the epochs done on with a constant rate."""
    if epochs == saved.epochs:
        return
    recipe = RECIPES[saved.recipe]
    if recipe.cosine or recipe.warmup_fraction > 0:
        raise CheckpointError(
            f"Cannot resume {folder} with --epochs {epochs}: its learning rate follows a warmup + cosine schedule "
            f"planned over {saved.epochs} epochs, which cannot stretch once begun. Drop --epochs, or start a new "
            f"run with --out (the notebook recipe's constant rate can take more epochs on resume)."
        )
    if epochs < done:
        raise CheckpointError(f"Cannot resume {folder} with --epochs {epochs}: that run has already completed "
                              f"{done} epochs. Give --epochs {done} or more, or drop --epochs.")


def _same_folder(typed: str, folder: str) -> bool:
    return Path(typed).expanduser().resolve() == Path(folder).expanduser().resolve()
