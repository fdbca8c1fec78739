"""The bench's kit: what a run measures (Settings), timing, a row's record, random data, vitlab's training, machine."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
from torchvision.models import VisionTransformer

from vitlab.data import BatchTransform, ImageDataset, batches
from vitlab.device import device_name
from vitlab.model import build_model
from vitlab.training import train as vitlab_train

NUM_CLASSES = 100  # CIFAR-100's
TRAINABLE_BLOCKS = 3  # as the notebook: the last 3 blocks and the head train


@dataclass
class Settings:
    """What one bench run measures. Each row picks its own defaults (CPU or CUDA, quick or full)."""

    device: torch.device
    quick: bool = False  # small repeat and step counts: the default rows in a few minutes on a 2-core CPU
    repeats: int | None = None  # timed repeats per side, or seeds of the rows that train whole runs; None: the row's
    batch_size: int | None = None  # one batch size for every row; None: the row's default for the device
    arch: str = "vit_b_16"  # the notebook's model; the tests use "vit_tiny" to run every row in seconds
    demo_args: tuple[str, ...] = ()  # extra flags for the rows that run the demo preset (tests shrink it)
    force_epoch: bool = False  # run the epoch row without CUDA too (a GPU target; this checks the code path)
    epoch_images: int | None = None  # train+val images of the epoch row; None: CIFAR-100's 50,000
    compile: bool | None = None  # torch.compile in the epoch row; None: on CUDA only
    seed: int = 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def image_size(self) -> int:
        return 224 if self.arch == "vit_b_16" else 32  # the model's input side: the notebook's Resize target

    def reps(self, quick: int, full: int) -> int:
        return self.repeats if self.repeats is not None else (quick if self.quick else full)

    def batch(self, cpu: int, cuda: int) -> int:
        return self.batch_size if self.batch_size is not None else (cuda if self.cuda else cpu)

    def count(self, cpu_quick: int, cpu_full: int, cuda_quick: int, cuda_full: int) -> int:  # by device and --quick
        return (cuda_quick if self.quick else cuda_full) if self.cuda else (cpu_quick if self.quick else cpu_full)


def timed(device: torch.device, work: Callable[[], Any]) -> tuple[Any, float]:
    """Run `work()`; return what it returned and its wall seconds, the device's queued work included."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda device: None
    synchronize(device)  # work queued before the call is not charged to it
    start, result = time.perf_counter(), work()
    synchronize(device)
    return result, time.perf_counter() - start


def interleaved(baseline: Callable[[], float], vitlab: Callable[[], float], repeats: int,
                warmup: int = 1) -> tuple[list[float], list[float]]:
    """Each side's results, both called `warmup` times untimed, then `repeats` times each in the order A B B A A B:
    alternating cancels a slow drift (a neighbour's job starting) rather than charge it to the side run second."""
    for _ in range(warmup):
        baseline()
        vitlab()
    a, b = [], []
    for repeat in range(repeats):
        order = ((a, baseline), (b, vitlab)) if repeat % 2 == 0 else ((b, vitlab), (a, baseline))
        for samples, side in order:
            samples.append(side())
    return a, b


