"""The main job: fine-tune a ViT and write a run folder. `python -m vitlab.finetune --help` lists the flags.

    python -m vitlab.finetune --preset demo                 # offline: vit_tiny on synthetic shapes, ~1 minute
    python -m vitlab.finetune                               # the notebook's job: ViT-B/16 on CIFAR-100, 5 epochs
    torchrun --nproc_per_node=4 -m vitlab.finetune          # the same on 4 GPUs

The run folder holds config.json, history.json (one record per epoch), summary.json (test accuracy, measured once at
the end on the best-validation weights), curves.png, predictions.png, checkpoint.pt (last epoch) and best.pt.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from vitlab import distributed, trunk_cache
from vitlab.checkpoint import load_checkpoint, save_checkpoint, save_json
from vitlab.config import FinetuneConfig, explicit_flags, make_config
from vitlab.data import BatchTransform, DataSplits, batches, load_dataset
from vitlab.errors import CheckpointError, VitlabError
from vitlab.model import build_model, count_parameters, freeze_all_but_last
from vitlab.plotting import plot_curves, plot_predictions, save_figure
from vitlab.train import (
    RECIPES,
    NonFiniteLossError,
    evaluate,
    make_criterion,
    make_optimizer,
    make_scheduler,
    predict,
    train_one_epoch,
    uses_bf16,
)

# Settings a checkpoint's weights depend on: resuming with a different value would load mismatched weights.
_FIXED_ON_RESUME = ("arch", "trainable_blocks", "dataset")


@dataclass
class Run:
    """Everything one training run holds while it goes."""

    config: FinetuneConfig
    out: Path
    process: distributed.Process
    device: torch.device
    splits: DataSplits
    history: list[dict]
    best_val_acc: float = -1.0
    trunk_cache_seconds: float | None = None  # time spent building the --cache-trunk cache

    def say(self, message: str) -> None:
        if self.process.is_main and not self.config.quiet:
            print(message, flush=True)


def pick_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VitlabError(f"--device {name} asked for CUDA, but PyTorch sees no CUDA GPU here. Use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise VitlabError(f"--device {name} asked for Apple's MPS, which is not available here. Use --device cpu.")
    return device


def resolve_config(argv: list[str] | None) -> tuple[FinetuneConfig, dict | None]:
    """The run's settings from the command line, or from the saved run when resuming (plus typed overrides)."""
    flags = explicit_flags(argv)
    if "resume" not in flags:
        return make_config(flags), None
    checkpoint = load_checkpoint(flags["resume"])
    saved = FinetuneConfig(**checkpoint["config"])
    for name in _FIXED_ON_RESUME:
        if name in flags and flags[name] != getattr(saved, name):
            raise CheckpointError(
                f"Cannot resume {flags['resume']} with --{name.replace('_', '-')} {flags[name]}: that run was made "
                f"with {name}={getattr(saved, name)!r}, and its weights only fit that setting. Drop the flag, or "
                f"start a new run with --out."
            )
    flags.pop("preset", None)
    config = make_config({**flags, "out": flags["resume"]}, base=saved)
    return config, checkpoint


