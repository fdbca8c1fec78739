"""Whole epochs: the GPU target row `epoch` (CIFAR-100's shape, train 45,000 + val 5,000, random data), and the laptop
preset's minutes estimated from a cached epoch (`laptop_estimate`)."""

from __future__ import annotations

import statistics
from dataclasses import replace

import torch

from vitlab.bench import measure
from vitlab.bench.baseline import notebook_eval_steps, notebook_loader, notebook_trainer
from vitlab.bench.measure import TRAINABLE_BLOCKS, Settings
from vitlab.data import BatchTransform, ImageDataset, batches, seeded_generator
from vitlab.training.config import TRAIN_IMAGES, FinetuneConfig, make_config
from vitlab.training.trunk_cache import cache_trunk

CIFAR_TRAIN, CIFAR_VAL = 45_000, 5_000  # vitlab holds 5,000 of CIFAR-100's 50,000 training images out


def epoch_splits(settings: Settings) -> tuple[ImageDataset, ImageDataset]:
    """Random (train, val) on the device, split 45,000 / 5,000 as vitlab splits CIFAR-100 (fewer, in proportion)."""
    total = settings.epoch_images or CIFAR_TRAIN + CIFAR_VAL
    order = torch.randperm(total, generator=seeded_generator(42)).to(settings.device)  # (total,)
    pool, n_val = measure.random_dataset(total, settings), total * CIFAR_VAL // (CIFAR_TRAIN + CIFAR_VAL)
    return pool.subset(order[n_val:]), pool.subset(order[:n_val])


