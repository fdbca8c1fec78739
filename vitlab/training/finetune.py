"""The main job: fine-tune a ViT and write a run folder. `python -m vitlab.finetune --help` lists the flags.

    python -m vitlab.finetune --preset demo                 # offline: vit_tiny on synthetic shapes, ~1 minute
    python -m vitlab.finetune                               # the notebook's job: ViT-B/16 on CIFAR-100, 5 epochs
    torchrun --nproc_per_node=4 -m vitlab.finetune          # the same on 4 GPUs

In three steps, as torchvision's reference train.py: `setup(config)` builds the `Run` (device, data on the device,
model, optimizer, schedule, transforms, the trainer wrapper, the resume state), `fit(job)` is the epoch loop
(train, validate, record, save) and `finish(job)` tests once and writes the summary. `run(config)` does all three.

The run folder holds config.json, history.json (one record per epoch), summary.json (test accuracy, measured once at
the end on the best-validation weights), curves.png, predictions.png, checkpoint.pt (last epoch) and best.pt. Which
checkpoint is read depends on the purpose (vitlab.training.checkpoint.checkpoint_file): `--resume DIR` reads
checkpoint.pt;
the test pass at the end, the lessons' `--checkpoint DIR` and the explorer read best.pt.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
from torch.nn.parallel import DistributedDataParallel
from torchvision.models import VisionTransformer

from vitlab.analysis.localization import localization_scores
from vitlab.cli import command
from vitlab.data import BatchTransform, DataSplits, ImageDataset, batches, load_dataset
from vitlab.device import pick_device
from vitlab.errors import CheckpointError, Interrupted, VitlabError
from vitlab.model import build_model, count_parameters, num_blocks
from vitlab.plotting import plot_curves, plot_predictions, save_figure
from vitlab.training import distributed, trunk_cache
from vitlab.training.checkpoint import BEST, LAST, WEIGHTS_FILE, load_checkpoint, save_json, write_safetensors
from vitlab.training.config import FinetuneConfig, resolve_config
from vitlab.training.model_card import write_model_card
from vitlab.training.run_folder import Run, prepare_out, record_epoch, restore
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


def run(config: FinetuneConfig, checkpoint: dict | None = None) -> dict:
    """Train, validate every epoch, test once at the end; returns the summary written to summary.json.

    `config` comes from vitlab.training.config.make_config; to continue a run, pass
    vitlab.training.config.resume_config's pair.
    """
    try:
        job = setup(config, checkpoint)
        try:
            fit(job)
        except NonFiniteLossError as error:  # say where the last good epoch is, or that there is none
            kept = (f"The last good checkpoint (last completed epoch) is kept in {job.out / LAST}."
                    if (job.out / LAST).exists() else "No epoch completed, so no checkpoint was written.")
            raise NonFiniteLossError(f"{error} {kept}") from None
        return finish(job)
    finally:
        distributed.stop()


def setup(config: FinetuneConfig, checkpoint: dict | None = None) -> Run:
    """Everything the epoch loop needs, in the order that keeps a seed's numbers: data, model, optimizer, trainer."""
    process, device = distributed.start(pick_device(config.device))
    _refuse_early(config, process)
    out = prepare_out(config, resuming=checkpoint is not None, clean=process.is_main)
    torch.manual_seed(config.seed)
    splits = load_dataset(config.dataset, config.data_dir, val_size=config.val_size, seed=config.seed,
                          subset=config.subset, progress=process.is_main and not config.quiet)
    model = _build_model(config, splits, checkpoint, progress=process.is_main).to(device)
    # The whole dataset moves to the training device once (CIFAR-100 train is 154 MB of uint8).
    splits = DataSplits(splits.name, *(split.to(device) for split in (splits.train, splits.val, splits.test)))
    recipe = RECIPES[config.recipe]
    local_batch = config.batch_size // process.world_size
    steps_per_epoch = -(-(len(splits.train) // process.world_size) // local_batch)
    optimizer = make_optimizer(model, recipe, config.lr or recipe.lr, pretrained=config.pretrained != "none",
                               fused=device.type == "cuda")
    job = Run(
        config, out, process, device, splits, model, recipe, optimizer,
        scheduler=make_scheduler(optimizer, recipe, total_steps=config.epochs * steps_per_epoch),
        criterion=make_criterion(recipe),
        train_transform=BatchTransform(model.image_size, train=True, max_rotation_degrees=config.max_rotation)
        .to(device),
        eval_transform=BatchTransform(model.image_size, train=False).to(device),
        local_batch=local_batch,
    )
    trainable, total = count_parameters(model)
    job.say(f"vitlab: {config.arch} at {model.image_size} px on {config.dataset} ({len(splits.train)} train / "
            f"{len(splits.val)} val / {len(splits.test)} test) on {device}; training {trainable:,} of {total:,} "
            f"parameters; run folder {out}")
    if process.is_main:
        save_json(out / "config.json", asdict(config))
    job.trainer = _trainer(job)
    if checkpoint is not None:
        restore(job, checkpoint)
    if process.is_main:  # 8 fixed validation images, drawn with their attention each epoch
        job.log = RunLog(out, splits.val.take(WATCHED_IMAGES).images.cpu(), tensorboard=config.tensorboard)
    return job


def _refuse_early(config: FinetuneConfig, process: distributed.Process) -> None:
    """Refuse settings this launch cannot serve before any data is loaded."""
    if config.batch_size % process.world_size:
        raise VitlabError(f"--batch-size {config.batch_size} must divide by the {process.world_size} processes.")
    if config.cache_trunk:  # check_settings reads None as "all": every block trains, there is no trunk to cache
        trains_all = config.trainable_blocks == num_blocks(config.arch)
        trunk_cache.check_settings(config.max_rotation, None if trains_all else config.trainable_blocks,
                                   process.distributed)


def _build_model(config: FinetuneConfig, splits: DataSplits, checkpoint: dict | None,
                 progress: bool) -> VisionTransformer:
    """The model with its start weights (the checkpoint's when resuming) and all but the last blocks frozen."""
    weights = {"imagenet": True, "fractal": True, "none": False}.get(config.pretrained, config.pretrained)
    model = build_model(config.arch, splits.num_classes, pretrained=weights,
                        trainable_blocks=config.trainable_blocks, progress=progress, image_size=config.image_size,
                        weights=config.weights)
    if checkpoint is not None:
        if len(checkpoint["classes"]) != splits.num_classes:
            raise CheckpointError(
                f"The run in {config.out} has {len(checkpoint['classes'])} classes but this dataset has "
                f"{splits.num_classes}; resume it on the dataset it was trained on."
            )
        model.load_state_dict(checkpoint["model"])
    return model


def _trainer(job: Run) -> torch.nn.Module:
    """What the training steps call: the model, in DDP under torchrun, or the cached trunk's top; compiled if asked.

    Every wrapper shares the model's parameters, so the optimizer and the checkpoints need no change.
    """
    device = job.device
    trainer = job.model
    if job.process.distributed:
        trainer = DistributedDataParallel(trainer, device_ids=[device.index] if device.type == "cuda" else None)
    if job.config.cache_trunk:
        job.cached = _cache_trunk(job)
        trainer = job.cached.top
    return torch.compile(trainer) if job.config.compile else trainer


def _cache_trunk(job: Run) -> trunk_cache.CachedTrunk:
    """`--cache-trunk`: run the frozen trunk once over train (as is and mirrored) and val, before epoch 1."""
    started = time.perf_counter()
    cached = trunk_cache.cache_trunk(
        job.model, job.splits.train, job.splits.val, job.config.trainable_blocks, job.eval_transform,
        batch_size=2 * job.local_batch, bf16=uses_bf16(job.device, job.recipe), show_progress=job.show,
    )
    seconds = job.trunk_cache_seconds = time.perf_counter() - started
    job.say(f"cached the frozen trunk's output for {len(cached.train)} train images (2 views) and "
            f"{len(cached.val)} val images: {cached.nbytes / 2**20:,.0f} MiB, {seconds:.1f} s")
    return cached


def fit(job: Run) -> None:
    """The epoch loop, from the first epoch not yet done: train, validate, record and save each epoch."""
    config, device = job.config, job.device
    for epoch in range(job.start_epoch, config.epochs):
        name = f"epoch {epoch + 1}/{config.epochs}"
        augment = torch.Generator(device=device).manual_seed(config.seed * 1000 + epoch * 10 + job.process.rank)
        data, count = _train_batches(job, epoch, augment)
        train = train_one_epoch(
            job.trainer, data, count, job.train_transform if job.cached is None else None, job.optimizer,
            job.scheduler, job.criterion, device, job.recipe, generator=augment, description=f"{name} train",
            show_progress=job.show,
        )
        if job.cached is None:
            val = _evaluate_split(job, job.splits.val, f"{name} val")
        else:  # the cached val tokens are the trunk's output for the val images: the same numbers, a shorter path
            val = evaluate(job.cached.top, job.cached.val.batches(2 * job.local_batch), len(job.cached.val), None,
                           job.criterion, device, job.recipe, description=f"{name} val", show_progress=job.show)
        record_epoch(job, epoch + 1, train, val)


def _train_batches(job: Run, epoch: int, generator: torch.Generator):
    """This process's share of the training set, reshuffled per epoch: (batches, image count).

    The batches hold uint8 images, or with `--cache-trunk` the trunk's tokens, each image in a random view (the flip).
    """
    train = job.splits.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(job.config.seed + epoch))
    mine = distributed.shard(order.to(train.images.device), job.process, equal=True)  # (M,) indices into train
    if job.cached is None:
        return batches(train.subset(mine), job.local_batch, shuffle=False, device=job.device), len(mine)
    return job.cached.train.batches(job.local_batch, mine, generator=generator), len(mine)


def _evaluate_split(job: Run, dataset: ImageDataset, description: str) -> dict:
    """Evaluate this process's shard of `dataset` (no padding, so nothing counts twice); metrics summed over ranks."""
    indices = distributed.shard(torch.arange(len(dataset), device=dataset.images.device), job.process, equal=False)
    mine = dataset.subset(indices)
    return evaluate(job.model, batches(mine, 2 * job.local_batch, shuffle=False, device=job.device), len(mine),
                    job.eval_transform, job.criterion, job.device, job.recipe, description=description,
                    show_progress=job.show)


def finish(job: Run) -> dict:
    """Test once, on best.pt's weights; draw the curves and predictions; score attention on shapes; summary.json."""
    out, splits = job.out, job.splits
    best = load_checkpoint(out / BEST) if (out / BEST).is_file() else None  # none only when no epoch ran
    if best is not None:
        job.model.load_state_dict(best["model"])
    test = _evaluate_split(job, splits.test, "test")
    trainable, total = count_parameters(job.model)
    summary = {"test_acc": test["acc"], "test_loss": test["loss"], "test_images": test["count"],
               "best_epoch": best["epoch"] if best else None, "best_val_acc": job.best_val_acc,
               "epochs": len(job.history), "device": str(job.device),
               "trainable_parameters": trainable, "total_parameters": total}
    if job.trunk_cache_seconds is not None:
        summary["trunk_cache_seconds"] = job.trunk_cache_seconds
    if job.process.is_main:
        if splits.test.masks is not None:
            summary.update(localization_scores(job.model, splits.test, device=job.device))
        _draw(job)
        job.say(f"test accuracy {summary['test_acc']:.2%} (best epoch {summary['best_epoch']}), "
                + (f"pointing game {summary['pointing_game']:.2f}, attention mass ratio "
                   f"{summary['attention_mass_ratio']:.2f}, " if "pointing_game" in summary else "")
                + f"written to {out}")
    summary["wall_seconds"] = time.perf_counter() - job.started
    if job.process.is_main:
        _hand_on(job, best, summary)
        save_json(out / "summary.json", summary)  # last: a folder with summary.json holds a finished run
    return summary


def _hand_on(job: Run, best: dict | None, summary: dict) -> None:
    """What practitioners take away: model.safetensors (best.pt's weights), MODEL_CARD.md; the log closed."""
    if job.log is not None:
        job.log.close()
    if best is None:  # no epoch ran: there are no weights to hand on
        return
    write_safetensors(job.out / WEIGHTS_FILE, best)
    write_model_card(job.out, job.config, summary, job.splits, job.model, job.eval_transform)


def _draw(job: Run) -> None:
    """predictions.png (16 test images, true and predicted labels) and curves.png (loss and accuracy per epoch)."""
    shown = job.splits.test.take(16)
    predictions = predict(job.model, shown.images, job.eval_transform)
    save_figure(plot_predictions(shown.images, shown.labels, predictions, job.splits.classes),
                job.out / "predictions.png")
    save_figure(plot_curves(job.history), job.out / "curves.png")


@command("vitlab")
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point. Returns the exit code (`vitlab.cli.EXIT_CODES`): 0 done, 1 training or writing
    failed, 2 bad input, 130 interrupted."""
    config, checkpoint = resolve_config(argv)
    try:
        run(config, checkpoint)
    except KeyboardInterrupt:
        where = f" Resume with: python -m vitlab.finetune --resume {config.out}" if config.out else ""
        raise Interrupted(f"interrupted. Checkpoints of completed epochs are intact.{where}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
