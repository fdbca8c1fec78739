"""Pretrain vitlab's small ViT on generated fractals, offline: the base that the demo fine-tunes.

    python -m vitlab.pretrain                       # the shipped base's recipe (see vitlab/weights/*.json)
    python -m vitlab.pretrain --epochs 1 --steps-per-epoch 5 --out /tmp/smoke      # a smoke run
    python -m vitlab.pretrain --resume runs/pretrain-20261202-120000               # continue a stopped run

Every step draws a fresh batch of IFS fractals (`vitlab.data.fractals`), hides half of each image's patches and
trains `vitlab.training.simmim.MaskedImageModel` to predict the hidden pixels. After each epoch it measures what the
lessons
look for (`vitlab.analysis.structure`): position-embedding locality and how far each head looks, on shapes test images.

The run folder: config.json, history.json (one record per epoch), checkpoint.pt (last epoch: everything needed to
resume, written atomically), and at the end base.pt (the ViT's weights without its pretraining head and decoder:
what `build_model("vit_tiny", pretrained=True)` loads) with card.json beside it (the command, settings, wall time,
device, metrics and base.pt's SHA-256). `--ship` then copies both into the package (vitlab/weights/).
"""

from __future__ import annotations

import hashlib
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vitlab.analysis.structure import distance_ratios, position_embedding_spearman
from vitlab.atomic import atomic_write
from vitlab.cli import LARGEST_SEED, Parser, Rule, check_rules, command, folder_to_write, number_flag
from vitlab.data import BatchTransform, load_dataset
from vitlab.data.fractals import make_systems, render
from vitlab.errors import Interrupted, VitlabError
from vitlab.model import VIT_TINY_CONFIG, build_model
from vitlab.shipped import shipped_weights_dir
from vitlab.training.checkpoint import load_checkpoint, save_checkpoint, save_json
from vitlab.training.simmim import MaskedImageModel


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
    "threads": Rule(1, 1024, "--threads 2", optional=True),
}


def build_parser() -> Parser:
    parser = Parser(rules=RULES, prog="python -m vitlab.pretrain", description=__doc__.splitlines()[0])
    for field in fields(PretrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action="store_true", default=None)
        else:
            kind = number_flag(field.name, RULES[field.name]) if field.name in RULES else str
            parser.add_argument(flag, type=kind, default=None)
    return parser


def make_config(argv: list[str] | None) -> tuple[PretrainConfig, dict | None]:
    """The settings from the command line, or the stopped run's own when resuming (plus --ship/--quiet)."""
    flags = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    if "resume" not in flags:
        return check_config(PretrainConfig(**flags)), None
    checkpoint = load_checkpoint(Path(flags["resume"]) / "checkpoint.pt")
    saved = PretrainConfig(**checkpoint["config"])
    saved.out, saved.resume = flags["resume"], flags["resume"]
    saved.ship, saved.quiet = flags.get("ship", saved.ship), flags.get("quiet", saved.quiet)
    return saved, checkpoint


def check_config(config: PretrainConfig) -> PretrainConfig:
    """Refuse settings that cannot make a run, before any work starts (a VitlabError: exit 2, no run folder)."""
    check_rules(config, RULES)
    if GRID % config.mask_block:
        divisors = ", ".join(str(d) for d in range(1, GRID + 1) if GRID % d == 0)
        raise VitlabError(f"--mask-block {config.mask_block} is not allowed: it must divide the {GRID}x{GRID} patch "
                          f"grid: one of {divisors} (for example --mask-block 1).")
    folder_to_write("out", config.out)
    return config


@dataclass
class Pretraining:
    """One pretraining run while it goes."""

    config: PretrainConfig
    out: Path
    objective: MaskedImageModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator  # draws the images, labels and masks: saved in checkpoints, so resuming is exact
    history: list[dict]
    seconds: float = 0.0  # training time over all sessions of this run

    def say(self, message: str) -> None:
        if not self.config.quiet:
            print(message, flush=True)


