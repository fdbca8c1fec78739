"""Pretrain vitlab's small ViT offline: on generated fractals, then on unlabelled photos; the bases vitlab ships.

    python -m vitlab.pretrain --ship                # the fractal base (vitlab/weights/vit_tiny_fractal.json)
    python -m vitlab.pretrain --data fashion --init fractal --epochs 120 --mask-ratio 0.75 --global-weight 1 \
        --position-lr-scale 1 --ship                # the demo's base, from the fractal one (vit_tiny_fashion.json)
    python -m vitlab.pretrain --epochs 1 --steps-per-epoch 5 --out /tmp/smoke      # a smoke run
    python -m vitlab.pretrain --resume runs/pretrain-20261202-120000               # continue a stopped run

Every step draws a fresh batch of images, hides some of each image's patches and trains
`vitlab.training.simmim.MaskedImageModel` to predict the hidden pixels. `--data fractals` draws new IFS fractals
(`vitlab.data.fractals`) every step; `--data fashion` draws from the shipped Fashion-MNIST subset's 18,000 training
photos (`vitlab.data.fashion`; never its validation or test photos), randomly mirrored, and uses no label. After
each epoch it measures what the lessons look for (`vitlab.analysis.structure`): position-embedding locality and how
far each head looks, on held-out images of the kind it trains on (shapes test images for fractals, the subset's
validation photos for fashion).

Why two stages: SimMIM on the photos alone, from random weights, learns the photos but not the structure (position
Spearman -0.15 after 20 epochs, heads no more local than uniform: docs/pretrained-base.md); started from the fractal
base it keeps the structure and learns the clothes, which is what fine-tuning on 5 epochs of photos needs.

The optimiser and schedule are fine-tuning's (`vitlab.training.train.make_optimizer`, `make_scheduler`): AdamW with
decay on weight matrices and the patch projection (not on biases, norms, the position embedding or the class and
mask tokens), the position embedding at `--position-lr-scale` times the rate, and 5% linear warmup then cosine.
Each shipped base's card holds the command that made it; run again with the same `--threads`, it writes the same
bytes (docs/pretrained-base.md).

The run folder: config.json, history.json (one record per epoch), checkpoint.pt (last epoch: everything needed to
resume, written atomically), and at the end base.pt (the ViT's weights without its pretraining head and decoder:
what `build_model("vit_tiny", pretrained=PATH)` loads) with card.json beside it (the command, settings, wall time,
device, metrics and base.pt's SHA-256). `--ship` then copies both into the package (vitlab/weights/).
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vitlab.analysis.structure import distance_ratios, position_embedding_spearman
from vitlab.atomic import atomic_write
from vitlab.cli import LARGEST_SEED, Parser, Rule, check_rules, command, folder_to_write, number_flag
from vitlab.data import BatchTransform
from vitlab.data.unlabelled import ImageSource, image_source
from vitlab.errors import CheckpointError, Interrupted, VitlabError
from vitlab.model import VIT_TINY_CONFIG, build_model
from vitlab.shipped import card_name, shipped_base_file, shipped_weights_dir
from vitlab.training.checkpoint import load_checkpoint, load_optimizer_state, save_checkpoint, save_json
from vitlab.training.folder_lock import lock_folder
from vitlab.training.simmim import MaskedImageModel
from vitlab.training.train import NonFiniteLossError, Recipe, make_optimizer, make_scheduler


@dataclass
class PretrainConfig:
    num_classes: int = 100  # fractal classes (IFS systems) the images are drawn from
    system_seed: int = 0  # which classes: the IFS parameters are drawn from this seed
    seed: int = 0  # the init, the images drawn each step and the masks
    epochs: int = 30  # an epoch is `steps_per_epoch` steps of fresh images, then a measurement and a checkpoint
    steps_per_epoch: int = 100
    batch_size: int = 64  # small batches, many steps: on 2 cores the step count, not the batch, is what is scarce
    lr: float = 1e-3  # AdamW peak learning rate, 5% linear warmup then cosine decay to 0
    weight_decay: float = 0.05
    position_lr_scale: float = 10.0  # the position embeddings learn this much faster: they start at std 0.02 and
    # must outgrow the patch content to matter, which at the base rate takes far more steps than a laptop budget
    mask_ratio: float = 0.5  # share of the patch grid hidden from the encoder
    mask_block: int = 1  # masked squares are mask_block x mask_block patches
    class_weight: float = 0.0  # weight of a fractal-class loss next to the pixel loss. 0, SimMIM alone: with 1.0
    # the pixel loss stalled and no structure appeared in 1,500 steps (BENCHMARKS.md, "pretraining variants")
    data: str = "fractals"  # what the images are: "fractals" (generated) or "fashion" (the shipped photos, unlabelled)
    init: str | None = None  # the start: None (random weights), "fractal" (the shipped fractal base) or a base.pt
    global_weight: float = 0.0  # weight of a loss that has the class token predict the whole image at one pixel per
    # patch: without a job in SimMIM the class token's output is never trained, and fine-tuning's head reads it
    threads: int | None = None  # CPU threads for PyTorch (default: PyTorch's choice)
    out: str | None = None  # run folder; None makes runs/pretrain-<timestamp>
    resume: str | None = None  # a run folder to continue from its last completed epoch
    ship: bool = False  # copy base.pt and card.json into the package when done
    quiet: bool = False  # no progress bar or per-epoch lines


GRID = VIT_TINY_CONFIG["image_size"] // VIT_TINY_CONFIG["patch_size"]  # patches per side: 8
RULES: dict[str, Rule] = {  # every number's range, in vitlab.cli' format (checked as the flags are parsed)
    "num_classes": Rule(1, 10_000, "--num-classes 100"),
    "system_seed": Rule(0, LARGEST_SEED, "--system-seed 0"),
    "seed": Rule(0, LARGEST_SEED, "--seed 0"),
    "epochs": Rule(1, 100_000, "--epochs 30"),
    "steps_per_epoch": Rule(1, 10**7, "--steps-per-epoch 100"),
    "batch_size": Rule(1, 65_536, "--batch-size 64"),
    "lr": Rule(0, 1, "--lr 1e-3", whole=False, low_open=True),
    "weight_decay": Rule(0, 1, "--weight-decay 0.05", whole=False),
    "position_lr_scale": Rule(0, 1000, "--position-lr-scale 10", whole=False, low_open=True),
    # At least one of the 64 patches hidden and one visible: round(ratio * 64) from 1 to 63.
    "mask_ratio": Rule(1 / GRID**2, 1 - 1 / GRID**2, "--mask-ratio 0.5", whole=False),
    "mask_block": Rule(1, GRID, "--mask-block 1"),  # and a divisor of the grid, checked in check_config
    "class_weight": Rule(0, 1000, "--class-weight 0", whole=False),
    "global_weight": Rule(0, 1000, "--global-weight 0", whole=False),
    "threads": Rule(1, 1024, "--threads 2", optional=True),
}


def build_parser() -> Parser:
    parser = Parser(rules=RULES, prog="python -m vitlab.pretrain", description=__doc__.splitlines()[0])
    for field in fields(PretrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":  # --ship and --no-ship, --quiet and --no-quiet
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif field.name == "data":
            parser.add_argument(flag, choices=DATA_KINDS, default=None)
        else:
            kind = number_flag(field.name, RULES[field.name]) if field.name in RULES else str
            parser.add_argument(flag, type=kind, default=None)
    return parser


DATA_KINDS = ("fractals", "fashion")
FRACTALS_ONLY = ("num_classes", "system_seed", "class_weight")  # settings of the fractal generator and its labels


def _refuse_misplaced(flags: dict) -> None:
    """A typed flag that does nothing for the chosen data is refused (exit 2), not silently ignored."""
    if flags.get("data", "fractals") == "fractals":
        return
    for name in FRACTALS_ONLY:
        if name in flags:
            raise VitlabError(f"--{name.replace('_', '-')} applies to --data fractals only (the generated classes); "
                              f"--data {flags['data']} trains on unlabelled photos. Drop it.")


# What a flag typed with --resume may do: these change how the run is carried out and apply; --out may only name
# the folder being resumed; every other setting is the saved run's (its schedule, images and masks follow from them).
FREE_ON_RESUME = ("threads", "ship", "quiet")


def make_config(argv: list[str] | None) -> tuple[PretrainConfig, dict | None]:
    """The settings from the command line, or the stopped run's own when resuming (with FREE_ON_RESUME typed)."""
    flags = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    _refuse_misplaced(flags)
    if "resume" not in flags:
        return check_config(PretrainConfig(**flags)), None
    folder = flags["resume"]
    checkpoint = load_checkpoint(Path(folder).expanduser() / "checkpoint.pt")
    saved = PretrainConfig(**checkpoint["config"])
    for name, value in flags.items():
        _refuse_change(name, value, saved, folder)
    saved.out, saved.resume = folder, folder
    for name in FREE_ON_RESUME:
        setattr(saved, name, flags.get(name, getattr(saved, name)))
    return check_config(saved), checkpoint


