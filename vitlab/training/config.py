"""The fine-tuning job's settings: one dataclass, its presets, which flag applies to what, and their checks.

Precedence, lowest first: the dataclass defaults (the notebook's setting), then `--preset`, then the flags a user
typed. When resuming, the saved run's settings take the place of the defaults and preset (`vitlab.training.resume`).
The config is complete when `make_config` returns: the settings whose default depends on others (`pretrained`,
`weights`, `image_size`, `trainable_blocks`) are resolved there, so config.json and the checkpoints hold the values
the run used, and nothing changes them later.

Every flag is used or refused. A setting a preset chose yields where it cannot apply (the demo preset's trunk cache
under torchrun, its fractal base on another arch), with a one-line note; a flag the user typed that cannot apply is
refused (a VitlabError: exit 2) with a line naming the flag and what it applies to. `DATASETS_FLAGS` says which
dataset takes which data flag: a new dataset is one row there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitlab.archs import (
    BASE_NAMES,
    BASES,
    PRETRAINED,
    check_image_size,
    check_side,
    check_weights,
    default_weights,
    native_image_size,
    num_blocks,
    weights_names,
)
from vitlab.cli import LARGEST_SEED, Rule, check_rules, refuse
from vitlab.errors import VitlabError
from vitlab.training import trunk_cache
from vitlab.training.distributed import launched_by_torchrun
from vitlab.training.imported import IMPORTED, NAMED_STARTS, check_timm_name, describe, import_start, is_external

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


@dataclass(frozen=True)
class DataFlags:
    """What one dataset makes of the data flags: whether --data-dir and --val-size mean anything for it."""

    data_dir: bool  # read from --data-dir (and downloaded there when missing)
    val_size: bool  # validation is --val-size images held out of the training images; else a split of its own
    images: tuple[int | None, int | None, int | None]  # (train, val, test) known before loading, for --subset; with
    # `val_size`, train counts the images before validation is held out and val is None; None: known once read
    source: str  # where the images come from, in the words of a message


# Which dataset takes which data flag. A new dataset is one row; tests check every name of vitlab.data.DATASETS has one.
DATASETS_FLAGS: dict[str, DataFlags] = {
    "cifar100": DataFlags(True, True, (50_000, None, 10_000), "is read from --data-dir"),
    "cifar10": DataFlags(True, True, (50_000, None, 10_000), "is read from --data-dir"),
    "fashion_mnist": DataFlags(True, True, (60_000, None, 10_000), "is read from --data-dir"),
    "shapes": DataFlags(False, False, (8_000, 1_000, 1_000), "is generated in memory"),
    "fashion": DataFlags(False, False, (18_000, 1_000, 2_000), "ships inside vitlab"),
    "folder": DataFlags(True, False, (None, None, None), "is read from --data-dir"),
}

# Settings that are no flag: make_config fills them (the command line leaves them out).
NOT_FLAGS = ("imported",)

# Training images before validation is held out, for the datasets that hold it out (the others have fixed splits).
TRAIN_IMAGES = {name: row.images[0] for name, row in DATASETS_FLAGS.items() if row.val_size}

@dataclass
class FinetuneConfig:
    arch: str = "vit_b_16"  # the notebook's model; "vit_tiny" is the 32x32 laptop model; vit_b_32 ... vit_h_14
    weights: str | None = None  # torchvision's weights member, e.g. IMAGENET1K_SWAG_E2E_V1; make_config turns None
    # into the arch's default (IMAGENET1K_V1; ViT-H/14: IMAGENET1K_SWAG_E2E_V1); vit_tiny keeps None
    image_size: int | None = None  # input side in pixels; make_config turns None into the weights' native size
    dataset: str = "cifar100"  # one of vitlab.data.DATASETS, e.g. shapes (synthetic, offline) or folder (yours)
    data_dir: str = "./data"  # where datasets are read from (and downloaded to): DATASETS_FLAGS says which
    pretrained: str | None = None  # "imagenet", "fractal", "none", a state-dict path, or a timm or Hugging Face
    # checkpoint (vitlab.training.imported); make_config turns None into the arch's own base: imagenet for vit_b_16
    # (the notebook's start), fractal for vit_tiny (shipped in vitlab)
    timm_name: str | None = None  # the timm name of a --pretrained timm state-dict file that has no config.json
    # beside it (vit_small_patch16_224.dino): no tensor holds the head count
    imported: dict | None = None  # never typed: make_config's spec of a --pretrained timm or Hugging Face model
    # (arch "imported"), what rebuilding it needs (vitlab.training.imported.describe)
    epochs: int = 5  # the notebook trained 5 epochs
    batch_size: int = 64  # global batch: with torchrun, each of N processes takes batch_size / N
    lr: float | None = None  # head learning rate; None takes the recipe's (1e-3 for both recipes)
    trainable_blocks: int | None = 3  # last encoder blocks that train; None ("all", resolved by make_config to the
    # arch's block count) trains every block and the embeddings, as training from scratch needs
    recipe: str = "default"  # "default" (AdamW, warmup+cosine, smoothing, clipping, bf16 on CUDA) or "notebook"
    seed: int = 42  # seeds the init, the validation split, the shuffling and the augmentation
    device: str = "auto"  # auto picks CUDA, then Apple's MPS, then the CPU
    out: str | None = None  # run folder; None makes runs/<timestamp>
    resume: str | None = None  # a run folder to continue from its last completed epoch
    subset: int | None = None  # use only the first N images of each split (smoke runs)
    val_size: int = 5000  # images held out of the training set for validation (DATASETS_FLAGS says which)
    max_rotation: float = 10.0  # degrees of random rotation in training, as the notebook
    compile: bool = False  # torch.compile the model: faster steps after a compile that costs tens of seconds
    cache_trunk: bool = False  # train the last blocks on cached outputs of the frozen trunk (flip-only augmentation)
    preset: str | None = None  # a named bundle of the settings above, e.g. "demo"
    quiet: bool = False  # no progress bars or per-epoch lines
    tensorboard: bool = True  # TensorBoard events in the run folder (losses, accuracy, lr, attention each epoch)


PRESETS: dict[str, dict] = {
    # The offline demo is the notebook's recipe in miniature, on real photographs: vit_tiny's shipped fashion base
    # (SimMIM on fractals, then on the shipped Fashion-MNIST photos, no labels), frozen, with its last 2 blocks and
    # a new head fine-tuned on the shipped subset's 18,000 labelled training photos. The frozen trunk runs once
    # (mirrored and not: the cache's two views), so each epoch trains only the top. Chosen on the accuracy / wall
    # time frontier measured in docs/results.md ("The demo on photos").
    "demo": {
        "arch": "vit_tiny",
        "dataset": "fashion",
        "pretrained": "fashion",
        "epochs": 5,
        "batch_size": 32,
        # The head at 2e-2, the 2 pretrained blocks at a tenth of it (the default recipe).
        "lr": 2e-2,
        "trainable_blocks": 2,
        "cache_trunk": True,
        "max_rotation": 0.0,
    },
    # The notebook's job cut to fit a laptop CPU: ImageNet ViT-B/16 at 112 px (a 7x7 grid, 50 tokens instead of
    # 197), its frozen trunk cached once (flip-only augmentation), the last 3 blocks and a new head trained on a
    # CIFAR-100 subset, sized so the run, timed end to end on 2 cores, fits in 30 minutes (docs/laptop-run.md).
    "laptop": {
        "arch": "vit_b_16",
        "dataset": "cifar100",
        "pretrained": "imagenet",
        "weights": "IMAGENET1K_V1",
        "image_size": 112,
        "trainable_blocks": 3,
        "cache_trunk": True,
        "max_rotation": 0.0,
        "subset": 6_000,  # the first 6,000 of train and of test
        "val_size": 2_000,
        "epochs": 3,
        "batch_size": 64,
    },
}

def make_config(flags: dict[str, Any], base: FinetuneConfig | None = None,
                notes: list[str] | None = None) -> FinetuneConfig:
    """Defaults (or `base`), then the preset, then the typed `flags`; returns the complete, checked config.

    Complete: `pretrained` None becomes the arch's own base ("imagenet" for vit_b_16, "fractal" for vit_tiny),
    `weights` None the arch's default torchvision weights, `image_size` None those weights' native size (224 for
    IMAGENET1K_V1), `trainable_blocks` None ("all") the arch's block count, and a trunk cache without a typed
    `--max-rotation` sets it to 0. A `--pretrained` timm or Hugging Face checkpoint is imported here, once, to check
    that it maps and to read its shape: the arch becomes "imported" and `imported` its spec (its size the model's
    own unless --image-size is typed). A preset's setting that cannot apply yields, and says so in `notes` when
    given, as do the importer's notes; a typed flag that cannot apply, or any bad value, is a VitlabError (exit 2)
    naming the flag.
    """
    values = vars(base if base is not None else FinetuneConfig()).copy()
    preset = flags.get("preset")
    chosen = {name: value for name, value in PRESETS.get(preset, {}).items() if name not in flags}
    values.update(chosen)
    values.update(flags)
    yielded, found = _resolve(values, chosen, flags)
    config = check_config(FinetuneConfig(**values))  # each value alone first: a bad one is named before any mix
    _refuse_typed(config, flags)
    if notes is not None:
        notes.extend(f"--preset {preset}'s {_flag(name, chosen[name])} yields: {why}." for name, why in yielded)
        notes.extend(f"--pretrained {config.pretrained}: {note}" for note in found)
    return config


def _flag(name: str, value: Any) -> str:
    """A setting as typed on the command line: "--cache-trunk", "--pretrained fractal"."""
    flag = "--" + name.replace("_", "-")
    return flag if value is True else f"{flag} {value}"


def _resolve(values: dict[str, Any], chosen: dict[str, Any],
             typed: dict[str, Any]) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """Fill in place the settings whose default depends on others; a preset's (`chosen`) setting that cannot apply
    yields to what would apply without it. Returns (setting, why) for each one that yielded, and the importer's
    notes on a --pretrained timm or Hugging Face model (what it chose because the files did not say)."""
    yielded: list[tuple[str, str]] = []
    found: tuple[str, ...] = ()
    if values["imported"] is None:  # a saved imported run keeps its spec; its files may be gone
        check_timm_name(values["pretrained"], values["timm_name"])
    if values["arch"] == IMPORTED or is_external(values["pretrained"]):
        found = _resolve_imported(values, chosen, typed, yielded)
    else:
        _resolve_arch(values, chosen, yielded)
    if values["trainable_blocks"] is None:
        values["trainable_blocks"] = _block_count(values["arch"], values["imported"])
    if values["cache_trunk"] and "cache_trunk" in chosen and (why := _cache_cannot_apply(values, typed)):
        yielded.append(("cache_trunk", why))
        values["cache_trunk"] = False
    if values["cache_trunk"] and "max_rotation" not in typed:
        values["max_rotation"] = 0.0  # a cached trunk cannot see rotated images (see vitlab.training.trunk_cache)
    return yielded, found


def _resolve_arch(values: dict[str, Any], chosen: dict[str, Any], yielded: list[tuple[str, str]]) -> None:
    """The start weights, torchvision weights and image size of one of vitlab's own archs."""
    arch = values["arch"]
    if values["pretrained"] in set(BASE_NAMES) - set(BASES[arch]) and "pretrained" in chosen:
        yielded.append(("pretrained", f"{arch}'s own base is {PRETRAINED[arch]}"))
        values["pretrained"] = None
    if values["pretrained"] is None:
        values["pretrained"] = PRETRAINED[arch]
    if values["weights"] is not None and values["weights"] not in weights_names(arch) and "weights" in chosen:
        yielded.append(("weights", f"{arch} has no torchvision weights of that name"))
        values["weights"] = None
    if values["weights"] is None:
        values["weights"] = default_weights(arch)
    if "image_size" in chosen and not _fits(arch, values["image_size"]):
        yielded.append(("image_size", f"{arch}'s patches do not tile it, so it runs at its native size"))
        values["image_size"] = None
    if values["image_size"] is None:
        check_weights(arch, values["weights"])  # the native size needs weights that exist
        values["image_size"] = native_image_size(arch, values["weights"])


