"""How fast vitlab is, measured against the notebook's way in the same process: `python -m vitlab.bench --quick`.

Every row times the notebook's way (`vitlab.baseline`) and vitlab's way on the same device, with the same batch size,
interleaved (A B B A A B ...) after a warm-up, several repeats, and reports the medians, their ratio and the target
from the performance issue:

    row               baseline: the notebook                        vitlab                              target
    data_pipeline     PIL transforms per image in a DataLoader      BatchTransform on a whole batch     >= 4x
    train_step        fp32, PIL DataLoader, Adam, .item() per step  train_one_epoch, bf16 on CUDA       >= 1x
    capture_overhead  a plain eval forward                          the same forward under capture      <= 1.05x
    eval_throughput   PIL test transform, fp32, .item() per batch   vitlab.train.evaluate               report
    peak_memory       its training step, in a fresh process         vitlab's, in a fresh process        report
    demo              (none)                                        finetune --preset demo, end to end  >= 95%, <= 60 s
    epoch (--epoch)   its loop, extrapolated to an epoch            one epoch of CIFAR-100's shape      <= 30 s, >= 10x

All data is random uint8 of CIFAR-100's shape and all weights are random: nothing is downloaded, and speed does not
depend on the values. Targets are reported, never asserted: a slow machine is information, not an error.

    python -m vitlab.bench --quick                      # every row, small repeat counts (~3 minutes on 2 cores)
    python -m vitlab.bench --rows data_pipeline,capture_overhead --json bench.json
    python -m vitlab.bench --device cuda --epoch        # on a GPU: also the full-epoch row
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vitlab.baseline import (
    notebook_eval_steps,
    notebook_load_batches,
    notebook_loader,
    notebook_model,
    notebook_optimizer,
    notebook_train_steps,
)
from vitlab.capture import capture
from vitlab.data import BatchTransform, ImageDataset, batches
from vitlab.model import build_model
from vitlab.train import RECIPES, evaluate, make_criterion, make_optimizer, make_scheduler, train_one_epoch

ROWS = ("data_pipeline", "capture_overhead", "train_step", "eval_throughput", "peak_memory", "demo", "epoch")
OPTIONAL_ROWS = ("train_step_cpu_bf16",)  # run only when named in --rows
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


def vitlab_model(settings: Settings) -> torch.nn.Module:
    """vitlab's model with random weights (nothing to download): the last 3 blocks and the head train."""
    torch.manual_seed(settings.seed)
    return build_model(settings.arch, NUM_CLASSES, pretrained=False, trainable_blocks=3, progress=False)


def input_size(arch: str) -> int:
    """The side length the model takes (224 for ViT-B/16): the notebook's Resize target."""
    return 224 if arch == "vit_b_16" else 32


# ---------------------------------------------------------------------------------------------------------------
# The rows
# ---------------------------------------------------------------------------------------------------------------


def bench_data_pipeline(settings: Settings) -> dict:
    """Training-time preprocessing alone: the notebook's PIL DataLoader against BatchTransform, images/s."""
    device, size = settings.device, input_size(settings.arch)
    batch_size = settings.batch(64, 256)
    steps = settings.count(2, 4, 10, 20)  # batches per timed repeat
    images, labels = cifar_like(batch_size * steps, settings.seed)
    loader = notebook_loader(images, labels, batch_size, train=True, image_size=size)
    data = as_dataset(images, labels).to(device)  # on a GPU the dataset lives there, as in vitlab.finetune
    transform = BatchTransform(size, train=True).to(device)

    def vitlab() -> float:
        sync(device)
        start, count = time.perf_counter(), 0
        for images_batch, labels_batch in batches(data, batch_size, shuffle=True, device=device):
            transform(images_batch)  # (B, 3, 32, 32) uint8 -> (B, 3, S, S) normalised float
            count += labels_batch.shape[0]
        sync(device)
        return count / (time.perf_counter() - start)

    a, b = interleaved(lambda: notebook_load_batches(loader, steps), vitlab, settings.reps(5, 9))
    base, ours = statistics.median(a), statistics.median(b)
    where = "on the GPU, dataset resident there" if settings.cuda else "on the CPU"
    return row_result(
        "data_pipeline", settings, base, ours, "images/s", ratio=ours / base, ratio_meaning="vitlab / notebook",
        target=">= 4x", met=check(ours / base, ">=", 4.0), batch_size=batch_size, steps=steps,
        samples_baseline=a, samples_vitlab=b,
        notes=f"resize to {size}, flip, rotation 10, normalise; notebook: PIL per image, DataLoader(num_workers=0) "
        f"on the CPU; vitlab: BatchTransform {where}",
    )