def in_fresh_process(module: str, function: str, arguments: list) -> Any:
    """`module.function(*arguments)` in a new Python process, its result through JSON: for what a long-lived process
    would skew (peak memory, or speed that differs from one process to the next)."""
    code = f"import json, sys; from {module} import {function}; print(json.dumps({function}(*json.loads(sys.argv[1]))))"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(arguments)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{function} failed in a fresh process (exit {done.returncode}): {done.stderr[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row_result(row: str, settings: Settings, baseline: float | None, vitlab: float | None, unit: str, *,
               ratio: float | None = None, ratio_meaning: str = "", target: str = "report",
               met: bool | None = None, notes: str = "", **extra: Any) -> dict:
    """One row of the table as a plain dict, as the JSON keeps it; `met` by default whether `ratio` meets a target like
    '>= 4x'. Samples in `extra` add a noise check: `ratio_best` (of each side's best) and `spread` (largest max/min)."""
    found = re.fullmatch(r"(>=|<=) ([\d.]+)x", target)
    if met is None and found and ratio is not None:
        met = ratio >= float(found[2]) if found[1] == ">=" else ratio <= float(found[2])
    a, b = extra.get("samples_baseline"), extra.get("samples_vitlab")
    if a and b:
        best = min if unit.startswith("s") else max  # seconds: the fastest is the smallest
        extra["ratio_best"], extra["spread"] = best(b) / best(a), max(max(a) / min(a), max(b) / min(b))
        notes += f"; best-of ratio {extra['ratio_best']:.2f}x, samples spread up to {extra['spread']:.1f}x"
        if extra["spread"] > 1.5:
            notes += " (a noisy machine: re-measure on a quiet one before quoting)"
    return {"row": row, "baseline": baseline, "vitlab": vitlab, "unit": unit, "ratio": ratio,
            "ratio_meaning": ratio_meaning, "target": target, "met": met, "device": device_name(settings.device),
            "notes": notes, **extra}


def paired_row(row: str, settings: Settings, sides: tuple[Callable[[], float], Callable[[], float]], repeats: int,
               *, unit: str = "images/s", warmup: int = 1, ratio_meaning: str = "vitlab / notebook",
               **record: Any) -> dict:
    """Time the sides (baseline, vitlab) `interleaved`: a row of their medians, vitlab / baseline and every sample."""
    a, b = interleaved(*sides, repeats, warmup)
    base, ours = statistics.median(a), statistics.median(b)
    return row_result(row, settings, base, ours, unit, ratio=ours / base, ratio_meaning=ratio_meaning,
                      samples_baseline=a, samples_vitlab=b, **record)


def cifar_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (n, 32, 32, 3), as CIFAR-100 stores them, and random labels (n,) in 0..99."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), rng.integers(0, NUM_CLASSES, size=n)


def as_dataset(images_nhwc: np.ndarray, labels: np.ndarray) -> ImageDataset:
    """The same images as vitlab holds them: one uint8 tensor (N, 3, H, W) and int64 labels."""
    images = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
    return ImageDataset(images, torch.from_numpy(labels).long(), [f"class_{i}" for i in range(NUM_CLASSES)])


def random_dataset(n: int, settings: Settings) -> ImageDataset:
    """`n` random CIFAR-shaped images and labels as vitlab holds them, on the settings' device."""
    return as_dataset(*cifar_like(n, settings.seed)).to(settings.device)


class VitlabTraining(NamedTuple):
    """vitlab's training as the job sets it up (recipe 'default', random weights); `train(module, batches, count,
    transform)` and `evaluate(...)` run its loops on the model, its compiled form or a `TrainableTop`: metrics."""

    model: VisionTransformer
    train: Callable[..., dict]
    evaluate: Callable[..., dict]
    bf16: bool  # whether the recipe computes in bf16 on this device (CUDA)


def vitlab_training(settings: Settings, total_steps: int, image_size: int | None = None,
                    trainable_blocks: int = TRAINABLE_BLOCKS) -> VitlabTraining:
    """`settings.arch` with random weights on the device, AdamW (fused on CUDA), warm-up + cosine over `total_steps`."""
    recipe, device = vitlab_train.RECIPES["default"], settings.device
    torch.manual_seed(settings.seed)
    model = build_model(settings.arch, NUM_CLASSES, pretrained=False, trainable_blocks=trainable_blocks,
                        progress=False, image_size=image_size).to(device)
    # pretrained=True: the real job fine-tunes pretrained weights, so its body learns at a tenth of the head's rate.
    optimizer = vitlab_train.make_optimizer(model, recipe, recipe.lr, pretrained=True, fused=settings.cuda)
    scheduler = vitlab_train.make_scheduler(optimizer, recipe, total_steps=total_steps)
    common = dict(criterion=vitlab_train.make_criterion(recipe), device=device, recipe=recipe, show_progress=False)
    train = partial(vitlab_train.train_one_epoch, optimizer=optimizer, scheduler=scheduler, **common)
    return VitlabTraining(model, train, partial(vitlab_train.evaluate, **common),
                          vitlab_train.uses_bf16(device, recipe))


def vitlab_trainer(settings: Settings, data: ImageDataset, batch_size: int, total_steps: int, *,
                   image_size: int | None = None) -> Callable[[int], float]:
    """vitlab's loop on `data` (uint8, on the device), trains `steps` steps a call and returns images/s; its data
    transform (flip, rotation 10, resize to `image_size`) on the clock as the notebook's PIL work is on its side."""
    training = vitlab_training(settings, total_steps, image_size)
    transform = BatchTransform(training.model.image_size, train=True).to(settings.device)

    def run(steps: int) -> float:
        chunk = data.take(steps * batch_size)
        source = batches(chunk, batch_size, shuffle=True, device=settings.device)
        metrics, seconds = timed(settings.device, lambda: training.train(training.model, source, len(chunk), transform))
        return metrics["count"] / seconds

    return run