def vitlab_epoch(settings: Settings, train: ImageDataset, val: ImageDataset, batch_size: int, way: str,
                 image_size: int | None = None, trainable_blocks: int = TRAINABLE_BLOCKS) -> dict[str, float]:
    """One epoch as `vitlab.training.finetune` runs it, after a warm-up on the epoch's batch shapes: seconds of the
    training (compiled with --compile, by default on CUDA only), of validating, and of a test pass of the eager model
    on the val images. `way`: "default" (the recipe's flip and rotation) or "cached" (`--cache-trunk`: flips only, the
    trainable top on cached trunk tokens; the cache's build is timed too)."""
    device, compiled = settings.device, settings.cuda if settings.compile is None else settings.compile
    training = measure.vitlab_training(settings, -(-len(train) // batch_size) * 3, image_size, trainable_blocks)
    model, record = training.model, {"compiled": compiled}
    train_transform = BatchTransform(model.image_size, train=True).to(device)
    eval_transform = BatchTransform(model.image_size, train=False).to(device)
    cache = None
    if way == "cached":
        cache, record["cache_seconds"] = measure.timed(device, lambda: cache_trunk(
            model, train, val, trainable_blocks, eval_transform, batch_size=2 * batch_size,
            bf16=training.bf16, show_progress=False))
    top, inputs = (model, (train_transform, eval_transform)) if cache is None else (cache.top, (None, None))
    trainer = torch.compile(top) if compiled else top

    def epoch(n_train: int, n_val: int) -> tuple[float, float]:
        order = torch.randperm(n_train, device=device)  # (n_train,): the first n_train images, shuffled
        if cache is None:
            train_batches = batches(train.subset(order), batch_size, shuffle=False, device=device)
            val_batches = batches(val.take(n_val), 2 * batch_size, shuffle=False, device=device)
        else:
            train_batches, val_batches = cache.train.batches(batch_size, order), cache.val.take(n_val).batches(
                2 * batch_size)
        train_seconds = measure.timed(device, lambda: training.train(trainer, train_batches, n_train, inputs[0]))[1]
        return train_seconds, measure.timed(device, lambda: training.evaluate(top, val_batches, n_val, inputs[1]))[1]

    # The warm-up: two full batches and the epoch's last, smaller one, so that no shape is new in the epoch.
    warm_up = measure.timed(device, lambda: epoch(min(len(train), 2 * batch_size + len(train) % batch_size),
                                          min(len(val), 2 * batch_size + len(val) % (2 * batch_size))))[1]
    record["train_seconds"], record["val_seconds"] = epoch(len(train), len(val))
    record["test_seconds"] = measure.timed(device, lambda: training.evaluate(model, batches(
        val, 2 * batch_size, shuffle=False, device=device), len(val), eval_transform))[1]
    return {**record, "warmup_seconds": warm_up, "seconds": record["train_seconds"] + record["val_seconds"]}


def bench_epoch(settings: Settings) -> dict:
    """One epoch of vitlab's default recipe against the notebook's loop, its epoch extrapolated from a few steps timed
    before and after vitlab's (a whole notebook epoch takes minutes)."""
    batch_size, steps = settings.batch(64, 64), max(2, settings.count(2, 2, 10, 30) // 2)
    train, val = epoch_splits(settings)
    images, labels = measure.cifar_like(batch_size * steps, settings.seed + 1)
    notebook, net = notebook_trainer(settings, images, labels, batch_size)
    loader = notebook_loader(images, labels, batch_size, train=False, image_size=net.image_size)
    notebook(1)  # warm-up
    rates = [(notebook(steps), notebook_eval_steps(net, loader, steps, settings.device))]  # images/s: train, eval
    vitlab = vitlab_epoch(settings, train, val, batch_size, "default")
    rates.append((notebook(steps), notebook_eval_steps(net, loader, steps, settings.device)))
    notebook_seconds = sum(n / statistics.mean(r[i] for r in rates) for i, n in enumerate((len(train), len(val))))
    seconds, full_size = vitlab.pop("seconds"), len(train) + len(val) == CIFAR_TRAIN + CIFAR_VAL and batch_size == 64
    on_h100 = settings.cuda and "H100" in torch.cuda.get_device_name(settings.device)
    return measure.row_result(
        "epoch", settings, notebook_seconds, seconds, "s/epoch", ratio=notebook_seconds / seconds,
        ratio_meaning="notebook / vitlab (time)", target="<= 30 s on an H100, >= 10x the notebook",
        met=seconds <= 30.0 and notebook_seconds / seconds >= 10.0 if full_size and on_h100 else None,
        batch_size=batch_size, train_images=len(train), val_images=len(val), **vitlab,
        notebook_train_images_per_second=[r[0] for r in rates], notebook_eval_images_per_second=[r[1] for r in rates],
        notes=f"vitlab: one epoch, compile {'on' if vitlab['compiled'] else 'off'}; notebook: {steps} steps before and "
        f"after, extrapolated" + ("" if full_size else "; reduced size: the 30 s target does not apply"))


def run_counts(config: FinetuneConfig) -> dict[str, int]:
    """Images per split of a CIFAR run with `config`: --subset caps each of train, val and test."""
    total, cap = TRAIN_IMAGES.get(config.dataset, 50_000), config.subset or 10**9
    return {"train": min(cap, total - config.val_size), "val": min(cap, config.val_size), "test": min(cap, 10_000)}


def estimate_minutes(rates: dict[str, float], counts: dict[str, int], epochs: int) -> dict[str, float]:
    """Minutes per phase of a cached-trunk run: the cache (train x 2 views + val), the epochs, the test pass."""
    seconds = {"cache": (2 * counts["train"] + counts["val"]) / rates["trunk"],
               "train": epochs * counts["train"] / rates["train_top"],
               "val": epochs * counts["val"] / rates["val_top"], "test": counts["test"] / rates["test_full"]}
    return {**{phase: value / 60 for phase, value in seconds.items()}, "total": sum(seconds.values()) / 60}


def bench_laptop_estimate(settings: Settings, config: FinetuneConfig | None = None) -> dict:
    """The laptop preset's minutes (cache, epochs, test), estimated from the images/s of a cached epoch measured here
    at its settings (`config`: default `--preset laptop` as the job resolves it; tests pass a small one)."""
    config = config or make_config({"preset": "laptop"})
    probe = measure.random_dataset(config.batch_size * settings.count(1, 2, 4, 8), settings)
    as_job = replace(settings, arch=config.arch, compile=config.compile)
    runs = [vitlab_epoch(as_job, probe, probe, config.batch_size, "cached", config.image_size, config.trainable_blocks)
            for _ in range(settings.reps(1, 3))]
    per_run = {"trunk": ("cache_seconds", 3), "train_top": ("train_seconds", 1), "val_top": ("val_seconds", 1),
               "test_full": ("test_seconds", 1)}  # images passed in each phase, per probe image
    rates = {phase: statistics.median(images * len(probe) / run[key] for run in runs)
             for phase, (key, images) in per_run.items()}
    counts = run_counts(config)
    minutes = estimate_minutes(rates, counts, config.epochs)
    return measure.row_result(
        "laptop_estimate", settings, None, minutes["total"], "min", target="<= 30 min", met=minutes["total"] <= 30.0,
        rates=rates, counts=counts, minutes=minutes, notes=f"--preset {config.preset or 'custom'}, {config.epochs} "
        f"epochs, minutes: " + ", ".join(f"{phase} {value:.1f}" for phase, value in minutes.items()))
