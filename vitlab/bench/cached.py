"""Optional rows for `--cache-trunk` (`vitlab.training.trunk_cache`): vitlab with the cache against vitlab without it.

    cached_trunk_step    training steps on random CIFAR-shaped data, full model vs the trainable top on cached tokens
    epoch_cached         one epoch of CIFAR-100's shape (train 45,000 + val 5,000), without and with the cache, plus
                         the one-off time to build it (a GPU row, like `epoch`)
    cached_trunk_shapes  the demo preset with a frozen trunk (--trainable-blocks 2), end to end, without and with
                         --cache-trunk: seconds per epoch and test accuracy

Both baselines are vitlab's own uncached training with the same flip-only augmentation, so the ratios isolate the
cache. They run only when named: `python -m vitlab.bench --rows cached_trunk_step,cached_trunk_shapes,epoch_cached`.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch

from vitlab.bench.measure import (
    Settings,
    as_dataset,
    cifar_like,
    epoch_splits,
    not_measured,
    row_result,
    throughput_row,
    timed,
)
from vitlab.bench.sides import vitlab_training
from vitlab.data import BatchTransform, ImageDataset, batches
from vitlab.training import finetune
from vitlab.training.train import uses_bf16
from vitlab.training.trunk_cache import (
    CachedTrunk,
    TrainableTop,
    TrunkCache,
    build_cache,
    cache_trunk,
    frozen_blocks_for,
)

TRAINABLE_BLOCKS = 3  # as in vitlab_model: the last 3 blocks and the head train


def bench_cached_trunk_step(settings: Settings) -> dict:
    """Training throughput, images/s: every step through the whole model, against steps on cached trunk tokens."""
    device = settings.device
    batch_size = settings.batch(8, 64)
    steps = settings.count(2, 3, 10, 25)
    repeats = settings.reps(3, 5)
    images, labels = cifar_like(batch_size * steps, settings.seed)
    data = as_dataset(images, labels).to(device)
    training = vitlab_training(settings, total_steps=4 * steps * (repeats + 2))
    model = training.model
    flip_only = BatchTransform(model.image_size, train=True, max_rotation_degrees=0.0).to(device)
    eval_transform = BatchTransform(model.image_size, train=False).to(device)
    frozen = frozen_blocks_for(model, TRAINABLE_BLOCKS)

    def build() -> TrunkCache:
        return build_cache(model, data, eval_transform, frozen, views=2, batch_size=batch_size,
                           bf16=uses_bf16(device, training.recipe), show_progress=False)

    cache, seconds = timed(device, build)
    cache_rate = len(data) / seconds  # images/s, both views of each image
    top = TrainableTop(model, TRAINABLE_BLOCKS)

    def images_per_second(trainer, source, transform) -> float:
        result, seconds = timed(device, lambda: training.train(trainer, source, len(data), transform))
        return result["count"] / seconds

    def full() -> float:
        return images_per_second(model, batches(data, batch_size, shuffle=True, device=device), flip_only)

    def cached() -> float:
        return images_per_second(top, cache.batches(batch_size, torch.randperm(len(data), device=device)), None)

    return throughput_row(
        "cached_trunk_step", settings, (full, cached), repeats, ratio_meaning="cached / uncached",
        batch_size=batch_size, steps=steps, cache_images_per_second=cache_rate,
        notes=f"{settings.arch}, random weights, the last {TRAINABLE_BLOCKS} blocks + head train, batch {batch_size}; "
        f"both sides: recipe 'default', flip as the only augmentation; uncached: the whole model every step; cached: "
        f"the last {TRAINABLE_BLOCKS} blocks on stored tokens of the first {frozen}. Building the cache (2 views per "
        f"image) ran at {cache_rate:.1f} images/s, a one-off cost before epoch 1",
    )


def bench_cached_trunk_shapes(settings: Settings) -> dict:
    """The demo preset with 2 of 4 blocks frozen, end to end, without and with --cache-trunk, over several seeds.

    Each repeat uses its own seed (42, 43, ...) on both sides: the timing gets repeats, and the accuracy comparison
    sees how much a different draw of the flips moves the result anyway.
    """
    common = ["--preset", "demo", "--trainable-blocks", "2", "--quiet", "--device", settings.device.type,
              *settings.demo_args]
    runs: dict[str, list[dict]] = {"uncached": [], "cached": []}
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-cache-") as tmp:
        for repeat in range(settings.reps(1, 3)):
            seed = 42 + repeat
            for side in ("uncached", "cached") if repeat % 2 == 0 else ("cached", "uncached"):
                out = Path(tmp) / f"{side}-{seed}"
                flags = ["--cache-trunk"] if side == "cached" else []
                code = finetune.main([*common, *flags, "--seed", str(seed), "--out", str(out)])
                if code != 0:
                    raise RuntimeError(f"the {side} shapes run (seed {seed}) exited with {code}")
                history = json.loads((out / "history.json").read_text())
                summary = json.loads((out / "summary.json").read_text())
                runs[side].append({"seed": seed, "epoch_seconds": statistics.mean(e["seconds"] for e in history),
                                   "test_acc": summary["test_acc"],
                                   "cache_seconds": summary.get("trunk_cache_seconds")})
    base = statistics.median(r["epoch_seconds"] for r in runs["uncached"])
    ours = statistics.median(r["epoch_seconds"] for r in runs["cached"])
    acc_base = statistics.mean(r["test_acc"] for r in runs["uncached"])
    acc_ours = statistics.mean(r["test_acc"] for r in runs["cached"])
    cache_seconds = statistics.median(r["cache_seconds"] for r in runs["cached"])

    def accuracies(side: str) -> str:
        return ", ".join(f"{r['test_acc']:.1%}" for r in runs[side])

    shrunk = f" {' '.join(settings.demo_args)}" if settings.demo_args else ""
    return row_result(
        "cached_trunk_shapes", settings, base, ours, "s/epoch", ratio=base / ours,
        ratio_meaning="speed-up (uncached / cached)", target="report", met=None,
        test_acc_uncached=acc_base, test_acc_cached=acc_ours, cache_seconds=cache_seconds, runs=runs,
        notes=f"python -m vitlab.finetune --preset demo --trainable-blocks 2 --seed S{shrunk} [--cache-trunk]: "
        f"vit_tiny, 2 of 4 blocks frozen (random init), flip only on both sides (the preset has no rotation); "
        f"seconds per epoch are train + val, median over seeds; test accuracy per seed: uncached "
        f"{accuracies('uncached')}, cached {accuracies('cached')}; building the cache took {cache_seconds:.1f} s "
        f"once per run",
    )


def bench_epoch_cached(settings: Settings) -> dict:
    """One epoch (train + val) of the default recipe with flip-only augmentation, without and with the cache.

    The same data, model and optimiser serve both sides; each side is warmed up (and compiled, on CUDA) on a few
    batches first. Reported: both epoch times and the one-off time to build the cache.
    """
    if not settings.cuda and not settings.force_epoch:
        return not_measured("epoch_cached", settings, "needs CUDA; --force-epoch runs it anyway")
    device = settings.device
    batch_size = settings.batch(64, 64)
    train, val = epoch_splits(settings)
    training = vitlab_training(settings, total_steps=2 * (-(-len(train) // batch_size)) + 20)
    model = training.model
    use_compile = settings.cuda if settings.compile is None else settings.compile
    flip_only = BatchTransform(model.image_size, train=True, max_rotation_degrees=0.0).to(device)
    eval_transform = BatchTransform(model.image_size, train=False).to(device)

    def build() -> CachedTrunk:
        return cache_trunk(model, train, val, TRAINABLE_BLOCKS, eval_transform, batch_size=2 * batch_size,
                           bf16=uses_bf16(device, training.recipe), show_progress=False)

    cached, cache_seconds = timed(device, build)
    full = torch.compile(model) if use_compile else model
    top = torch.compile(cached.top) if use_compile else cached.top

    def uncached_epoch(train_set: ImageDataset, val_set: ImageDataset) -> None:
        training.train(full, batches(train_set, batch_size, shuffle=True, device=device), len(train_set), flip_only)
        training.evaluate(model, batches(val_set, 2 * batch_size, shuffle=False, device=device), len(val_set),
                          eval_transform)

    def cached_epoch(train_set: TrunkCache, val_set: TrunkCache) -> None:
        order = torch.randperm(len(train_set), device=device)
        training.train(top, train_set.batches(batch_size, order), len(train_set), None)
        training.evaluate(cached.top, val_set.batches(2 * batch_size), len(val_set), None)

    def seconds_of(run) -> float:
        return timed(device, run)[1]

    # Warm-up: a full batch and the epoch's last, smaller batch on both sides, so no shape is new in the epoch.
    n_train, n_val = 2 * batch_size + len(train) % batch_size, 2 * batch_size + len(val) % (2 * batch_size)
    warmup_seconds = seconds_of(lambda: uncached_epoch(train.take(n_train), val.take(n_val)))
    warmup_seconds += seconds_of(lambda: cached_epoch(cached.train.take(n_train), cached.val.take(n_val)))
    base = seconds_of(lambda: uncached_epoch(train, val))
    ours = seconds_of(lambda: cached_epoch(cached.train, cached.val))
    size_gib = cached.nbytes / 2**30
    return row_result(
        "epoch_cached", settings, base, ours, "s/epoch", ratio=base / ours,
        ratio_meaning="speed-up (uncached / cached)", target="report", met=None, batch_size=batch_size,
        train_images=len(train), val_images=len(val), cache_seconds=cache_seconds, cache_gib=size_gib,
        warmup_seconds=warmup_seconds, compiled=use_compile,
        notes=f"{settings.arch}, random weights, the last {TRAINABLE_BLOCKS} blocks + head, {len(train)} train + "
        f"{len(val)} val images, batch {batch_size}, flip only on both sides, compile "
        f"{'on' if use_compile else 'off'}; building the cache took {cache_seconds:.1f} s once ({size_gib:.1f} GiB)",
    )