def _refuse_change(name: str, typed: object, saved: PretrainConfig, folder: str) -> None:
    """Raise a CheckpointError if `--name typed` cannot be given when resuming the run `saved` in `folder`."""
    if name in FREE_ON_RESUME or name == "resume":
        return
    flag = "--" + name.replace("_", "-")
    if name == "out":
        if Path(str(typed)).expanduser().resolve() != Path(folder).expanduser().resolve():
            raise CheckpointError(f"--out {typed} cannot be used with --resume {folder}: a resumed run writes into "
                                  f"its own folder. Drop --out.")
        return
    if typed != getattr(saved, name):
        raise CheckpointError(f"Cannot resume {folder} with {flag} {typed}: that run was made with "
                              f"{name}={getattr(saved, name)!r}, and a resumed run continues with the settings it "
                              f"began with. Drop the flag, or start a new run with --out.")


def check_config(config: PretrainConfig) -> PretrainConfig:
    """Refuse settings that cannot make a run, before any work starts (a VitlabError: exit 2, no run folder)."""
    check_rules(config, RULES)
    if GRID % config.mask_block:
        divisors = ", ".join(str(d) for d in range(1, GRID + 1) if GRID % d == 0)
        raise VitlabError(f"--mask-block {config.mask_block} is not allowed: it must divide the {GRID}x{GRID} patch "
                          f"grid: one of {divisors} (for example --mask-block 1).")
    if config.init not in (None, "fractal") and not Path(config.init).expanduser().is_file():
        raise VitlabError(f"--init {config.init} is not a file. Pass a base.pt written by vitlab.pretrain, or "
                          f"--init fractal (the shipped fractal base).")
    folder_to_write("out", config.out)
    return config