def _vitlab_trainer(
    settings: Settings, images: np.ndarray, labels: np.ndarray, batch_size: int, total_steps: int,
    cpu_bf16: bool = False,
):
    """vitlab's training as `vitlab.finetune` sets it up; returns (run(steps) -> images/s, model).

    `cpu_bf16` wraps the steps in CPU bf16 autocast, which vitlab's recipe does not do (it uses bf16 on CUDA only):
    the optional row `train_step_cpu_bf16` measures what it would give.
    """
    device = settings.device
    model = vitlab_model(settings).to(device)
    recipe = RECIPES["default"]
    # pretrained=True: the real job fine-tunes ImageNet weights, so its body learns at a tenth of the head's rate.
    optimizer = make_optimizer(model, recipe, recipe.lr, pretrained=True, fused=device.type == "cuda")
    scheduler = make_scheduler(optimizer, recipe, total_steps=total_steps)
    criterion = make_criterion(recipe)
    transform = BatchTransform(model.image_size, train=True).to(device)
    data = as_dataset(images, labels).to(device)

    def run(steps: int) -> float:
        chunk = data.take(steps * batch_size)
        sync(device)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16 else contextlib.nullcontext():
            result = train_one_epoch(
                model, batches(chunk, batch_size, shuffle=True, device=device), len(chunk), transform, optimizer,
                scheduler, criterion, device, recipe, show_progress=False,
            )
        sync(device)
        return result["count"] / (time.perf_counter() - start)

    return run, model


def _notebook_trainer(settings: Settings, images: np.ndarray, labels: np.ndarray, batch_size: int):
    """The notebook's training loop; returns (run(steps) -> images/s, model)."""
    device = settings.device
    torch.manual_seed(settings.seed)
    model = notebook_model(settings.arch, NUM_CLASSES).to(device)
    optimizer = notebook_optimizer(model)
    loader = notebook_loader(images, labels, batch_size, train=True, image_size=input_size(settings.arch))
    return (lambda steps: notebook_train_steps(model, loader, steps, device, optimizer)), model


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


def bench_train_step(settings: Settings, cpu_bf16: bool = False) -> dict:
    """The training loop, data included: the notebook's (fp32, PIL, Adam) against vitlab's, images/s."""
    device = settings.device
    row = "train_step_cpu_bf16" if cpu_bf16 else "train_step"
    if cpu_bf16 and settings.cuda:
        return not_measured(row, settings, "a CPU row: on CUDA, train_step already uses bf16")
    batch_size = settings.batch(8, 64)
    steps = settings.count(2, 3, 10, 25)  # optimisation steps per timed repeat
    repeats = settings.reps(3, 5)
    images, labels = cifar_like(batch_size * steps, settings.seed)
    notebook_run, _ = _notebook_trainer(settings, images, labels, batch_size)
    vitlab_run, _ = _vitlab_trainer(settings, images, labels, batch_size, total_steps=4 * steps * (repeats + 2),
                                    cpu_bf16=cpu_bf16)

    notebook_run(1)  # warm-up, one step each: allocates Adam's state, primes the kernels
    vitlab_run(1)
    syncs = count_host_syncs(lambda: vitlab_run(steps), device)  # CUDA only; None (and nothing run) elsewhere
    a, b = interleaved(lambda: notebook_run(steps), lambda: vitlab_run(steps), repeats, warmup=0)
    base, ours = statistics.median(a), statistics.median(b)
    if settings.cuda:
        precision = "bf16 autocast" if RECIPES["default"].bf16_on_cuda else "fp32"
    elif cpu_bf16:
        flags = describe_device(device).get("cpu_bf16") or ["no bf16 instructions"]
        precision = f"CPU bf16 autocast, NOT what vitlab.train does today (CPU: {', '.join(flags)})"
    else:
        precision = "fp32 (vitlab's recipe uses bf16 on CUDA only)"
    notes = (f"{settings.arch}, random weights, last 3 blocks + head train, batch {batch_size}, {steps} steps per "
             f"repeat; vitlab: recipe 'default' (AdamW{', fused' if settings.cuda else ''}, warmup+cosine, label "
             f"smoothing, clipping), {precision}")
    if syncs is not None:
        notes += (f"; host syncs in {steps} vitlab steps: {syncs} (expected: train_one_epoch reads its metrics "
                  f"every 25 steps and at the end, never inside a step)")
    return row_result(
        row, settings, base, ours, "images/s", ratio=ours / base, ratio_meaning="vitlab / notebook",
        target="report" if cpu_bf16 else ">= 1x", met=None if cpu_bf16 else check(ours / base, ">=", 1.0),
        batch_size=batch_size, steps=steps, samples_baseline=a, samples_vitlab=b, host_syncs=syncs, notes=notes,
    )


