"""The optional row `compile`: what `torch.compile` costs and gives on vitlab's training step (`--compile`)."""

from __future__ import annotations

import statistics

import torch
from torch import nn

from vitlab.bench.measure import Settings, as_dataset, cifar_like, interleaved, row_result, timed
from vitlab.bench.sides import vitlab_training
from vitlab.data import BatchTransform, batches


def bench_compile(settings: Settings) -> dict:
    """vitlab's training steps eager against `torch.compile`d (as `vitlab.training.finetune --compile` wraps the model).

    Reports the first compiled call's seconds (the compile of forward and backward, plus its steps) and then the
    median seconds per step of each side, interleaved, on the same model and data: compiled / eager (lower is
    better). The optimizer step is not compiled, as in the job.
    """
    device = settings.device
    batch_size = settings.batch(8, 64)
    steps = settings.count(2, 4, 10, 25)  # optimisation steps per timed repeat
    repeats = settings.reps(3, 5)
    training = vitlab_training(settings, total_steps=steps * (2 * repeats + 4))
    model = training.model
    compiled = torch.compile(model)  # shares the model's parameters: both sides train the same weights
    transform = BatchTransform(model.image_size, train=True).to(device)
    images, labels = cifar_like(batch_size * steps, settings.seed)  # whole batches only: one shape, one compile
    data = as_dataset(images, labels).to(device)

    def seconds_per_step(module: nn.Module) -> float:
        source = batches(data, batch_size, shuffle=True, device=device)
        _, seconds = timed(device, lambda: training.train(module, source, len(data), transform))
        return seconds / steps

    first_call = seconds_per_step(compiled) * steps  # compiles forward and backward, then runs `steps` steps
    eager, fast = interleaved(lambda: seconds_per_step(model), lambda: seconds_per_step(compiled), repeats)
    base, ours = statistics.median(eager), statistics.median(fast)
    where = "bf16 autocast, fused AdamW" if settings.cuda else "fp32, AdamW unfused (the job's CPU settings)"
    return row_result(
        "compile", settings, base, ours, "s/step", ratio=ours / base,
        ratio_meaning="compiled / eager (seconds per step, lower is better)", target="report", met=None,
        samples_baseline=eager, samples_vitlab=fast, compile_seconds=first_call, batch_size=batch_size,
        steps=steps, notes=f"{settings.arch}, random weights, last 3 blocks + head train, batch {batch_size}, "
        f"{steps} steps per repeat, recipe 'default' ({where}); baseline: eager, vitlab: torch.compile (inductor); "
        f"first compiled call (compile + {steps} steps) {first_call:.1f} s, not in the medians",
    )