# Pretraining's optimiser and schedule: train.make_optimizer and make_scheduler, with this recipe (no head is
# pretrained, so everything learns at --lr, and --position-lr-scale speeds up the position embedding).
PRETRAIN_RECIPE = Recipe(name="pretrain", optimizer="adamw", lr=1e-3, pretrained_lr_scale=1.0, weight_decay=0.05,
                         warmup_fraction=0.05, cosine=True, label_smoothing=0.0, grad_clip=1.0, bf16_on_cuda=False)
POSITION = "vit.encoder.pos_embedding"  # the position embedding's name among the objective's parameters


@dataclass
class PretrainRun:
    """One pretraining run while it goes (variables holding one are called `run`)."""

    config: PretrainConfig
    out: Path
    objective: MaskedImageModel
    recipe: Recipe
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator  # draws the images, labels and masks: saved in checkpoints, so resuming is exact
    history: list[dict]
    seconds: float = 0.0  # training time over all sessions of this run

    def say(self, message: str) -> None:
        if not self.config.quiet:
            print(message, flush=True)


def run_folder_path(config: PretrainConfig) -> Path:
    """Where the run writes: `config.out`, or runs/pretrain-<timestamp> for a new run given none."""
    return Path(config.out or Path("runs") / time.strftime("pretrain-%Y%m%d-%H%M%S")).expanduser()


