"""The main run: fine-tune a ViT and write a run folder. `python -m vitlab.finetune --help` lists the flags.

    python -m vitlab.finetune --preset demo                 # offline: vit_tiny on synthetic shapes, ~1 minute
    python -m vitlab.finetune                               # the notebook's run: ViT-B/16 on CIFAR-100, 5 epochs
    torchrun --nproc_per_node=4 -m vitlab.finetune          # the same on 4 GPUs

In three steps, as torchvision's reference train.py: `setup` builds the `Run` (data on the device, model,
optimizer, schedule, transforms, the trainer wrapper, the resume state), `fit(run)` is the epoch loop (train,
validate, record, save) and `finish(run)` tests once and writes the summary. `train_and_test(config)` does all three
with the run folder locked (`vitlab.training.folder_lock`): a second run into a folder in use is refused.

The run folder holds config.json, history.json (one record per epoch), summary.json (test accuracy, measured once at
the end on the best-validation weights), curves.png, predictions.png, checkpoint.pt (last epoch) and best.pt. Which
checkpoint is read depends on the purpose (vitlab.training.checkpoint.checkpoint_file): `--resume DIR` reads
checkpoint.pt;
the test pass at the end, the lessons' `--checkpoint DIR` and the explorer read best.pt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torchvision.models import VisionTransformer

from vitlab.analysis.localization import localization_scores
from vitlab.cli import command
from vitlab.data import BatchTransform, DataSplits, ImageDataset, batches, load_dataset
from vitlab.device import pick_device
from vitlab.errors import CheckpointError, Interrupted, VitlabError
from vitlab.model import build_model, count_parameters, freeze_all_but_last
from vitlab.plotting import plot_curves, plot_predictions, save_figure
from vitlab.shipped import SHIPPED_BASES, shipped_base_file
from vitlab.training import distributed, trunk_cache
from vitlab.training.checkpoint import BEST, LAST, WEIGHTS_FILE, load_checkpoint, save_json, write_safetensors
from vitlab.training.config import FinetuneConfig, block_count
from vitlab.training.flags import resolve_config
from vitlab.training.folder_lock import lock_folder
from vitlab.training.imported import IMPORTED, build_from_spec, import_start, model_name, start_model, statistics
from vitlab.training.model_card import write_model_card
from vitlab.training.run_folder import Run, prepare_out, record_epoch, restore, run_folder_path
from vitlab.training.run_log import WATCHED_IMAGES, RunLog
from vitlab.training.train import (
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


def train_and_test(config: FinetuneConfig, checkpoint: dict | None = None) -> dict:
    """Train, validate every epoch, test once at the end; returns the summary written to summary.json.

    `config` comes from vitlab.training.config.make_config; to continue a run, pass
    vitlab.training.resume.resume_config's pair. The run folder is locked from before any data is loaded until
    this returns or raises: a folder another run holds is a FolderInUse error (exit 2) and nothing is done.
    """
    process, device = distributed.start(pick_device(config.device))
    try:
        _refuse_early(config, process)
        with _hold_run_folder(config, process) as out:
            run = setup(config, checkpoint, process, device, out)
            try:
                fit(run)
            except NonFiniteLossError as error:  # say where the last good epoch is, or that there is none
                kept = (f"The last good checkpoint (last completed epoch) is kept in {out / LAST}."
                        if (out / LAST).exists() else "No epoch completed, so no checkpoint was written.")
                raise NonFiniteLossError(f"{error} {kept}") from None
            return finish(run)
    finally:
        distributed.stop()


@contextmanager
def _hold_run_folder(config: FinetuneConfig, process: distributed.Process) -> Iterator[Path]:
    """The run folder, locked by rank 0 while the block runs. Under torchrun rank 0 alone decides the folder and
    takes the lock, and tells the other ranks: if it is refused, every rank raises the same error at once instead of
    waiting for a rank 0 that has left."""
    lock, refusal = None, None
    if process.is_main:
        try:
            lock = lock_folder(run_folder_path(config))
        except VitlabError as error:
            refusal = error
    out, refusal = distributed.share_from_main((None if lock is None else lock.folder, refusal), process)
    if refusal is not None:
        raise refusal
    try:
        if lock is not None and lock.note and not config.quiet:
            print(f"vitlab: note: {lock.note}", flush=True)
        yield out
    finally:
        if lock is not None:
            lock.release()


def setup(config: FinetuneConfig, checkpoint: dict | None, process: distributed.Process, device: torch.device,
          out: Path) -> Run:
    """Everything the epoch loop needs, in the order that keeps a seed's numbers: data, model, optimizer, trainer.

    `out` is the run folder, already locked by this run (`train_and_test`).
    """
    prepare_out(out, resuming=checkpoint is not None, clean=process.is_main)
    torch.manual_seed(config.seed)
    splits = load_dataset(config.dataset, config.data_dir, val_size=config.val_size, seed=config.seed,
                          subset=config.subset, progress=process.is_main and not config.quiet)
    model = _build_model(config, splits, checkpoint, progress=process.is_main).to(device)
    # The whole dataset moves to the training device once (CIFAR-100 train is 154 MB of uint8).
    splits = DataSplits(splits.name, *(split.to(device) for split in (splits.train, splits.val, splits.test)))
    recipe = RECIPES[config.recipe]
    mean, std = statistics(config.imported)  # the model's own normalisation: ImageNet's, or an imported model's
    local_batch = config.batch_size // process.world_size
    steps_per_epoch = -(-(len(splits.train) // process.world_size) // local_batch)
    optimizer = make_optimizer(model, recipe, config.lr or recipe.lr, pretrained=config.pretrained != "none",
                               fused=device.type == "cuda")
    run = Run(
        config, out, process, device, splits, model, recipe, optimizer,
        scheduler=make_scheduler(optimizer, recipe, total_steps=config.epochs * steps_per_epoch),
        criterion=make_criterion(recipe),
        train_transform=BatchTransform(model.image_size, train=True, max_rotation_degrees=config.max_rotation,
                                       mean=mean, std=std).to(device),
        eval_transform=BatchTransform(model.image_size, train=False, mean=mean, std=std).to(device),
        local_batch=local_batch,
    )
    trainable, total = count_parameters(model)
    run.say(f"vitlab: {model_name(vars(config))} at {model.image_size} px on {config.dataset} "
            f"({len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test) on {device}; training "
            f"{trainable:,} of {total:,} parameters; run folder {out}")
    if process.is_main:
        save_json(out / "config.json", asdict(config))
    run.trainer = _trainer(run)
    if checkpoint is not None:
        restore(run, checkpoint)
    if process.is_main:  # 8 fixed validation images, drawn with their attention each epoch
        run.log = RunLog(out, splits.val.take(WATCHED_IMAGES).images.cpu(), tensorboard=config.tensorboard)
    return run


def _refuse_early(config: FinetuneConfig, process: distributed.Process) -> None:
    """Refuse settings this launch cannot serve before any data is loaded."""
    if config.batch_size % process.world_size:
        raise VitlabError(f"--batch-size {config.batch_size} must divide by the {process.world_size} processes.")
    if config.cache_trunk:  # check_settings reads None as "all": every block trains, there is no trunk to cache
        trains_all = config.trainable_blocks == block_count(config)
        trunk_cache.check_settings(config.max_rotation, None if trains_all else config.trainable_blocks,
                                   process.distributed)


def _build_model(config: FinetuneConfig, splits: DataSplits, checkpoint: dict | None,
                 progress: bool) -> VisionTransformer:
    """The model with its start weights (the checkpoint's when resuming) and all but the last blocks frozen."""
    if config.arch == IMPORTED and checkpoint is not None:  # the checkpoint holds every weight: the spec's shape
        model = build_from_spec(config.imported, splits.num_classes)
        freeze_all_but_last(model, config.trainable_blocks)
    elif config.arch == IMPORTED:
        model = start_model(import_start(config.pretrained, config.timm_name), config.imported, splits.num_classes,
                            config.trainable_blocks)
    else:
        weights = {"imagenet": True, "none": False}.get(config.pretrained, config.pretrained)
        if config.pretrained in SHIPPED_BASES:  # vit_tiny's shipped bases, each checked against its card
            weights = shipped_base_file(name=config.pretrained)
        model = build_model(config.arch, splits.num_classes, pretrained=weights,
                            trainable_blocks=config.trainable_blocks, progress=progress,
                            image_size=config.image_size, weights=config.weights)
    if checkpoint is not None:
        if len(checkpoint["classes"]) != splits.num_classes:
            raise CheckpointError(
                f"The run in {config.out} has {len(checkpoint['classes'])} classes but this dataset has "
                f"{splits.num_classes}; resume it on the dataset it was trained on."
            )
        model.load_state_dict(checkpoint["model"])
    return model


def _trainer(run: Run) -> torch.nn.Module:
    """What the training steps call: the model, in DDP under torchrun, or the cached trunk's top; compiled if asked.

    Every wrapper shares the model's parameters, so the optimizer and the checkpoints need no change.
    """
    device = run.device
    trainer = run.model
    if run.process.distributed:
        trainer = DistributedDataParallel(trainer, device_ids=[device.index] if device.type == "cuda" else None)
    if run.config.cache_trunk:
        run.cached = _cache_trunk(run)
        trainer = run.cached.top
    return torch.compile(trainer) if run.config.compile else trainer


def _cache_trunk(run: Run) -> trunk_cache.CachedTrunk:
    """`--cache-trunk`: run the frozen trunk once over train (as is and mirrored) and val, before epoch 1."""
    started = time.perf_counter()
    cached = trunk_cache.cache_trunk(
        run.model, run.splits.train, run.splits.val, run.config.trainable_blocks, run.eval_transform,
        batch_size=2 * run.local_batch, bf16=uses_bf16(run.device, run.recipe), show_progress=run.show,
    )
    seconds = run.trunk_cache_seconds = time.perf_counter() - started
    run.say(f"cached the frozen trunk's output for {len(cached.train)} train images (2 views) and "
            f"{len(cached.val)} val images: {cached.nbytes / 2**20:,.0f} MiB, {seconds:.1f} s")
    return cached


def fit(run: Run) -> None:
    """The epoch loop, from the first epoch not yet done: train, validate, record and save each epoch."""
    config, device = run.config, run.device
    for epoch in range(run.start_epoch, config.epochs):
        name = f"epoch {epoch + 1}/{config.epochs}"
        augment = torch.Generator(device=device).manual_seed(config.seed * 1000 + epoch * 10 + run.process.rank)
        data, count = _train_batches(run, epoch, augment)
        train = train_one_epoch(
            run.trainer, data, count, run.train_transform if run.cached is None else None, run.optimizer,
            run.scheduler, run.criterion, device, run.recipe, generator=augment, description=f"{name} train",
            show_progress=run.show,
        )
        if run.cached is None:
            val = _evaluate_split(run, run.splits.val, f"{name} val")
        else:  # the cached val tokens are the trunk's output for the val images: the same numbers, a shorter path
            val = evaluate(run.cached.top, run.cached.val.batches(2 * run.local_batch), len(run.cached.val), None,
                           run.criterion, device, run.recipe, description=f"{name} val", show_progress=run.show)
        record_epoch(run, epoch + 1, train, val)


def _train_batches(run: Run, epoch: int, generator: torch.Generator):
    """This process's share of the training set, reshuffled per epoch: (batches, image count).

    The batches hold uint8 images, or with `--cache-trunk` the trunk's tokens, each image in a random view (the flip).
    """
    train = run.splits.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(run.config.seed + epoch))
    mine = distributed.shard(order.to(train.images.device), run.process, equal=True)  # (M,) indices into train
    if run.cached is None:
        return batches(train.subset(mine), run.local_batch, shuffle=False, device=run.device), len(mine)
    return run.cached.train.batches(run.local_batch, mine, generator=generator), len(mine)


