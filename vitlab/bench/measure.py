"""The benchmark's measuring tools: settings, synchronised and interleaved timing, the row record, random data."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from vitlab.bench.machine import device_name
from vitlab.data import ImageDataset, seeded_generator

T = TypeVar("T")

ROWS = ("data_pipeline", "capture_overhead", "train_step", "eval_throughput", "peak_memory", "demo", "epoch")
# Run only when named in --rows:
OPTIONAL_ROWS = ("train_step_cpu_bf16", "cached_trunk_step", "cached_trunk_shapes", "epoch_cached", "transfer",
                 "train_step_224", "train_step_160", "train_step_112", "laptop_estimate",
                 "compile")
NUM_CLASSES = 100  # CIFAR-100's
CIFAR_TRAIN, CIFAR_VAL, CIFAR_TEST = 45_000, 5_000, 10_000  # vitlab holds 5,000 of the 50,000 out for validation


@dataclass
class Settings:
    """What one benchmark run measures. Each row picks its own defaults (CPU or CUDA, quick or full)."""

    device: torch.device
    quick: bool = False  # small repeat and step counts: every row in about 3 minutes on a 2-core CPU
    repeats: int | None = None  # timed repeats per side; None: the row's default (more for cheap rows)
    batch_size: int | None = None  # one batch size for every row; None: the row's default for the device
    arch: str = "vit_b_16"  # the notebook's model; the tests use "vit_tiny" to run every row in seconds
    demo_args: tuple[str, ...] = ()  # extra flags for the demo run (the tests shrink it with --epochs/--subset)
    run_epoch: bool = False  # the full-epoch row is long: it runs only when asked (--epoch)
    force_epoch: bool = False  # run the epoch row without CUDA too (it is a GPU target; this checks the code path)
    epoch_images: int | None = None  # train+val images of the epoch row; None: CIFAR-100's 50,000
    compile: bool | None = None  # torch.compile in the epoch row; None: on CUDA only
    seed: int = 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def reps(self, quick: int, full: int) -> int:
        return self.repeats if self.repeats is not None else (quick if self.quick else full)

    def batch(self, cpu: int, cuda: int) -> int:
        return self.batch_size if self.batch_size is not None else (cuda if self.cuda else cpu)

    def count(self, cpu_quick: int, cpu_full: int, cuda_quick: int, cuda_full: int) -> int:
        """A step or batch count that depends on the device and on --quick."""
        if self.cuda:
            return cuda_quick if self.quick else cuda_full
        return cpu_quick if self.quick else cpu_full


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer read afterwards covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], T]) -> tuple[T, float]:
    """Run `work()`; return what it returned and its wall seconds, the device's queued work included."""
    sync(device)  # work queued before the call is not charged to it
    start = time.perf_counter()
    result = work()
    sync(device)
    return result, time.perf_counter() - start


def count_host_syncs(run: Callable[[], object], device: torch.device) -> int | None:
    """How many times `run()` made the host wait for the GPU (torch.cuda's sync debug mode); None off CUDA."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def interleaved(
    baseline: Callable[[], float], vitlab: Callable[[], float], repeats: int, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Call both measurements `warmup` times untimed, then `repeats` times each, alternating A B B A A B ...

    Alternating the order cancels slow drifts (a neighbour's job starting, the CPU heating up) instead of charging
    them to whichever side runs second. Returns the two lists of measurements.
    """
    for _ in range(warmup):
        baseline()
        vitlab()
    a, b = [], []
    for repeat in range(repeats):
        if repeat % 2 == 0:
            a.append(baseline())
            b.append(vitlab())
        else:
            b.append(vitlab())
            a.append(baseline())
    return a, b