def setup(config: PretrainConfig, checkpoint: dict | None, out: Path) -> PretrainRun:
    """Model, objective, optimiser and schedule; restored from `checkpoint` when resuming. `out` is locked."""
    if checkpoint is None and (out / "checkpoint.pt").exists():
        raise VitlabError(f"{out} already holds a pretraining run. Continue it with --resume {out}, or choose "
                          f"another --out; vitlab never overwrites a run.")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    vit = build_model("vit_tiny", num_classes=config.num_classes, pretrained=_start(config.init),
                      trainable_blocks=VIT_TINY_CONFIG["num_layers"])
    objective = MaskedImageModel(vit, config.mask_ratio, config.mask_block, config.class_weight,
                                 config.global_weight)
    recipe = replace(PRETRAIN_RECIPE, lr=config.lr, weight_decay=config.weight_decay)
    optimizer = make_optimizer(objective, recipe, config.lr, pretrained=False,
                               lr_scales={POSITION: config.position_lr_scale})
    scheduler = make_scheduler(optimizer, recipe, total_steps=config.epochs * config.steps_per_epoch)
    run = PretrainRun(config, out, objective, recipe, optimizer, scheduler,
                      torch.Generator().manual_seed(config.seed), [])
    if checkpoint is not None:
        objective.load_state_dict(checkpoint["objective"])
        load_optimizer_state(optimizer, checkpoint["optimizer"], out)
        scheduler.load_state_dict(checkpoint["scheduler"])
        run.generator.set_state(checkpoint["generator"])
        run.history, run.seconds = checkpoint["history"], checkpoint["seconds"]
    return run


def _start(init: str | None) -> bool | Path:
    """build_model's `pretrained` for `--init`: random weights, the shipped fractal base (its SHA-256 checked), or a
    base.pt."""
    if init is None:
        return False
    return shipped_base_file(name="fractal") if init == "fractal" else Path(init).expanduser()


def train_epoch(run: PretrainRun, source: ImageSource, transform: BatchTransform, epoch: int) -> dict[str, float]:
    """`steps_per_epoch` steps, each on a fresh batch of images. Returns the epoch's mean losses."""
    config, objective = run.config, run.objective
    objective.train()
    sums = {"pixel": 0.0, "class": 0.0, "class_acc": 0.0, "global": 0.0}
    bar = tqdm(range(config.steps_per_epoch), desc=f"pretrain epoch {epoch}/{config.epochs}", leave=False,
               disable=config.quiet)
    for _ in bar:
        images, labels = source.draw(config.batch_size, run.generator)  # uint8 (B, 3, 32, 32), (B,)
        mask = objective.random_mask(config.batch_size, run.generator)  # (B, patches)
        loss, parts = objective.loss(transform(images), labels, mask)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"The pretraining loss became {loss.item()} in epoch {epoch}; lower --lr. The "
                                     f"last completed epoch is kept in {run.out}/checkpoint.pt.")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), run.recipe.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        for name, value in parts.items():
            sums[name] += float(value)
        bar.set_postfix(pixel=f"{float(parts['pixel']):.3f}")
    return {name: total / config.steps_per_epoch for name, total in sums.items()}


def measure(run: PretrainRun, probe_images: torch.Tensor) -> dict[str, float]:
    """The structure the lessons look for, on the model as it is now (see vitlab.analysis.structure)."""
    vit = run.objective.vit
    ratios = distance_ratios(vit, probe_images)  # (blocks, heads)
    return {"position_spearman": position_embedding_spearman(vit),
            "first_block_min_distance_ratio": float(ratios[0].min()),
            "last_block_mean_distance_ratio": float(ratios[-1].mean()),
            "distance_ratios": [[round(float(r), 4) for r in row] for row in ratios]}


def fit(run: PretrainRun) -> None:
    """The epoch loop: train, measure, save a resumable checkpoint."""
    config = run.config
    source, probe_images = image_source(config.data, config.num_classes, config.system_seed)
    transform = BatchTransform(32, train=False)  # ImageNet normalisation, as fine-tuning uses
    probe = transform(probe_images)  # (250, 3, 32, 32)
    for epoch in range(len(run.history) + 1, config.epochs + 1):
        started = time.perf_counter()
        record = {"epoch": epoch, **train_epoch(run, source, transform, epoch)}
        run.seconds += time.perf_counter() - started
        record.update(seconds=round(run.seconds, 1), **measure(run, probe))
        run.history.append(record)
        save_checkpoint(run.out / "checkpoint.pt", {
            "config": asdict(config), "objective": run.objective.state_dict(), "epoch": epoch,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "generator": run.generator.get_state(), "history": run.history, "seconds": run.seconds})
        save_json(run.out / "history.json", run.history)
        classes = f", class loss {record['class']:.2f} (acc {record['class_acc']:.1%})" if config.class_weight else ""
        run.say(f"epoch {epoch}/{config.epochs}: pixel L1 {record['pixel']:.3f}{classes} | position Spearman "
                f"{record['position_spearman']:.2f}, first block's most local head "
                f"{record['first_block_min_distance_ratio']:.2f}x uniform, last block "
                f"{record['last_block_mean_distance_ratio']:.2f}x | {run.seconds:.0f}s")