def bench_capture_overhead(settings: Settings) -> dict:
    """An eval forward under `vitlab.capture` against the same forward without it, seconds per batch."""
    device = settings.device
    batch_size = settings.batch(4, 64)
    forwards = settings.count(1, 1, 5, 10)  # forwards per timed repeat
    model = vitlab_model(settings).to(device).eval()
    images, labels = cifar_like(batch_size, settings.seed)
    inputs = BatchTransform(model.image_size, train=False).to(device)(as_dataset(images, labels).images.to(device))

    @torch.no_grad()
    def plain() -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(forwards):
            model(inputs)
        sync(device)
        return (time.perf_counter() - start) / forwards

    @torch.no_grad()
    def captured() -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(forwards):
            with capture(model) as cap:
                model(inputs)
        sync(device)
        assert len(cap.attentions) == len(model.encoder.layers)  # the hooks really recorded every block
        return (time.perf_counter() - start) / forwards

    with torch.no_grad():  # the warm-up, and a check that capture changes nothing
        logits_plain = model(inputs)
        with capture(model):
            logits_captured = model(inputs)
    identical = bool(torch.equal(logits_plain, logits_captured))
    a, b = interleaved(plain, captured, settings.reps(7, 11), warmup=0)
    base, ours = statistics.median(a), statistics.median(b)
    return row_result(
        "capture_overhead", settings, base, ours, "s/batch", ratio=ours / base,
        ratio_meaning="capture / plain (time)", target="<= 1.05x", met=check(ours / base, "<=", 1.05),
        batch_size=batch_size, samples_baseline=a, samples_vitlab=b, logits_identical=identical,
        notes=f"{settings.arch}, eval, torch.no_grad, fp32, batch {batch_size}; logits identical with and without "
        f"capture: {identical}",
    )


def bench_eval_throughput(settings: Settings) -> dict:
    """Evaluation: the notebook's loop (PIL test transform, fp32, .item() per batch) against vitlab's `evaluate`."""
    device = settings.device
    batch_size = settings.batch(8, 128)
    steps = settings.count(1, 2, 10, 20)  # batches per timed repeat
    images, labels = cifar_like(batch_size * steps, settings.seed)
    model = vitlab_model(settings).to(device)  # one model for both sides: only the loops differ
    size = model.image_size
    loader = notebook_loader(images, labels, batch_size, train=False, image_size=model.image_size)
    recipe = RECIPES["default"]
    data = as_dataset(images, labels).to(device)
    transform = BatchTransform(model.image_size, train=False).to(device)
    criterion = make_criterion(recipe)

    def vitlab() -> float:
        sync(device)
        start = time.perf_counter()
        result = evaluate(model, batches(data, batch_size, shuffle=False, device=device), len(data), transform,
                          criterion, device, recipe, show_progress=False)
        sync(device)
        return result["count"] / (time.perf_counter() - start)

    a, b = interleaved(lambda: notebook_eval_steps(model, loader, steps, device), vitlab, settings.reps(3, 5))
    base, ours = statistics.median(a), statistics.median(b)
    precision = "bf16 autocast" if settings.cuda else "fp32"
    return row_result(
        "eval_throughput", settings, base, ours, "images/s", ratio=ours / base, ratio_meaning="vitlab / notebook",
        target="report", met=None, batch_size=batch_size, steps=steps, samples_baseline=a, samples_vitlab=b,
        notes=f"{settings.arch}; notebook: weights.transforms() per image (resize {round(size * 256 / 224)}, crop "
        f"{size}), fp32; vitlab: BatchTransform eval (resize {size}), {precision}",
    )