def _evaluate_split(run: Run, dataset: ImageDataset, description: str) -> dict:
    """Evaluate this process's shard of `dataset` (no padding, so nothing counts twice); metrics summed over ranks."""
    indices = distributed.shard(torch.arange(len(dataset), device=dataset.images.device), run.process, equal=False)
    mine = dataset.subset(indices)
    return evaluate(run.model, batches(mine, 2 * run.local_batch, shuffle=False, device=run.device), len(mine),
                    run.eval_transform, run.criterion, run.device, run.recipe, description=description,
                    show_progress=run.show)


def finish(run: Run) -> dict:
    """Test once, on best.pt's weights; draw the curves and predictions; score attention on shapes; summary.json."""
    out, splits = run.out, run.splits
    best = load_checkpoint(out / BEST) if (out / BEST).is_file() else None  # none only when no epoch ran
    if best is not None:
        run.model.load_state_dict(best["model"])
    test = _evaluate_split(run, splits.test, "test")
    trainable, total = count_parameters(run.model)
    summary = {"test_acc": test["acc"], "test_loss": test["loss"], "test_images": test["count"],
               "best_epoch": best["epoch"] if best else None, "best_val_acc": run.best_val_acc,
               "epochs": len(run.history), "device": str(run.device),
               "trainable_parameters": trainable, "total_parameters": total}
    if run.trunk_cache_seconds is not None:
        summary["trunk_cache_seconds"] = run.trunk_cache_seconds
    if run.process.is_main:
        if splits.test.masks is not None:
            summary.update(localization_scores(run.model, splits.test, device=run.device,
                                               transform=run.eval_transform))
        _draw(run)
        run.say(f"test accuracy {summary['test_acc']:.2%} (best epoch {summary['best_epoch']}), "
                + (f"pointing game {summary['pointing_game']:.2f}, attention mass ratio "
                   f"{summary['attention_mass_ratio']:.2f}, " if "pointing_game" in summary else "")
                + f"written to {out}")
    summary["wall_seconds"] = time.perf_counter() - run.started
    if run.process.is_main:
        _hand_on(run, best, summary)
        save_json(out / "summary.json", summary)  # last: a folder with summary.json holds a finished run
    return summary


