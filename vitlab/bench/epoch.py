"""The GPU target row `epoch`: one whole epoch of CIFAR-100's shape (train 45,000 + val 5,000) on random data."""

from __future__ import annotations

import statistics

import torch

from vitlab.bench.baseline import notebook_eval_steps, notebook_loader
from vitlab.bench.measure import Settings, cifar_like, random_dataset, row_result, timed
from vitlab.bench.sides import TRAINABLE_BLOCKS, notebook_trainer, vitlab_training
from vitlab.data import BatchTransform, ImageDataset, batches, seeded_generator
from vitlab.training.trunk_cache import cache_trunk

CIFAR_TRAIN, CIFAR_VAL = 45_000, 5_000  # vitlab holds 5,000 of CIFAR-100's 50,000 training images out


def epoch_splits(settings: Settings) -> tuple[ImageDataset, ImageDataset]:
    """Random (train, val) on the device, split 45,000 / 5,000 as vitlab splits CIFAR-100 (fewer, in proportion)."""
    total = settings.epoch_images or CIFAR_TRAIN + CIFAR_VAL
    order = torch.randperm(total, generator=seeded_generator(42)).to(settings.device)  # (total,)
    pool, n_val = random_dataset(total, settings), total * CIFAR_VAL // (CIFAR_TRAIN + CIFAR_VAL)
    return pool.subset(order[n_val:]), pool.subset(order[:n_val])


def vitlab_epoch(settings: Settings, train: ImageDataset, val: ImageDataset, batch_size: int, way: str,
                 image_size: int | None = None, trainable_blocks: int = TRAINABLE_BLOCKS) -> dict[str, float]:
    """One epoch as `vitlab.training.finetune` runs it, after a warm-up on the epoch's batch shapes: seconds of the
    training (compiled with --compile, by default on CUDA only), of validating, and of a test pass of the eager model
    on the val images. `way`: "default" (the recipe's flip and rotation) or "cached" (`--cache-trunk`: flips only, the
    trainable top on cached trunk tokens; the cache's build is timed too)."""
    device, compiled = settings.device, settings.cuda if settings.compile is None else settings.compile
    training = vitlab_training(settings, -(-len(train) // batch_size) * 3, image_size, trainable_blocks)
    model, record = training.model, {"compiled": compiled}
    train_transform = BatchTransform(model.image_size, train=True).to(device)
    eval_transform = BatchTransform(model.image_size, train=False).to(device)
    cache = None
    if way == "cached":
        cache, record["cache_seconds"] = timed(device, lambda: cache_trunk(
            model, train, val, trainable_blocks, eval_transform, batch_size=2 * batch_size,
            bf16=training.bf16, show_progress=False))
        record["cache_gib"] = cache.nbytes / 2**30
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
        train_seconds = timed(device, lambda: training.train(trainer, train_batches, n_train, inputs[0]))[1]
        return train_seconds, timed(device, lambda: training.evaluate(top, val_batches, n_val, inputs[1]))[1]

    # The warm-up: two full batches and the epoch's last, smaller one, so that no shape is new in the epoch.
    warm_up = timed(device, lambda: epoch(min(len(train), 2 * batch_size + len(train) % batch_size),
                                          min(len(val), 2 * batch_size + len(val) % (2 * batch_size))))[1]
    record["train_seconds"], record["val_seconds"] = epoch(len(train), len(val))
    record["test_seconds"] = timed(device, lambda: training.evaluate(model, batches(
        val, 2 * batch_size, shuffle=False, device=device), len(val), eval_transform))[1]
    return {**record, "warmup_seconds": warm_up, "seconds": record["train_seconds"] + record["val_seconds"]}


def bench_epoch(settings: Settings) -> dict:
    """One epoch of vitlab's default recipe against the notebook's loop, its epoch extrapolated from a few steps timed
    before and after vitlab's (a whole notebook epoch takes minutes)."""
    batch_size, steps = settings.batch(64, 64), max(2, settings.count(2, 2, 10, 30) // 2)
    train, val = epoch_splits(settings)
    images, labels = cifar_like(batch_size * steps, settings.seed + 1)
    notebook, net = notebook_trainer(settings, images, labels, batch_size)
    loader = notebook_loader(images, labels, batch_size, train=False, image_size=net.image_size)
    notebook(1)  # warm-up
    rates = [(notebook(steps), notebook_eval_steps(net, loader, steps, settings.device))]  # images/s: train, eval
    vitlab = vitlab_epoch(settings, train, val, batch_size, "default")
    rates.append((notebook(steps), notebook_eval_steps(net, loader, steps, settings.device)))
    notebook_seconds = sum(n / statistics.mean(r[i] for r in rates) for i, n in enumerate((len(train), len(val))))
    seconds, full_size = vitlab.pop("seconds"), len(train) + len(val) == CIFAR_TRAIN + CIFAR_VAL and batch_size == 64
    on_h100 = settings.cuda and "H100" in torch.cuda.get_device_name(settings.device)
    return row_result(
        "epoch", settings, notebook_seconds, seconds, "s/epoch", ratio=notebook_seconds / seconds,
        ratio_meaning="notebook / vitlab (time)", target="<= 30 s on an H100, >= 10x the notebook",
        met=seconds <= 30.0 and notebook_seconds / seconds >= 10.0 if full_size and on_h100 else None,
        batch_size=batch_size, train_images=len(train), val_images=len(val), **vitlab,
        notebook_train_images_per_second=[r[0] for r in rates], notebook_eval_images_per_second=[r[1] for r in rates],
        notes=f"vitlab: one real epoch, compile {'on' if vitlab['compiled'] else 'off'} (after a warm-up of "
        f"{vitlab['warmup_seconds']:.0f} s); notebook: {steps} steps before and after, extrapolated"
        + ("" if full_size else "; reduced size: the 30 s target does not apply"),
    )