def in_fresh_process(module: str, function: str, arguments: list, what: str) -> dict:
    """Call `module.function(*arguments)` in a new Python process and return the dict it returns (through JSON).

    For measurements that a long-lived process would skew: peak memory, or speed that differs between processes.
    """
    code = (f"import json, sys; from {module} import {function}; "
            f"print(json.dumps({function}(*json.loads(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(arguments)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {what} failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check(value: float | None, op: str, limit: float) -> bool | None:
    """Whether `value op limit` holds (None when there is no value)."""
    if value is None or not math.isfinite(value):
        return None
    return value >= limit if op == ">=" else value <= limit


def row_result(
    row: str,
    settings: Settings,
    baseline: float | None,
    vitlab: float | None,
    unit: str,
    *,
    ratio: float | None,
    ratio_meaning: str,
    target: str,
    met: bool | None,
    notes: str = "",
    **extra,
) -> dict:
    """One row of the table, as a plain dict (it goes into the JSON unchanged).

    With `samples_baseline` and `samples_vitlab` among `extra`, it also records a noise check: `ratio_best`, the
    same ratio from each side's best sample, and `spread`, the largest max/min over either side's samples. On a quiet
    machine the two ratios agree and the spread stays near 1; a busy neighbour shows up as a large spread.
    """
    a, b = extra.get("samples_baseline"), extra.get("samples_vitlab")
    if a and b:
        best = min if unit.startswith("s") else max  # seconds: the fastest is the smallest
        extra["ratio_best"] = best(b) / best(a)
        extra["spread"] = max(max(a) / min(a), max(b) / min(b))
        notes += f"; best-of ratio {extra['ratio_best']:.2f}x, samples spread up to {extra['spread']:.1f}x"
        if extra["spread"] > 1.5:
            notes += " (a noisy machine: re-measure on a quiet one before quoting)"
    return {"row": row, "baseline": baseline, "vitlab": vitlab, "unit": unit, "ratio": ratio,
            "ratio_meaning": ratio_meaning, "target": target, "met": met, "device": device_name(settings.device),
            "notes": notes, **extra}


def throughput_row(
    row: str,
    settings: Settings,
    sides: tuple[Callable[[], float], Callable[[], float]],
    repeats: int,
    *,
    warmup: int = 1,
    at_least: float | None = None,
    ratio_meaning: str = "vitlab / notebook",
    target: str = "report",
    notes: str,
    **extra,
) -> dict:
    """Time (baseline, vitlab) images/s `interleaved` and make the row: medians, vitlab / baseline, every sample.

    `at_least`: the ratio the target asks for (met is None without one). `extra` goes into the row unchanged.
    """
    a, b = interleaved(*sides, repeats, warmup)
    base, ours = statistics.median(a), statistics.median(b)
    met = None if at_least is None else check(ours / base, ">=", at_least)
    return row_result(row, settings, base, ours, "images/s", ratio=ours / base, ratio_meaning=ratio_meaning,
                      target=target, met=met, samples_baseline=a, samples_vitlab=b, notes=notes, **extra)


def not_measured(row: str, settings: Settings, why: str, target: str = "") -> dict:
    return row_result(row, settings, None, None, "", ratio=None, ratio_meaning="", target=target, met=None,
                      notes=f"not measured ({why})", measured=False)


def cifar_like(n: int, seed: int, image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (n, S, S, 3), as CIFAR-100 stores them, and random labels (n,) in 0..99."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
    return images, rng.integers(0, NUM_CLASSES, size=n)


def as_dataset(images_nhwc: np.ndarray, labels: np.ndarray) -> ImageDataset:
    """The same images as vitlab holds them: one uint8 tensor (N, 3, H, W) and int64 labels."""
    images = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
    return ImageDataset(images, torch.from_numpy(labels).long(), [f"class_{i}" for i in range(NUM_CLASSES)])


def epoch_splits(settings: Settings) -> tuple[ImageDataset, ImageDataset]:
    """Random CIFAR-100-shaped (train, val) on the device, split 45,000 / 5,000 as vitlab splits CIFAR-100.

    `settings.epoch_images` shrinks the total (default 50,000) in the same proportion.
    """
    total = settings.epoch_images or CIFAR_TRAIN + CIFAR_VAL
    n_val = total * CIFAR_VAL // (CIFAR_TRAIN + CIFAR_VAL)
    images, labels = cifar_like(total, settings.seed)
    pool = as_dataset(images, labels).to(settings.device)
    order = torch.randperm(total, generator=seeded_generator(42)).to(settings.device)  # (total,)
    return pool.subset(order[n_val:]), pool.subset(order[:n_val])
