"""The benchmark rows that compare vitlab with the notebook's way (`vitlab.bench.baseline`) on any device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vitlab.bench.baseline import notebook_eval_steps, notebook_load_batches, notebook_loader
from vitlab.bench.machine import describe_device
from vitlab.bench.measure import (
    Settings,
    as_dataset,
    cifar_like,
    count_host_syncs,
    not_measured,
    row_result,
    throughput_row,
    timed,
)
from vitlab.bench.sides import input_size, notebook_trainer, vitlab_model, vitlab_trainer
from vitlab.data import BatchTransform, batches
from vitlab.training.train import RECIPES, evaluate, make_criterion

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
    data = as_dataset(images, labels).to(device)  # on a GPU the dataset lives there, as in vitlab.training.finetune
    transform = BatchTransform(size, train=True).to(device)

    def transform_all() -> int:
        count = 0
        for images_batch, labels_batch in batches(data, batch_size, shuffle=True, device=device):
            transform(images_batch)  # (B, 3, 32, 32) uint8 -> (B, 3, S, S) normalised float
            count += labels_batch.shape[0]
        return count

    def vitlab() -> float:
        count, seconds = timed(device, transform_all)
        return count / seconds

    where = "on the GPU, dataset resident there" if settings.cuda else "on the CPU"
    return throughput_row(
        "data_pipeline", settings, (lambda: notebook_load_batches(loader, steps), vitlab), settings.reps(5, 9),
        at_least=4.0, target=">= 4x", batch_size=batch_size, steps=steps,
        notes=f"resize to {size}, flip, rotation 10, normalise; notebook: PIL per image, DataLoader(num_workers=0) "
        f"on the CPU; vitlab: BatchTransform {where}",
    )


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
    notebook_run, _ = notebook_trainer(settings, images, labels, batch_size)
    vitlab_run, _ = vitlab_trainer(settings, images, labels, batch_size, total_steps=4 * steps * (repeats + 2),
                                    cpu_bf16=cpu_bf16)

    notebook_run(1)  # warm-up, one step each: allocates Adam's state, primes the kernels
    vitlab_run(1)
    syncs = count_host_syncs(lambda: vitlab_run(steps), device)  # CUDA only; None (and nothing run) elsewhere
    if settings.cuda:
        precision = "bf16 autocast" if RECIPES["default"].bf16_on_cuda else "fp32"
    elif cpu_bf16:
        flags = describe_device(device).get("cpu_bf16") or ["no bf16 instructions"]
        precision = f"CPU bf16 autocast, NOT what vitlab.training.train does today (CPU: {', '.join(flags)})"
    else:
        precision = "fp32 (vitlab's recipe uses bf16 on CUDA only)"
    notes = (f"{settings.arch}, random weights, last 3 blocks + head train, batch {batch_size}, {steps} steps per "
             f"repeat; vitlab: recipe 'default' (AdamW{', fused' if settings.cuda else ''}, warmup+cosine, label "
             f"smoothing, clipping), {precision}")
    if syncs is not None:
        notes += (f"; host syncs in {steps} vitlab steps: {syncs} (expected: train_one_epoch reads its metrics "
                  f"every 25 steps and at the end, never inside a step)")
    return throughput_row(
        row, settings, (lambda: notebook_run(steps), lambda: vitlab_run(steps)), repeats, warmup=0,
        at_least=None if cpu_bf16 else 1.0, target="report" if cpu_bf16 else ">= 1x",
        batch_size=batch_size, steps=steps, host_syncs=syncs, notes=notes,
    )


def bench_eval_throughput(settings: Settings) -> dict:
    """Evaluation: the notebook's loop (PIL test transform, fp32, .item() per batch) against vitlab's `evaluate`."""
    device = settings.device
    batch_size = settings.batch(8, 128)
    steps = settings.count(1, 2, 10, 20)  # batches per timed repeat
    images, labels = cifar_like(batch_size * steps, settings.seed)
    model = vitlab_model(settings).to(device)  # one model for both sides: only the loops differ
    size = model.image_size
    loader = notebook_loader(images, labels, batch_size, train=False, image_size=size)
    data = as_dataset(images, labels).to(device)
    transform = BatchTransform(size, train=False).to(device)
    recipe = RECIPES["default"]
    criterion = make_criterion(recipe)

    def evaluate_all() -> dict:
        return evaluate(model, batches(data, batch_size, shuffle=False, device=device), len(data), transform,
                        criterion, device, recipe, show_progress=False)

    def vitlab() -> float:
        result, seconds = timed(device, evaluate_all)
        return result["count"] / seconds

    precision = "bf16 autocast" if settings.cuda else "fp32"
    return throughput_row(
        "eval_throughput", settings, (lambda: notebook_eval_steps(model, loader, steps, device), vitlab),
        settings.reps(3, 5), batch_size=batch_size, steps=steps,
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
        "demo", settings, None, wall, "s", ratio=None, ratio_meaning="", target=">= 97% test acc, <= 30 s",
        met=bool(accuracy >= 0.97 and wall <= 30.0), test_acc=accuracy,
        pointing_game=summary.get("pointing_game"), attention_mass_ratio=summary.get("attention_mass_ratio"),
        wall_seconds_in_process=summary.get("wall_seconds"),
        notes=f"python -m vitlab.finetune --preset demo{shrunk}: test acc {accuracy:.1%}, pointing game "
        f"{summary.get('pointing_game', float('nan')):.2f}, attention mass ratio "
        f"{summary.get('attention_mass_ratio', float('nan')):.2f}; wall time includes starting Python and torch "
        f"({summary.get('wall_seconds', float('nan')):.0f} s inside the run)",
    )
