"""The peak_memory row: the training step's peak memory, each side measured in a fresh process of its own."""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch

from vitlab.bench.measure import Settings, cifar_like, in_fresh_process, row_result
from vitlab.bench.sides import notebook_trainer, vitlab_trainer


def memory_child(side: str, arch: str, batch_size: int, steps: int, device: str, seed: int = 0) -> dict:
    """Run in a fresh process: build one side's training, run `steps` steps, report the peak memory in MiB.

    CPU: peak resident set size of the whole process (so a fresh process is needed: it holds nothing else).
    CUDA: `torch.cuda.max_memory_allocated`.
    """
    settings = Settings(device=torch.device(device), arch=arch, seed=seed)
    images, labels = cifar_like(batch_size * steps, seed)
    if side == "notebook":
        run, _ = notebook_trainer(settings, images, labels, batch_size)
    else:
        run, _ = vitlab_trainer(settings, images, labels, batch_size, total_steps=100)
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
    arguments = [side, settings.arch, batch_size, steps, str(settings.device), settings.seed]
    return in_fresh_process("vitlab.bench.memory", "memory_child", arguments, f"{side} memory run")


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