def setup(config: PretrainConfig, checkpoint: dict | None) -> Pretraining:
    """Model, objective, optimiser and schedule; restored from `checkpoint` when resuming."""
    out = Path(config.out or Path("runs") / time.strftime("pretrain-%Y%m%d-%H%M%S"))
    if checkpoint is None and (out / "checkpoint.pt").exists():
        raise VitlabError(f"{out} already holds a pretraining run. Continue it with --resume {out}, or choose "
                          f"another --out; vitlab never overwrites a run.")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    vit = build_model("vit_tiny", num_classes=config.num_classes, pretrained=False,
                      trainable_blocks=VIT_TINY_CONFIG["num_layers"])
    objective = MaskedImageModel(vit, config.mask_ratio, config.mask_block, config.class_weight)
    named = dict(objective.named_parameters())
    position = named.pop("vit.encoder.pos_embedding")
    decay = [p for p in named.values() if p.ndim == 2]  # weight matrices; not biases, norms or tokens
    no_decay = [p for p in named.values() if p.ndim != 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0},
                                   {"params": [position], "weight_decay": 0.0,
                                    "lr": config.lr * config.position_lr_scale}], lr=config.lr)
    total = config.epochs * config.steps_per_epoch
    warmup = max(1, round(0.05 * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))))
    run = Pretraining(config, out, objective, optimizer, scheduler, torch.Generator().manual_seed(config.seed), [])
    if checkpoint is not None:
        objective.load_state_dict(checkpoint["objective"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        run.generator.set_state(checkpoint["generator"])
        run.history, run.seconds = checkpoint["history"], checkpoint["seconds"]
    return run


def train_epoch(run: Pretraining, systems, transform: BatchTransform, epoch: int) -> dict[str, float]:
    """`steps_per_epoch` steps, each on a fresh batch of fractals. Returns the epoch's mean losses."""
    config, objective = run.config, run.objective
    objective.train()
    sums = {"pixel": 0.0, "class": 0.0, "class_acc": 0.0}
    bar = tqdm(range(config.steps_per_epoch), desc=f"pretrain epoch {epoch}/{config.epochs}", leave=False,
               disable=config.quiet)
    for _ in bar:
        images, labels = render(systems, config.batch_size, run.generator)  # uint8 (B, 3, 32, 32), (B,)
        mask = objective.random_mask(config.batch_size, run.generator)  # (B, patches)
        loss, parts = objective.loss(transform(images), labels, mask)
        if not torch.isfinite(loss):
            raise VitlabError(f"The pretraining loss became {loss.item()} in epoch {epoch}; lower --lr. The last "
                              f"completed epoch is kept in {run.out}/checkpoint.pt.")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
        run.optimizer.step()
        run.scheduler.step()
        for name, value in parts.items():
            sums[name] += float(value)
        bar.set_postfix(pixel=f"{float(parts['pixel']):.3f}")
    return {name: total / config.steps_per_epoch for name, total in sums.items()}


def measure(run: Pretraining, probe_images: torch.Tensor) -> dict[str, float]:
    """The structure the lessons look for, on the model as it is now (see vitlab.analysis.structure)."""
    vit = run.objective.vit
    ratios = distance_ratios(vit, probe_images)  # (blocks, heads)
    return {"position_spearman": position_embedding_spearman(vit),
            "first_block_min_distance_ratio": float(ratios[0].min()),
            "last_block_mean_distance_ratio": float(ratios[-1].mean()),
            "distance_ratios": [[round(float(r), 4) for r in row] for row in ratios]}


def fit(run: Pretraining) -> None:
    """The epoch loop: train, measure, save a resumable checkpoint."""
    config = run.config
    systems = make_systems(config.num_classes, config.system_seed)
    transform = BatchTransform(32, train=False)  # ImageNet normalisation, as fine-tuning uses
    probe = transform(load_dataset("shapes").test.images[:250])  # (250, 3, 32, 32) what the lessons measure on
    for epoch in range(len(run.history) + 1, config.epochs + 1):
        started = time.perf_counter()
        record = {"epoch": epoch, **train_epoch(run, systems, transform, epoch)}
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


def finish(run: Pretraining, argv: list[str] | None) -> Path:
    """Write base.pt (the ViT body) and card.json; with --ship, copy both into the package."""
    state = {k: v for k, v in run.objective.vit.state_dict().items() if not k.startswith("heads.")}
    base = save_checkpoint(run.out / "base.pt", {"model": state})
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    final = {k: v for k, v in run.history[-1].items() if k not in ("epoch", "seconds")}
    card = {"model": "vit_tiny", "architecture": VIT_TINY_CONFIG,
            "command": "python -m vitlab.pretrain " + " ".join(argv if argv is not None else sys.argv[1:]),
            "config": asdict(run.config), "generator": "vitlab.data.fractals (IFS fractals, FractalDB-style)",
            "epochs": len(run.history), "images_seen": len(run.history) * run.config.steps_per_epoch
            * run.config.batch_size, "wall_seconds": round(run.seconds, 1),
            "device": f"cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}", "metrics": final, "sha256": digest}
    save_json(run.out / "card.json", card)
    if run.config.ship:
        target = shipped_weights_dir()
        for stale in target.glob("vit_tiny_fractal-*.pt"):
            stale.unlink()
        weights = base.read_bytes()
        atomic_write(target / f"vit_tiny_fractal-{digest[:8]}.pt", lambda file: file.write(weights))
        save_json(target / "vit_tiny_fractal.json", card)
        run.say(f"shipped as {target / f'vit_tiny_fractal-{digest[:8]}.pt'}")
    return base


@command("vitlab")
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 done, 1 a file could not be written, 2 bad input, 130 interrupted (the last
    completed epoch is kept)."""
    config, checkpoint = make_config(argv)
    run = setup(config, checkpoint)
    save_json(run.out / "config.json", asdict(config))
    run.say(f"vitlab: pretraining vit_tiny on {config.num_classes} fractal classes, {config.epochs} epochs of "
            f"{config.steps_per_epoch} x {config.batch_size} fresh images; run folder {run.out}")
    try:
        fit(run)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; completed epochs are kept. Continue with --resume {run.out}") from None
    finish(run, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