def _resolve_imported(values: dict[str, Any], chosen: dict[str, Any], typed: dict[str, Any],
                      yielded: list[tuple[str, str]]) -> tuple[str, ...]:
    """A --pretrained timm or Hugging Face model: it brings its architecture, weights and size, so the preset's
    yield; a new run imports it (refused here, with the importer's message, if it does not map) for its spec."""
    if "arch" in typed:
        raise VitlabError(f"--arch {typed['arch']} and --pretrained {values['pretrained']} both choose the model: a "
                          f"timm or Hugging Face checkpoint brings its own architecture. Drop --arch.")
    why = {"arch": "the --pretrained checkpoint brings its own architecture",
           "weights": "the --pretrained checkpoint brings its own weights",
           "image_size": "the imported model runs at its own size unless --image-size is typed"}
    for name in why:
        if name in chosen and values["imported"] is None:
            yielded.append((name, why[name]))
            values[name] = None
    values["arch"], values["weights"] = IMPORTED, None
    notes: tuple[str, ...] = ()
    if values["imported"] is None:
        if not is_external(values["pretrained"]):
            raise VitlabError(f"--pretrained {values['pretrained']} is not a timm or Hugging Face checkpoint, yet the "
                              f"settings name the arch {IMPORTED!r}. Pass the checkpoint vitlab imports, or an arch.")
        imported = import_start(values["pretrained"], values["timm_name"])
        values["imported"], notes = describe(imported, values["image_size"]), imported.notes
    values["image_size"] = values["imported"]["vit"]["image_size"]
    blocks = _block_count(IMPORTED, values["imported"])
    if "trainable_blocks" not in typed and (values["trainable_blocks"] or 0) > blocks:  # the default's 3, a preset's
        if "trainable_blocks" in chosen:
            yielded.append(("trainable_blocks", f"the imported model has {blocks} blocks, so all of them train"))
        values["trainable_blocks"] = None
    return notes