def prepare_out(config: FinetuneConfig, resuming: bool) -> Path:
    out = Path(config.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    if not resuming and (out / "checkpoint.pt").exists():
        raise VitlabError(
            f"{out} already holds a run (checkpoint.pt). Continue it with --resume {out}, or choose another --out; "
            f"vitlab never overwrites a run."
        )
    return out


def run(config: FinetuneConfig, checkpoint: dict | None = None) -> dict:
    """Train, validate every epoch, test once at the end; returns the summary written to summary.json."""
    started = time.perf_counter()
    process, device = distributed.start(pick_device(config.device))
    if config.batch_size % process.world_size:
        raise VitlabError(f"--batch-size {config.batch_size} must divide by the {process.world_size} processes.")
    out = prepare_out(config, resuming=checkpoint is not None)
    if config.cache_trunk:  # refuse what a cache cannot serve before any data is loaded
        trunk_cache.check_settings(config.max_rotation, config.trainable_blocks, process.distributed)
    torch.manual_seed(config.seed)
    splits = load_dataset(config.dataset, config.data_dir, val_size=config.val_size, seed=config.seed,
                          subset=config.subset, progress=process.is_main and not config.quiet)
    pretrained = config.pretrained or ("imagenet" if config.arch == "vit_b_16" else "none")
    weights = {"imagenet": True, "none": False}.get(pretrained, pretrained)
    model = build_model(config.arch, splits.num_classes, pretrained=weights, trainable_blocks=0,
                        progress=process.is_main)
    num_blocks = len(model.encoder.layers)
    config.trainable_blocks = num_blocks if config.trainable_blocks is None else config.trainable_blocks
    freeze_all_but_last(model, config.trainable_blocks)
    recipe = RECIPES[config.recipe]
    if checkpoint is not None:
        if len(checkpoint["classes"]) != splits.num_classes:
            raise CheckpointError(
                f"The run in {out} has {len(checkpoint['classes'])} classes but this dataset has "
                f"{splits.num_classes}; resume it on the dataset it was trained on."
            )
        model.load_state_dict(checkpoint["model"])
    model.to(device)
    # The whole dataset moves to the training device once (CIFAR-100 train is 154 MB of uint8).
    splits = DataSplits(splits.name, *(split.to(device) for split in (splits.train, splits.val, splits.test)))
    run_state = Run(config, out, process, device, splits, history=[])

    local_batch = config.batch_size // process.world_size
    train_size = len(splits.train) // process.world_size
    steps_per_epoch = -(-train_size // local_batch)
    optimizer = make_optimizer(model, recipe, config.lr or recipe.lr, pretrained=weights is not False,
                               fused=device.type == "cuda")
    scheduler = make_scheduler(optimizer, recipe, total_steps=config.epochs * steps_per_epoch)
    trainer = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if process.distributed else model
    train_transform = BatchTransform(model.image_size, train=True, max_rotation_degrees=config.max_rotation).to(device)
    eval_transform = BatchTransform(model.image_size, train=False).to(device)
    show = process.is_main and not config.quiet
    trainable, total = count_parameters(model)
    run_state.say(f"vitlab: {config.arch} on {config.dataset} ({len(splits.train)} train / {len(splits.val)} val / "
                  f"{len(splits.test)} test) on {device}; training {trainable:,} of {total:,} parameters; "
                  f"run folder {out}")
    if process.is_main:
        save_json(out / "config.json", asdict(config))
    cached = _cache_trunk(run_state, model, eval_transform, recipe, local_batch) if config.cache_trunk else None
    if cached is not None:
        trainer = cached.top  # the same parameters as the model: the optimizer and checkpoints need no change
    if config.compile:
        trainer = torch.compile(trainer)
    criterion = make_criterion(recipe)
    start_epoch = 0
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        run_state.history = checkpoint["history"]
        run_state.best_val_acc = checkpoint["best_val_acc"]
        start_epoch = checkpoint["epoch"]

    for epoch in range(start_epoch, config.epochs):
        augment = torch.Generator(device=device).manual_seed(config.seed * 1000 + epoch * 10 + process.rank)
        train_data, count = _train_batches(run_state, cached, epoch, local_batch, augment)
        train = train_one_epoch(
            trainer, train_data, count, train_transform if cached is None else None,
            optimizer, scheduler, criterion, device, recipe, generator=augment,
            description=f"epoch {epoch + 1}/{config.epochs} train", show_progress=show,
        )
        description = f"epoch {epoch + 1}/{config.epochs} val"
        if cached is None:
            val = _evaluate_split(model, splits.val, process, eval_transform, criterion, device, recipe, local_batch,
                                  description, show)
        else:  # the cached val tokens are the trunk's output for the val images: the same numbers, a shorter path
            val = evaluate(cached.top, cached.val.batches(2 * local_batch), len(cached.val), None, criterion,
                           device, recipe, description=description, show_progress=show)
        record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_acc": train["acc"],
                  "val_loss": val["loss"], "val_acc": val["acc"],
                  "seconds": train["seconds"] + val["seconds"], "images_per_second": train["images_per_second"]}
        run_state.history.append(record)
        improved = val["acc"] > run_state.best_val_acc
        run_state.best_val_acc = max(run_state.best_val_acc, val["acc"])
        if process.is_main:
            _save_epoch(run_state, model, optimizer, scheduler, epoch + 1, improved)
        run_state.say(f"epoch {epoch + 1}/{config.epochs}: train loss {train['loss']:.3f} acc {train['acc']:.2%} | "
                      f"val loss {val['loss']:.3f} acc {val['acc']:.2%} | {record['seconds']:.1f}s, "
                      f"{train['images_per_second']:.0f} img/s" + (" | best so far" if improved else ""))

    summary = _finish(run_state, model, eval_transform, criterion, recipe, local_batch, show)
    summary["wall_seconds"] = time.perf_counter() - started
    if process.is_main:
        save_json(out / "summary.json", summary)
    distributed.stop()
    return summary


def _cache_trunk(run_state: Run, model, transform, recipe, batch_size: int) -> trunk_cache.CachedTrunk:
    """`--cache-trunk`: run the frozen trunk once over train (as is and mirrored) and val, before epoch 1."""
    config, device = run_state.config, run_state.device
    started = time.perf_counter()
    cached = trunk_cache.cache_trunk(
        model, run_state.splits.train, run_state.splits.val, config.trainable_blocks, transform,
        batch_size=2 * batch_size, bf16=uses_bf16(device, recipe),
        show_progress=run_state.process.is_main and not config.quiet,
    )
    seconds = run_state.trunk_cache_seconds = time.perf_counter() - started
    run_state.say(f"cached the frozen trunk's output for {len(cached.train)} train images (2 views) and "
                  f"{len(cached.val)} val images: {cached.nbytes / 2**20:,.0f} MiB, {seconds:.1f} s")
    return cached


def _train_batches(run_state: Run, cached, epoch: int, batch_size: int, generator: torch.Generator):
    """This process's share of the training set, reshuffled per epoch: (batches, image count).

    The batches hold uint8 images, or with `--cache-trunk` the trunk's tokens, each image in a random view (the flip).
    """
    train, process = run_state.splits.train, run_state.process
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(run_state.config.seed + epoch))
    mine = distributed.shard(order.to(train.images.device), process, equal=True)  # (M,) indices into train
    if cached is None:
        return batches(train.subset(mine), batch_size, shuffle=False, device=run_state.device), len(mine)
    return cached.train.batches(batch_size, mine, generator=generator), len(mine)