def bench_demo(settings: Settings) -> dict:
    """The offline demo end to end, in a fresh process: wall seconds and test accuracy."""
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-demo-") as tmp:
        out = Path(tmp) / "demo"
        command = [sys.executable, "-m", "vitlab.finetune", "--preset", "demo", "--out", str(out), "--quiet",
                   "--device", settings.device.type, *settings.demo_args]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
        wall = time.perf_counter() - start
        summary_file = out / "summary.json"
        if done.returncode != 0 or not summary_file.is_file():
            raise RuntimeError(f"the demo run failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
        summary = json.loads(summary_file.read_text())
    accuracy = summary["test_acc"]
    shrunk = f"; shrunk with {' '.join(settings.demo_args)}" if settings.demo_args else ""
    return row_result(
        "demo", settings, None, wall, "s", ratio=None, ratio_meaning="", target=">= 95% test acc, <= 60 s",
        met=bool(accuracy >= 0.95 and wall <= 60.0), test_acc=accuracy,
        pointing_game=summary.get("pointing_game"), attention_mass_ratio=summary.get("attention_mass_ratio"),
        wall_seconds_in_process=summary.get("wall_seconds"),
        notes=f"python -m vitlab.finetune --preset demo{shrunk}: test acc {accuracy:.1%}, pointing game "
        f"{summary.get('pointing_game', float('nan')):.2f}, attention mass ratio "
        f"{summary.get('attention_mass_ratio', float('nan')):.2f}; wall time includes starting Python and torch "
        f"({summary.get('wall_seconds', float('nan')):.0f} s inside the run)",
    )


def memory_child(side: str, arch: str, batch_size: int, steps: int, device: str, seed: int = 0) -> dict:
    """Run in a fresh process: build one side's training, run `steps` steps, report the peak memory in MiB.

    CPU: peak resident set size of the whole process (so a fresh process is needed: it holds nothing else).
    CUDA: `torch.cuda.max_memory_allocated`.
    """
    settings = Settings(device=torch.device(device), arch=arch, seed=seed)
    images, labels = cifar_like(batch_size * steps, seed)
    if side == "notebook":
        run, _ = _notebook_trainer(settings, images, labels, batch_size)
    else:
        run, _ = _vitlab_trainer(settings, images, labels, batch_size, total_steps=100)
    if settings.cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _peak_rss_mib()
    run(steps)
    peak = torch.cuda.max_memory_allocated() / 2**20 if settings.cuda else _peak_rss_mib()
    return {"peak_mib": peak, "before_steps_mib": before}


def _peak_rss_mib() -> float:
    """This process's peak resident set size, MiB.

    Linux: VmHWM from /proc/self/status, the peak of this process's own memory map. (`ru_maxrss` would not do in a
    child process: Linux carries the parent's high-water mark over `fork` and `exec`, so a child started from a big
    benchmark process reports the parent's peak.) Elsewhere: `ru_maxrss`.
    """
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 2**10  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _memory_in_fresh_process(side: str, settings: Settings, batch_size: int, steps: int) -> dict:
    arguments = json.dumps([side, settings.arch, batch_size, steps, str(settings.device), settings.seed])
    code = ("import json, sys; from vitlab.bench import memory_child; "
            "print(json.dumps(memory_child(*json.loads(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, arguments], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} memory run failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_peak_memory(settings: Settings) -> dict:
    """Peak memory of the training step, each side in its own fresh process (same batch size)."""
    batch_size = settings.batch(8, 64)
    steps = 1 if settings.quick else 2  # the peak comes in the first step: Adam's state is allocated there
    notebook = _memory_in_fresh_process("notebook", settings, batch_size, steps)
    vitlab = _memory_in_fresh_process("vitlab", settings, batch_size, steps)
    base, ours = notebook["peak_mib"], vitlab["peak_mib"]
    if settings.cuda:
        what = "torch.cuda.max_memory_allocated"
    else:
        what = "peak RSS of the whole process (Python, torch, weights and data included)"
    grown = {side: r["peak_mib"] - r["before_steps_mib"] for side, r in (("notebook", notebook), ("vitlab", vitlab))}
    return row_result(
        "peak_memory", settings, base, ours, "MiB", ratio=ours / base, ratio_meaning="vitlab / notebook",
        target="report", met=None, batch_size=batch_size, steps=steps, step_growth_mib=grown,
        notes=f"{settings.arch}, batch {batch_size}, {steps} step(s), {what}; growth during the steps: notebook "
        f"{grown['notebook']:.0f} MiB, vitlab {grown['vitlab']:.0f} MiB",
    )


def bench_epoch(settings: Settings) -> dict:
    """One epoch of the default recipe (train 45,000 + validate 5,000) on random CIFAR-100-shaped data.

    vitlab's own `train_one_epoch` and `evaluate`, the dataset resident on the device, bf16 autocast, fused AdamW,
    `torch.compile` (on CUDA). The notebook's loop is timed for a number of steps before and after, and its epoch
    time extrapolated from that throughput (a whole notebook epoch takes minutes).
    """
    target = "<= 30 s on an H100, >= 10x the notebook"
    if not settings.run_epoch:
        return not_measured("epoch", settings, "run with --epoch", target)
    if not settings.cuda and not settings.force_epoch:
        return not_measured("epoch", settings, "needs CUDA; --force-epoch runs it anyway", target)
    device = settings.device
    batch_size = settings.batch(64, 64)  # the notebook's and vitlab.finetune's default
    total = settings.epoch_images or CIFAR_TRAIN + CIFAR_VAL
    n_val = total * CIFAR_VAL // (CIFAR_TRAIN + CIFAR_VAL)
    images, labels = cifar_like(total, settings.seed)
    pool = as_dataset(images, labels).to(device)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(42)).to(device)  # vitlab's split
    train, val = pool.subset(order[n_val:]), pool.subset(order[:n_val])

    model = vitlab_model(settings).to(device)
    recipe = RECIPES["default"]
    optimizer = make_optimizer(model, recipe, recipe.lr, pretrained=True, fused=settings.cuda)
    steps_per_epoch = -(-len(train) // batch_size)
    scheduler = make_scheduler(optimizer, recipe, total_steps=steps_per_epoch + 10)
    criterion = make_criterion(recipe)
    use_compile = settings.cuda if settings.compile is None else settings.compile
    trainer = torch.compile(model) if use_compile else model
    train_transform = BatchTransform(model.image_size, train=True).to(device)
    eval_transform = BatchTransform(model.image_size, train=False).to(device)

    def train_on(dataset: ImageDataset) -> dict:
        return train_one_epoch(trainer, batches(dataset, batch_size, shuffle=True, device=device), len(dataset),
                               train_transform, optimizer, scheduler, criterion, device, recipe, show_progress=False)

    def evaluate_on(dataset: ImageDataset) -> dict:  # vitlab.finetune evaluates the uncompiled model
        return evaluate(model, batches(dataset, 2 * batch_size, shuffle=False, device=device), len(dataset),
                        eval_transform, criterion, device, recipe, show_progress=False)

    # Warm-up (and compilation): a full batch and the epoch's last, smaller batch, so no shape is new in the epoch.
    start = time.perf_counter()
    train_on(train.take(2 * batch_size + len(train) % batch_size))
    evaluate_on(val.take(2 * batch_size + len(val) % (2 * batch_size)))
    sync(device)
    warmup_seconds = time.perf_counter() - start
    syncs = count_host_syncs(lambda: train_on(train.take(4 * batch_size)), device)  # compiled already: 4 steps

    # The notebook, half before and half after the epoch: both see the same machine state on average.
    notebook_steps = max(2, settings.count(2, 2, 10, 30) // 2)
    nb_images, nb_labels = cifar_like(batch_size * notebook_steps, settings.seed + 1)
    notebook_run, notebook_net = _notebook_trainer(settings, nb_images, nb_labels, batch_size)
    nb_eval_loader = notebook_loader(nb_images, nb_labels, batch_size, train=False, image_size=model.image_size)
    notebook_run(1)  # warm-up
    nb_train = [notebook_run(notebook_steps)]
    nb_eval = [notebook_eval_steps(notebook_net, nb_eval_loader, notebook_steps, device)]

    sync(device)
    start = time.perf_counter()
    trained = train_on(train)
    validated = evaluate_on(val)
    sync(device)
    epoch_seconds = time.perf_counter() - start

    # The test set (10,000 images at full size), evaluated as vitlab.finetune does at the end: throughput at scale.
    test_images, test_labels = cifar_like(total * CIFAR_TEST // (CIFAR_TRAIN + CIFAR_VAL), settings.seed + 2)
    tested = evaluate_on(as_dataset(test_images, test_labels).to(device))

    nb_train.append(notebook_run(notebook_steps))
    nb_eval.append(notebook_eval_steps(notebook_net, nb_eval_loader, notebook_steps, device))
    notebook_seconds = len(train) / statistics.mean(nb_train) + len(val) / statistics.mean(nb_eval)
    speedup = notebook_seconds / epoch_seconds
    full_size = total == CIFAR_TRAIN + CIFAR_VAL and settings.batch_size in (None, 64)
    on_h100 = settings.cuda and "H100" in torch.cuda.get_device_name(device)
    met = bool(epoch_seconds <= 30.0 and speedup >= 10.0) if full_size and on_h100 else None
    return row_result(
        "epoch", settings, notebook_seconds, epoch_seconds, "s/epoch", ratio=speedup,
        ratio_meaning="notebook / vitlab (time)", target=target, met=met, batch_size=batch_size,
        train_images=len(train), val_images=len(val), train_images_per_second=trained["images_per_second"],
        val_seconds=validated["seconds"], test_images=tested["count"], test_seconds=tested["seconds"],
        warmup_seconds=warmup_seconds, compiled=use_compile, host_syncs=syncs,
        notebook_train_images_per_second=nb_train, notebook_eval_images_per_second=nb_eval,
        notes=f"vitlab: {len(train)} train + {len(val)} val images, one real epoch ({trained['images_per_second']:.0f} "
        f"train img/s), compile {'on' if use_compile else 'off'} (warm-up {warmup_seconds:.0f} s, not counted); "
        f"test pass {tested['count']} images in {tested['seconds']:.1f} s (not in the epoch time); "
        f"notebook: {notebook_steps} steps before and after, epoch extrapolated from that throughput"
        + ("" if full_size else "; reduced size: the 30 s target does not apply")
        + (f"; host syncs in 4 steps after the warm-up: {syncs} (1 expected: the read at the end)"
           if syncs is not None else ""),
    )


BENCHES: dict[str, Callable[[Settings], dict]] = {
    "data_pipeline": bench_data_pipeline,
    "capture_overhead": bench_capture_overhead,
    "train_step": bench_train_step,
    "eval_throughput": bench_eval_throughput,
    "peak_memory": bench_peak_memory,
    "demo": bench_demo,
    "epoch": bench_epoch,
    "train_step_cpu_bf16": lambda settings: bench_train_step(settings, cpu_bf16=True),  # optional, not in ROWS
}


# ---------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3 (CUDA)' or 'Intel(R) Xeon(R) ... (CPU, 2 cores, 2 torch threads)'."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"{cpu_model()} (CPU, {usable_cores()} cores, {torch.get_num_threads()} torch threads)"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def describe_device(device: torch.device) -> dict:
    """The machine the numbers come from, for the JSON and the table's header."""
    info = {"name": device_name(device), "type": device.type, "cpu": cpu_model(), "cores": usable_cores(),
            "torch_threads": torch.get_num_threads()}
    with contextlib.suppress(OSError):
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        info["cpu_bf16"] = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = os.getloadavg()[0]
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    capability=f"{properties.major}.{properties.minor}", bf16=torch.cuda.is_bf16_supported())
    return info


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_table(results: list[dict]) -> str:
    """A plain-text table: row | baseline | vitlab | unit | ratio | target | met, then one note per row."""
    header = ("row", "baseline", "vitlab", "unit", "ratio", "target", "met")
    lines = []
    for r in results:
        if "error" in r:
            lines.append((r["row"], "error", "", "", "", r.get("target", ""), ""))
            continue
        if r.get("measured") is False:
            lines.append((r["row"], "not measured", "", "", "", r["target"], ""))
            continue
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        vitlab = _number(r["vitlab"])
        if r["row"] == "demo":
            vitlab += f" ({r['test_acc']:.1%})"
        lines.append((r["row"], _number(r["baseline"]), vitlab, r["unit"], ratio, r["target"], met))
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    out = [" | ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
           for line in [header, tuple("-" * w for w in widths), *lines]]
    notes = [f"  {r['row']}: {r['error'] if 'error' in r else r['notes']}" for r in results]
    return "\n".join(out + ["", "notes:", *notes])


def report(results: list[dict], settings: Settings, wall_seconds: float, device_info: dict, argv: list[str]) -> dict:
    """Everything the run measured, as one JSON-ready dict."""
    import torchvision

    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m vitlab.bench", *argv]),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": device_info,
        "load_average_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "settings": {k: str(v) if isinstance(v, torch.device) else v for k, v in asdict(settings).items()},
        "wall_seconds": wall_seconds,
        "rows": results,
    }


def write_json(path: str | os.PathLike, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vitlab.bench",
        description="Measure vitlab against the notebook's way (PIL per image, fp32, Adam), interleaved in one "
        "process, and print a table of medians, ratios and targets.",
        epilog="Rows: " + ", ".join(ROWS) + ". Targets are reported, never enforced: the exit code is 0 unless a "
        "row failed to run. Optional rows (only with --rows): " + ", ".join(OPTIONAL_ROWS) + ".",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="small repeat counts: about 3 minutes on a 2-core CPU")
    parser.add_argument("--json", metavar="PATH", help="also write every measurement, the device and versions here")
    parser.add_argument("--repeats", type=int, metavar="N", help="timed repeats per side (default: per row)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="one batch size for every row (default: per row)")
    parser.add_argument("--rows", metavar="A,B,...", help=f"only these rows (default: all of {', '.join(ROWS)})")
    parser.add_argument("--arch", default="vit_b_16", choices=("vit_b_16", "vit_tiny"),
                        help="the model of the timing rows (default: vit_b_16, the notebook's)")
    parser.add_argument("--epoch", action="store_true", help="run the full-epoch row (a GPU target)")
    parser.add_argument("--force-epoch", action="store_true", help="run the epoch row without CUDA too")
    parser.add_argument("--epoch-images", type=int, metavar="N",
                        help="train+val images of the epoch row (default: 50000, CIFAR-100's training set)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile in the epoch row (default: on CUDA only)")
    return parser


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("vitlab.bench: --device cuda, but PyTorch sees no CUDA GPU here. Use --device cpu.")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"vitlab.bench: --device {name} is not supported; use auto, cpu or cuda.")
    return device


def main(argv: list[str] | None = None) -> int:
    """Run the chosen rows, print the table, write the JSON. Returns 0, or 1 when a row failed to run."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    rows = ROWS if args.rows is None else tuple(r.strip() for r in args.rows.split(",") if r.strip())
    if unknown := [r for r in rows if r not in BENCHES]:
        print(f"vitlab.bench: unknown row(s) {', '.join(unknown)}. Choose from: {', '.join(ROWS + OPTIONAL_ROWS)}.",
              file=sys.stderr)
        return 2
    settings = Settings(device=pick_device(args.device), quick=args.quick, repeats=args.repeats,
                        batch_size=args.batch_size, arch=args.arch,
                        run_epoch=args.epoch or (args.rows is not None and "epoch" in rows),
                        force_epoch=args.force_epoch, epoch_images=args.epoch_images, compile=args.compile)
    device_info = describe_device(settings.device)
    print(f"vitlab.bench on {device_info['name']}, torch {torch.__version__}, load average "
          f"{device_info.get('load_average_1min', float('nan')):.1f}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    results = []
    for row in rows:
        print(f"  {row} ...", file=sys.stderr, end="", flush=True)
        row_start = time.perf_counter()
        try:
            result = BENCHES[row](settings)
        except Exception as error:  # one broken row must not hide the others' numbers
            result = {"row": row, "error": f"{type(error).__name__}: {error}", "device": device_info["name"]}
        result["seconds"] = time.perf_counter() - row_start
        results.append(result)
        print(f" {result['seconds']:.0f} s", file=sys.stderr, flush=True)
    data = report(results, settings, time.perf_counter() - started, device_info, argv)
    print(f"Device: {device_info['name']}; torch {data['torch']}; {data['timestamp']}")
    print(format_table(results))
    if args.json:
        print(f"JSON written to {write_json(args.json, data)}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