def _block_count(arch: str, imported: dict | None) -> int:
    """Encoder blocks of `arch`, or of an imported model (its spec)."""
    return int(imported["vit"]["num_layers"]) if arch == IMPORTED else num_blocks(arch)


def block_count(config: FinetuneConfig) -> int:
    """Encoder blocks of the run's model: the arch's (vitlab.archs), or an imported model's spec."""
    return _block_count(config.arch, config.imported)


def _fits(arch: str, image_size: int | None) -> bool:
    try:
        check_image_size(arch, image_size)
    except VitlabError:
        return False
    return True


def _cache_cannot_apply(values: dict[str, Any], typed: dict[str, Any]) -> str | None:
    """Why a preset's trunk cache cannot serve these settings, in words; None when it can."""
    if values["trainable_blocks"] == _block_count(values["arch"], values["imported"]):
        return "every block trains, so no frozen trunk is left to cache"
    if launched_by_torchrun():
        return "a cached trunk runs in one process and torchrun started several, so each step runs the whole model"
    if typed.get("max_rotation", 0) != 0:
        return f"--max-rotation {typed['max_rotation']:g} needs the whole model, as cached tokens cannot be rotated"
    return None


def _refuse_typed(config: FinetuneConfig, typed: dict[str, Any]) -> None:
    """Refuse a typed flag that cannot apply to these settings: one line naming the flag and what it applies to."""
    row, dataset = DATASETS_FLAGS[config.dataset], config.dataset
    if "data_dir" in typed and not row.data_dir:
        readers = ", ".join(name for name, other in DATASETS_FLAGS.items() if other.data_dir)
        raise VitlabError(f"--data-dir applies only to the datasets read from disk ({readers}), and {dataset} "
                          f"{row.source}: drop --data-dir.")
    if "weights" in typed and config.pretrained != "imagenet":
        raise VitlabError(f"--weights applies only to runs that start from torchvision's weights (--pretrained "
                          f"imagenet), and this one starts from {config.pretrained}: drop --weights (--image-size "
                          f"sets the input size).")
    if "val_size" in typed and not row.val_size:
        holders = ", ".join(name for name, other in DATASETS_FLAGS.items() if other.val_size)
        raise VitlabError(f"--val-size applies only to the datasets whose validation images are held out of their "
                          f"training images ({holders}), and {dataset} has a validation split of its own: drop "
                          f"--val-size.")
    sizes = _split_sizes(row, config.val_size)
    if typed.get("subset") is not None and sizes is not None and typed["subset"] >= max(sizes):
        raise VitlabError(f"--subset {typed['subset']} would keep every image of {dataset} ({sizes[0]:,} train, "
                          f"{sizes[1]:,} val, {sizes[2]:,} test), so it changes nothing: choose fewer (for example "
                          f"--subset 512), or drop --subset.")
    if config.cache_trunk and ("cache_trunk" in typed or "max_rotation" in typed):
        every = config.trainable_blocks == block_count(config)
        trunk_cache.check_settings(config.max_rotation, None if every else config.trainable_blocks,
                                   launched_by_torchrun())