DATA_NAMES = {"fractals": "vitlab.data.fractals (IFS fractals, FractalDB-style), drawn fresh every step",
              "fashion": "vitlab.data.fashion: the shipped Fashion-MNIST subset's 18,000 training photos, unlabelled, "
                         "randomly mirrored"}
SHIPPED_AS = {"fractals": "fractal", "fashion": "fashion"}  # --data -> the shipped base's name (vitlab.shipped)


def finish(run: PretrainRun, argv: list[str] | None) -> Path:
    """Write base.pt (the ViT body) and card.json; with --ship, copy both into the package."""
    state = {k: v for k, v in run.objective.vit.state_dict().items() if not k.startswith("heads.")}
    base = save_checkpoint(run.out / "base.pt", {"model": state})
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    final = {k: v for k, v in run.history[-1].items() if k not in ("epoch", "seconds")}
    card = {"model": "vit_tiny", "architecture": VIT_TINY_CONFIG,
            "command": "python -m vitlab.pretrain " + " ".join(argv if argv is not None else sys.argv[1:]),
            "config": asdict(run.config), "data": DATA_NAMES[run.config.data], "init": _init_record(run.config),
            "epochs": len(run.history), "images_seen": len(run.history) * run.config.steps_per_epoch
            * run.config.batch_size, "wall_seconds": round(run.seconds, 1),
            "device": f"cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}", "metrics": final, "sha256": digest}
    save_json(run.out / "card.json", card)
    if run.config.ship:
        shipped = ship(base, card, SHIPPED_AS[run.config.data])
        run.say(f"shipped as {shipped}")
    return base


def _init_record(config: PretrainConfig) -> dict | None:
    """What the run started from, for the card: None (random weights), or the start file's name and SHA-256."""
    if config.init is None:
        return None
    path = _start(config.init)
    return {"init": config.init, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def ship(base: Path, card: dict, name: str) -> Path:
    """Copy `base` and its card into the package as the shipped base `name`: the new files are written (atomically)
    before the old weights file is removed, so an interrupted ship never leaves the package without a base."""
    target = shipped_weights_dir()
    shipped = target / f"vit_tiny_{name}-{card['sha256'][:8]}.pt"
    weights = base.read_bytes()
    atomic_write(shipped, lambda file: file.write(weights))
    save_json(target / card_name(name), card)
    for stale in target.glob(f"vit_tiny_{name}-*.pt"):
        if stale != shipped:
            stale.unlink()
    return shipped


@command("vitlab")
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 done, 1 a file could not be written or the loss failed, 2 bad input or a run
    folder in use, 130 interrupted (the last completed epoch is kept)."""
    config, checkpoint = make_config(argv)
    with lock_folder(run_folder_path(config)) as lock:  # held until the run ends: one run per folder
        if lock.note and not config.quiet:
            print(f"vitlab: note: {lock.note}", flush=True)
        run = setup(config, checkpoint, lock.folder)
        save_json(run.out / "config.json", asdict(config))
        what = f"{config.num_classes} fractal classes" if config.data == "fractals" else "Fashion-MNIST photos"
        start = {None: "", "fractal": " from the fractal base"}.get(config.init, f" from {config.init}")
        run.say(f"vitlab: pretraining vit_tiny{start} on {what}, {config.epochs} epochs of {config.steps_per_epoch} "
                f"x {config.batch_size} images; run folder {run.out}")
        try:
            fit(run)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; completed epochs are kept. Continue with --resume {run.out}") from None
        finish(run, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