def _hand_on(run: Run, best: dict | None, summary: dict) -> None:
    """What practitioners take away: model.safetensors (best.pt's weights), MODEL_CARD.md; the log closed."""
    if run.log is not None:
        run.log.close()
    if best is None:  # no epoch ran: there are no weights to hand on
        return
    write_safetensors(run.out / WEIGHTS_FILE, best)
    write_model_card(run.out, run.config, summary, run.splits, run.model, run.eval_transform)


def _draw(run: Run) -> None:
    """predictions.png (16 test images, true and predicted labels) and curves.png (loss and accuracy per epoch)."""
    shown = run.splits.test.take(16)
    predictions = predict(run.model, shown.images, run.eval_transform)
    save_figure(plot_predictions(shown.images, shown.labels, predictions, run.splits.classes),
                run.out / "predictions.png")
    save_figure(plot_curves(run.history), run.out / "curves.png")


@command("vitlab")
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit code (`vitlab.cli.EXIT_CODES`): 0 done, 1 training or writing
    failed, 2 bad input, 130 interrupted."""
    notes: list[str] = []
    config, checkpoint = resolve_config(argv, notes)
    if distributed.launched_as_main() and not config.quiet:  # one note per preset setting that yielded
        for note in notes:
            print(f"vitlab: note: {note}", flush=True)
    try:
        train_and_test(config, checkpoint)
    except KeyboardInterrupt:
        where = f" Resume with: python -m vitlab.finetune --resume {config.out}" if config.out else ""
        raise Interrupted(f"interrupted. Checkpoints of completed epochs are intact.{where}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