def _split_sizes(row: DataFlags, val_size: int) -> tuple[int, int, int] | None:
    """(train, val, test) images of a dataset before --subset, when known without loading it."""
    train, val, test = row.images
    if train is None or test is None:
        return None
    return (train - val_size, val_size, test) if row.val_size else (train, val, test)


def check_config(config: FinetuneConfig) -> FinetuneConfig:
    """Check every setting of a complete config (after defaults, preset, flags and a resumed run's settings are
    merged); return it unchanged, or raise a VitlabError naming the flag, the value, what is allowed and an example.
    """
    check_rules(config, RULES)
    if config.arch == IMPORTED:
        _check_imported(config)
    else:
        own = BASES[config.arch]
        if config.pretrained in set(BASE_NAMES) - set(own):
            raise VitlabError(f"--pretrained {config.pretrained} is not a base for --arch {config.arch}: its own "
                              f"{'are' if len(own) > 1 else 'is'} {', '.join(own)}. Use --pretrained {own[0]}, none, "
                              f"or PATH.")
        check_weights(config.arch, config.weights)
        check_image_size(config.arch, config.image_size)
    blocks = block_count(config)
    if config.trainable_blocks > blocks:
        whose = config.arch if config.imported is None else config.imported["name"]
        raise refuse("trainable_blocks", config.trainable_blocks, f"from 0 to {blocks} ({whose} has {blocks}"
                     " blocks) or 'all'", "--trainable-blocks 3")
    total = TRAIN_IMAGES.get(config.dataset)
    if total is not None and config.val_size >= total:
        raise refuse("val_size", config.val_size, f"less than {config.dataset}'s {total:,} training images",
                     "--val-size 5000")
    _check_paths(config)
    return config


