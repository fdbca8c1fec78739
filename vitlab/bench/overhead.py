"""The capture_overhead row: an eval forward under `vitlab.capture` against the same forward without it."""

from __future__ import annotations

import statistics

import torch

from vitlab.bench.measure import (
    Settings,
    as_dataset,
    check,
    cifar_like,
    in_fresh_process,
    interleaved,
    row_result,
    timed,
)
from vitlab.bench.sides import vitlab_model
from vitlab.capture import Captured, capture
from vitlab.data import BatchTransform


def capture_samples(arch: str, batch_size: int, forwards: int, repeats: int, device: str, seed: int = 0) -> dict:
    """Time plain eval forwards against forwards under `capture`, interleaved, in this process.

    Returns {"plain": [s/batch ...], "captured": [s/batch ...], "identical": whether the logits were equal}.
    """
    settings = Settings(device=torch.device(device), arch=arch, seed=seed)
    model = vitlab_model(settings).to(settings.device).eval()
    images, labels = cifar_like(batch_size, seed)
    inputs = BatchTransform(model.image_size, train=False).to(device)(as_dataset(images, labels).images.to(device))

    def forward_plain() -> None:
        for _ in range(forwards):
            model(inputs)

    def forward_captured() -> Captured:
        for _ in range(forwards):
            with capture(model) as cap:
                model(inputs)
        return cap

    @torch.no_grad()
    def plain() -> float:
        return timed(settings.device, forward_plain)[1] / forwards

    @torch.no_grad()
    def captured() -> float:
        cap, seconds = timed(settings.device, forward_captured)
        assert len(cap.attentions) == len(model.encoder.layers)  # the hooks really recorded every block
        return seconds / forwards

    with torch.no_grad():  # the warm-up, and a check that capture changes nothing
        logits_plain = model(inputs)
        with capture(model):
            logits_captured = model(inputs)
    a, b = interleaved(plain, captured, repeats, warmup=0)
    return {"plain": a, "captured": b, "identical": bool(torch.equal(logits_plain, logits_captured))}


def bench_capture_overhead(settings: Settings) -> dict:
    """An eval forward under `vitlab.capture` against the same forward without it, seconds per batch.

    Measured in several fresh processes, each interleaved: on a CPU the plain forward's speed differs from one
    process to the next by several percent (measured: 0.53 to 0.60 s for the same ViT-B/16 batch), more than the
    effect being measured, so one process is one draw. The ratio reported is the median of the per-process ratios.
    """
    batch_size = settings.batch(4, 64)
    forwards = settings.count(1, 1, 5, 10)  # forwards per timed repeat
    processes = settings.count(3, 5, 2, 3)
    arguments = [settings.arch, batch_size, forwards, settings.reps(5, 7), str(settings.device), settings.seed]
    runs = [in_fresh_process("vitlab.bench.overhead", "capture_samples", arguments, "capture measurement")
            for _ in range(processes)]
    ratios = [statistics.median(r["captured"]) / statistics.median(r["plain"]) for r in runs]
    base = statistics.median(statistics.median(r["plain"]) for r in runs)
    ours = statistics.median(statistics.median(r["captured"]) for r in runs)
    ratio = statistics.median(ratios)
    identical = all(r["identical"] for r in runs)
    return row_result(
        "capture_overhead", settings, base, ours, "s/batch", ratio=ratio,
        ratio_meaning="capture / plain (time), median of per-process ratios", target="<= 1.05x",
        met=check(ratio, "<=", 1.05), batch_size=batch_size, process_ratios=ratios,
        samples_baseline=[t for r in runs for t in r["plain"]], samples_vitlab=[t for r in runs for t in r["captured"]],
        logits_identical=identical,
        notes=f"{settings.arch}, eval, torch.no_grad, fp32, batch {batch_size}; {processes} fresh processes, "
        f"per-process ratios {', '.join(f'{x:.2f}x' for x in ratios)}; logits identical with and without capture: "
        f"{identical}",
    )