def _evaluate_split(model, dataset, process, transform, criterion, device, recipe, batch_size, description, show):
    """Evaluate this process's shard of `dataset` (no padding, so nothing counts twice); metrics summed over ranks."""
    indices = distributed.shard(torch.arange(len(dataset), device=dataset.images.device), process, equal=False)
    mine = dataset.subset(indices)
    return evaluate(model, batches(mine, 2 * batch_size, shuffle=False, device=device), len(mine), transform,
                    criterion, device, recipe, description=description, show_progress=show)


def _save_epoch(run_state: Run, model, optimizer, scheduler, epoch: int, improved: bool) -> None:
    """checkpoint.pt every epoch (everything needed to resume), best.pt when validation accuracy improved."""
    config = asdict(run_state.config)
    common = {"model": model.state_dict(), "config": config, "classes": run_state.splits.classes, "epoch": epoch,
              "arch": run_state.config.arch, "num_classes": run_state.splits.num_classes,
              "trainable_blocks": run_state.config.trainable_blocks, "image_size": model.image_size}
    if improved:
        save_checkpoint(run_state.out / "best.pt", {**common, "val_acc": run_state.history[-1]["val_acc"]})
    save_checkpoint(run_state.out / "checkpoint.pt", {
        **common, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state()}, "history": run_state.history, "best_val_acc": run_state.best_val_acc,
    })
    save_json(run_state.out / "history.json", run_state.history)


def _finish(run_state: Run, model, transform, criterion, recipe, batch_size, show) -> dict:
    """Test once, on the best-validation weights; draw the curves and predictions; score attention on shapes."""
    out, splits, device = run_state.out, run_state.splits, run_state.device
    best = load_checkpoint(out / "best.pt") if (out / "best.pt").exists() else None
    if best is not None:
        model.load_state_dict(best["model"])
    test = _evaluate_split(model, splits.test, run_state.process, transform, criterion, device, recipe, batch_size,
                           "test", show)
    trainable, total = count_parameters(model)
    summary = {"test_acc": test["acc"], "test_loss": test["loss"], "test_images": test["count"],
               "best_epoch": best["epoch"] if best else None, "best_val_acc": run_state.best_val_acc,
               "epochs": len(run_state.history), "device": str(device),
               "trainable_parameters": trainable, "total_parameters": total}
    if run_state.trunk_cache_seconds is not None:
        summary["trunk_cache_seconds"] = run_state.trunk_cache_seconds
    if not run_state.process.is_main:
        return summary
    if splits.test.masks is not None:
        from vitlab.localization import localization_scores

        summary.update(localization_scores(model, splits.test, device=device))
    shown = splits.test.take(16)
    predictions = predict(model, shown.images, transform)
    save_figure(plot_predictions(shown.images, shown.labels, predictions, splits.classes), out / "predictions.png")
    save_figure(plot_curves(run_state.history), out / "curves.png")
    run_state.say(f"test accuracy {summary['test_acc']:.2%} (best epoch {summary['best_epoch']}), "
                  + (f"pointing game {summary['pointing_game']:.2f}, attention mass ratio "
                     f"{summary['attention_mass_ratio']:.2f}, " if "pointing_game" in summary else "")
                  + f"written to {out}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit code: 0 done, 1 training failed, 2 bad input, 130 interrupted."""
    config = None
    try:
        config, checkpoint = resolve_config(argv)
        run(config, checkpoint)
        return 0
    except VitlabError as error:
        print(f"vitlab: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"vitlab: {error}\nThe last good checkpoint (last completed epoch) is kept in {config.out}.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = f" Resume with: python -m vitlab.finetune --resume {config.out}" if config and config.out else ""
        print(f"\nvitlab: interrupted. Checkpoints of completed epochs are intact.{where}", file=sys.stderr)
        return 130
    finally:
        distributed.stop()


if __name__ == "__main__":
    raise SystemExit(main())