def _check_imported(config: FinetuneConfig) -> None:
    """An imported model's settings: its spec, no torchvision weights, an image size its patches tile."""
    if config.imported is None:
        raise VitlabError(f"The settings name the arch {IMPORTED!r} without the spec of the model (config.json's "
                          f"'imported'): start the run again from its --pretrained checkpoint, with --out.")
    if config.weights is not None:
        raise VitlabError(f"--weights {config.weights}: an imported model brings its own weights. Drop --weights.")
    check_side(int(config.imported["vit"]["patch_size"]), config.image_size, config.imported["name"])


def _check_paths(config: FinetuneConfig) -> None:
    """Files the run must read exist now, not after minutes of loading (an imported run's spec rebuilds it)."""
    if config.imported is None and config.pretrained not in NAMED_STARTS \
            and not Path(config.pretrained).expanduser().is_file():
        raise VitlabError(f"--pretrained {config.pretrained} is not a file, nor a timm or Hugging Face checkpoint. "
                          f"Pass a state-dict file (.pth), a timm or Hugging Face ViT (a file, or the folder with its "
                          f"config.json), or one of: imagenet (vit_b_16), fractal or fashion (vit_tiny), none (for "
                          f"example --pretrained none).")
    if config.dataset == "folder" and not Path(config.data_dir).expanduser().is_dir():
        raise VitlabError(f"--data-dir {config.data_dir} is not a folder. --dataset folder reads one subfolder per "
                          f"class from it (for example --data-dir ~/pictures/pets).")
