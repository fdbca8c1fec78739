"""Optional rows for a lower input resolution (`--image-size`) and the laptop preset (`--preset laptop`).

    train_step_224     vitlab's training step (the last 3 blocks + head, data transform included) at 224 px, images/s
    train_step_160     the same at 160 px against 224 px, interleaved: target >= 1.8x
    train_step_112     the same at 112 px against 224 px, interleaved: target >= 3.5x (4x fewer tokens)
    laptop_estimate    the laptop preset's whole run (trunk cache, epochs, validation, test) in minutes, estimated
                       from rates measured here at the preset's settings: target <= 30 minutes

Run them by name: `python -m vitlab.bench --rows train_step_224,train_step_160,train_step_112,laptop_estimate`.
Random weights (nothing to download): a step's speed does not depend on the values of the weights.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from vitlab.bench.measure import NUM_CLASSES, Settings, as_dataset, cifar_like, row_result, throughput_row, timed
from vitlab.bench.sides import VitlabTraining
from vitlab.data import BatchTransform, batches
from vitlab.model import build_model
from vitlab.training.config import TRAIN_IMAGES, FinetuneConfig, make_config
from vitlab.training.train import RECIPES, make_criterion, make_optimizer, make_scheduler, uses_bf16
from vitlab.training.trunk_cache import TrainableTop, build_cache, frozen_blocks_for

REFERENCE_SIZE = 224  # the notebook's input size, what the lower resolutions are compared with
TARGETS = {160: 1.8, 112: 3.5}  # the speed-up over 224 px each size must reach (issue 15)
TRAINABLE_BLOCKS = 3  # as the notebook and the other timing rows: the last 3 blocks and the head train


def training_at(settings: Settings, image_size: int, trainable_blocks: int, total_steps: int) -> VitlabTraining:
    """vitlab's training of `settings.arch` at `image_size` px, random weights, as `vitlab.training.finetune` sets it
    up."""
    recipe = RECIPES["default"]
    torch.manual_seed(settings.seed)
    model = build_model(settings.arch, NUM_CLASSES, pretrained=False, trainable_blocks=trainable_blocks,
                        progress=False, image_size=image_size).to(settings.device)
    optimizer = make_optimizer(model, recipe, recipe.lr, pretrained=True, fused=settings.cuda)
    scheduler = make_scheduler(optimizer, recipe, total_steps=total_steps)
    return VitlabTraining(model, optimizer, scheduler, make_criterion(recipe), settings.device, recipe)


def step_runner(settings: Settings, image_size: int, batch_size: int, steps: int, repeats: int) -> Callable[[], float]:
    """A call that runs `steps` training steps at `image_size` px on random CIFAR-shaped data; returns images/s."""
    device = settings.device
    training = training_at(settings, image_size, TRAINABLE_BLOCKS, total_steps=4 * steps * (repeats + 2))
    transform = BatchTransform(image_size, train=True).to(device)  # flip + rotation 10, resize 32 -> image_size
    images, labels = cifar_like(batch_size * steps, settings.seed)
    data = as_dataset(images, labels).to(device)

    def run() -> float:
        source = batches(data, batch_size, shuffle=True, device=device)
        result, seconds = timed(device, lambda: training.train(training.model, source, len(data), transform))
        return result["count"] / seconds

    return run


def bench_resolution_step(settings: Settings, image_size: int, reference: int = REFERENCE_SIZE) -> dict:
    """Training images/s at `image_size` px; against `reference` px interleaved (ratio = speed-up), unless equal."""
    batch_size = settings.batch(8, 64)
    steps = settings.count(2, 3, 10, 25)
    repeats = settings.reps(3, 5)
    ours = step_runner(settings, image_size, batch_size, steps, repeats)
    notes = (f"{settings.arch}, random weights, the last {TRAINABLE_BLOCKS} blocks + head train, batch {batch_size}, "
             f"{steps} steps per repeat, recipe 'default', data transform (flip, rotation 10, resize from 32 px) "
             f"included")
    row = f"train_step_{image_size}"
    if image_size == reference:
        ours()  # warm-up
        samples = [ours() for _ in range(repeats)]
        return row_result(row, settings, None, statistics.median(samples), "images/s", ratio=None, ratio_meaning="",
                          target="report", met=None, samples_vitlab=samples, batch_size=batch_size, steps=steps,
                          notes=f"{notes}; the reference of the lower-resolution rows")
    base = step_runner(settings, reference, batch_size, steps, repeats)
    at_least = TARGETS.get(image_size) if reference == REFERENCE_SIZE else None
    return throughput_row(
        row, settings, (base, ours), repeats, at_least=at_least,
        target=f">= {at_least}x" if at_least else "report", ratio_meaning=f"{image_size} px / {reference} px",
        batch_size=batch_size, steps=steps, image_size=image_size, reference_size=reference,
        notes=f"{notes}; baseline: the same at {reference} px",
    )


def measure_rates(settings: Settings, config: FinetuneConfig, probe_batches: int) -> dict[str, float]:
    """Images/s of each phase of a `--cache-trunk` run with `config`'s arch, image size, blocks and batch size.

    Phases, as vitlab.training.finetune runs them: building the cache (the frozen trunk, per view), training the top
    on cached
    tokens, validating the top on cached tokens, testing the full model on images. Medians over the repeats.
    """
    device, batch = settings.device, config.batch_size
    repeats = settings.reps(1, 3)
    train_settings = Settings(device=device, arch=config.arch, seed=settings.seed)
    training = training_at(train_settings, config.image_size, config.trainable_blocks, 10 * probe_batches * repeats)
    model = training.model
    images, labels = cifar_like(batch * probe_batches, settings.seed)
    data = as_dataset(images, labels).to(device)
    transform = BatchTransform(config.image_size, train=False).to(device)
    frozen = frozen_blocks_for(model, config.trainable_blocks)
    bf16 = uses_bf16(device, training.recipe)
    top = TrainableTop(model, config.trainable_blocks)
    cache = build_cache(model, data, transform, frozen, views=2, batch_size=2 * batch, bf16=bf16, show_progress=False)

    def rate(work: Callable[[], dict]) -> float:
        result, seconds = timed(device, work)
        return result["count"] / seconds

    def rebuild() -> dict:
        build_cache(model, data, transform, frozen, views=2, batch_size=2 * batch, bf16=bf16, show_progress=False)
        return {"count": 2 * len(data)}  # trunk forwards: each image as is and mirrored

    phases = {
        "trunk": rebuild,
        "train_top": lambda: training.train(top, cache.batches(batch, torch.randperm(len(data), device=device)),
                                            len(data), None),
        "val_top": lambda: training.evaluate(top, cache.batches(2 * batch), len(data), None),
        "test_full": lambda: training.evaluate(model, batches(data, 2 * batch, shuffle=False, device=device),
                                               len(data), transform),
    }
    rate(phases["train_top"])  # warm-up: the first steps allocate the optimizer's state
    return {name: statistics.median(rate(work) for _ in range(repeats)) for name, work in phases.items()}


def run_counts(config: FinetuneConfig) -> dict[str, int]:
    """Images per split of a CIFAR run with `config`: --subset caps each of train, val and test."""
    total = TRAIN_IMAGES.get(config.dataset, 50_000)
    cap = config.subset if config.subset is not None else 10**9
    return {"train": min(cap, total - config.val_size), "val": min(cap, config.val_size), "test": min(cap, 10_000)}


def estimate_minutes(rates: dict[str, float], counts: dict[str, int], epochs: int) -> dict[str, float]:
    """Minutes per phase of a cached-trunk run: the cache (train x 2 views + val), the epochs, the test pass."""
    cache = (2 * counts["train"] + counts["val"]) / rates["trunk"]
    train = epochs * counts["train"] / rates["train_top"]
    val = epochs * counts["val"] / rates["val_top"]
    test = counts["test"] / rates["test_full"]
    parts = {"cache": cache / 60, "train": train / 60, "val": val / 60, "test": test / 60}
    return {**parts, "total": sum(parts.values())}


def bench_laptop_estimate(settings: Settings, config: FinetuneConfig | None = None) -> dict:
    """The laptop preset's total minutes (cache build, epochs, test), estimated from rates measured on this device.

    `config`: the FinetuneConfig to estimate (default: `--preset laptop`); the tests pass a vit_tiny one.
    """
    if config is None:
        config = make_config({"preset": "laptop"})  # the preset exactly as the job resolves it
    rates = measure_rates(settings, config, probe_batches=settings.count(1, 2, 4, 8))
    counts = run_counts(config)
    minutes = estimate_minutes(rates, counts, config.epochs)
    return row_result(
        "laptop_estimate", settings, None, minutes["total"], "min", ratio=None, ratio_meaning="",
        target="<= 30 min", met=minutes["total"] <= 30.0, rates=rates, counts=counts, minutes=minutes,
        notes=f"--preset {config.preset or 'custom'}: {config.arch} at {config.image_size} px, last "
        f"{config.trainable_blocks} blocks, batch {config.batch_size}, {counts['train']} train / {counts['val']} "
        f"val / {counts['test']} test images, {config.epochs} epochs, random weights. Measured images/s: trunk "
        f"(per view) {rates['trunk']:.0f}, cached train {rates['train_top']:.0f}, cached val {rates['val_top']:.0f}, "
        f"full-model test {rates['test_full']:.0f}. Minutes: cache {minutes['cache']:.1f}, train {minutes['train']:.1f}"
        f", val {minutes['val']:.1f}, test {minutes['test']:.1f} (not counted: start-up, reading CIFAR, the figures)",
    )
