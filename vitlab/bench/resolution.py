"""The rows for a lower input resolution (`--image-size`) and the laptop preset (`--preset laptop`)."""

from __future__ import annotations

import statistics
from dataclasses import replace

from vitlab.bench.epoch import vitlab_epoch
from vitlab.bench.measure import Settings, paired_row, random_dataset, row_result
from vitlab.bench.sides import vitlab_trainer
from vitlab.training.config import TRAIN_IMAGES, FinetuneConfig, make_config

TARGETS = {160: ">= 1.8x", 112: ">= 3.5x"}  # the speed-up over 224 px, the notebook's size (112 px: 4x fewer tokens)


def bench_resolution_step(settings: Settings, image_size: int, reference: int = 224) -> dict:
    """vitlab's training step (data transform included) at `image_size` px against `reference` px, images/s."""
    batch_size, steps, repeats = settings.batch(8, 64), settings.count(2, 3, 10, 25), settings.reps(3, 5)
    data = random_dataset(batch_size * steps, settings)
    base, ours = (vitlab_trainer(settings, data, batch_size, 4 * steps * (repeats + 2), image_size=size)
                  for size in (reference, image_size))
    return paired_row(
        f"train_step_{image_size}", settings, (lambda: base(steps), lambda: ours(steps)), repeats,
        ratio_meaning=f"{image_size} px / {reference} px", target=TARGETS.get(image_size, "report")
        if reference == 224 else "report", batch_size=batch_size, steps=steps, image_size=image_size,
        reference_size=reference, notes=f"{settings.arch}, random weights, the last 3 blocks + head train, recipe "
        f"'default'; baseline: the same at {reference} px",
    )


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
    probe = random_dataset(config.batch_size * settings.count(1, 2, 4, 8), settings)
    as_job = replace(settings, arch=config.arch, compile=config.compile)
    runs = [vitlab_epoch(as_job, probe, probe, config.batch_size, "cached", config.image_size, config.trainable_blocks)
            for _ in range(settings.reps(1, 3))]
    per_run = {"trunk": ("cache_seconds", 3), "train_top": ("train_seconds", 1), "val_top": ("val_seconds", 1),
               "test_full": ("test_seconds", 1)}  # images passed in each phase, per probe image
    rates = {phase: statistics.median(images * len(probe) / run[key] for run in runs)
             for phase, (key, images) in per_run.items()}
    counts = run_counts(config)
    minutes = estimate_minutes(rates, counts, config.epochs)
    return row_result(
        "laptop_estimate", settings, None, minutes["total"], "min", target="<= 30 min", met=minutes["total"] <= 30.0,
        rates=rates, counts=counts, minutes=minutes, notes=f"--preset {config.preset or 'custom'}: {config.arch} at "
        f"{config.image_size} px, {counts['train']} train / {counts['val']} val / {counts['test']} test images, "
        f"{config.epochs} epochs, random weights; images/s: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
        + "; minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items()),
    )
