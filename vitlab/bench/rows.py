"""The rows that time steps of work, the notebook's way (`vitlab.bench.baseline`) against vitlab's, or vitlab's
forward without and with capturing attention."""

from __future__ import annotations

import contextlib
import resource
import statistics
from pathlib import Path

import torch

from vitlab.bench import measure
from vitlab.bench.baseline import notebook_eval_steps, notebook_load_batches, notebook_loader
from vitlab.bench.measure import Settings, as_dataset, cifar_like, paired_row, row_result, timed
from vitlab.bench.sides import images_per_second, notebook_trainer, vitlab_trainer, vitlab_training
from vitlab.capture import capture
from vitlab.data import BatchTransform, batches


def bench_data_pipeline(settings: Settings) -> dict:
    """Training-time preprocessing alone: the notebook's PIL DataLoader against BatchTransform, images/s."""
    device, size = settings.device, settings.image_size
    batch_size, steps = settings.batch(64, 256), settings.count(2, 4, 10, 20)  # steps: batches per timed repeat
    images, labels = cifar_like(batch_size * steps, settings.seed)
    loader = notebook_loader(images, labels, batch_size, train=True, image_size=size)
    data = as_dataset(images, labels).to(device)  # on a GPU the dataset lives there, as in vitlab.training.finetune
    transform = BatchTransform(size, train=True).to(device)

    def transform_all() -> None:
        for images_batch, _ in batches(data, batch_size, shuffle=True, device=device):
            transform(images_batch)  # (B, 3, 32, 32) uint8 -> (B, 3, S, S) normalised float

    sides = (lambda: notebook_load_batches(loader, steps), lambda: len(data) / timed(device, transform_all)[1])
    return paired_row("data_pipeline", settings, sides, settings.reps(5, 9), target=">= 4x", batch_size=batch_size,
                      steps=steps, notes=f"resize to {size}, flip, rotation 10, normalise; notebook: PIL per image "
                      f"on the CPU; vitlab: BatchTransform on the {device.type}, the data resident there")


def bench_train_step(settings: Settings) -> dict:
    """The training loop, data included: the notebook's (fp32, PIL, Adam) against vitlab's, images/s."""
    batch_size, steps, repeats = settings.batch(8, 64), settings.count(2, 3, 10, 25), settings.reps(3, 5)
    images, labels = cifar_like(batch_size * steps, settings.seed)
    notebook, _ = notebook_trainer(settings, images, labels, batch_size)
    vitlab = vitlab_trainer(settings, as_dataset(images, labels).to(settings.device), batch_size,
                            total_steps=4 * steps * (repeats + 2))
    notebook(1)  # warm-up, one step each: allocates Adam's state, primes the kernels
    vitlab(1)
    return paired_row(
        "train_step", settings, (lambda: notebook(steps), lambda: vitlab(steps)), repeats, warmup=0, target=">= 1x",
        batch_size=batch_size, steps=steps, notes=f"{settings.arch}, random weights, last 3 blocks + head train; "
        f"vitlab: recipe 'default' (AdamW, warmup + cosine, label smoothing, clipping), "
        f"{'bf16' if settings.cuda else 'fp32 (bf16 on CUDA only)'}",
    )


def bench_eval_throughput(settings: Settings) -> dict:
    """Evaluation: the notebook's loop (PIL test transform, fp32, .item() per batch) against vitlab's `evaluate`."""
    device = settings.device
    batch_size, steps = settings.batch(8, 128), settings.count(1, 2, 10, 20)  # steps: batches per timed repeat
    images, labels = cifar_like(batch_size * steps, settings.seed)
    training = vitlab_training(settings, total_steps=1)  # one model for both sides: only the loops differ
    loader = notebook_loader(images, labels, batch_size, train=False, image_size=settings.image_size)
    data, transform = as_dataset(images, labels).to(device), BatchTransform(settings.image_size, train=False).to(device)

    def vitlab() -> float:
        source = batches(data, batch_size, shuffle=False, device=device)
        return images_per_second(device, lambda: training.evaluate(training.model, source, len(data), transform))

    return paired_row(
        "eval_throughput", settings, (lambda: notebook_eval_steps(training.model, loader, steps, device), vitlab),
        settings.reps(3, 5), batch_size=batch_size, steps=steps, notes=f"{settings.arch}; notebook: "
        f"weights.transforms() per image, fp32; vitlab: BatchTransform eval, {'bf16' if settings.cuda else 'fp32'}",
    )


def capture_samples(arch: str, batch_size: int, forwards: int, repeats: int, device: str) -> dict:
    """In this process, interleaved: seconds per batch of plain eval forwards ("plain") and of forwards under
    `capture` ("captured"), and whether capturing left the logits "identical"."""
    settings = Settings(device=torch.device(device), arch=arch)
    model = vitlab_training(settings, total_steps=1).model.eval()
    images = as_dataset(*cifar_like(batch_size, seed=0)).images.to(device)  # (B, 3, 32, 32) uint8
    inputs = BatchTransform(model.image_size, train=False).to(device)(images)  # (B, 3, S, S)

    def seconds(captured: bool) -> float:
        def run() -> None:
            for _ in range(forwards):
                with capture(model) if captured else contextlib.nullcontext() as cap:
                    model(inputs)
            assert not captured or len(cap.attentions) == len(model.encoder.layers)  # every block was recorded

        return timed(settings.device, run)[1] / forwards

    with torch.no_grad():  # the warm-up is the check that capture changes nothing
        logits = model(inputs)
        with capture(model):
            identical = bool(torch.equal(logits, model(inputs)))
        plain, captured = measure.interleaved(lambda: seconds(False), lambda: seconds(True), repeats, warmup=0)
    return {"plain": plain, "captured": captured, "identical": identical}


def bench_capture_overhead(settings: Settings) -> dict:
    """An eval forward under `vitlab.capture` against the same forward without it, seconds per batch, in several fresh
    processes: on a CPU the plain forward's speed differs from one process to the next by more than the effect (0.53
    to 0.60 s for one ViT-B/16 batch), so one process is one draw, and the ratio is the median process's."""
    batch_size, processes = settings.batch(4, 64), settings.count(3, 5, 2, 3)
    arguments = [settings.arch, batch_size, settings.count(1, 1, 5, 10), settings.reps(5, 7), str(settings.device)]
    runs = [measure.in_fresh_process("vitlab.bench.rows", "capture_samples", arguments) for _ in range(processes)]
    ratios = [statistics.median(r["captured"]) / statistics.median(r["plain"]) for r in runs]
    identical = all(r["identical"] for r in runs)
    return row_result(
        "capture_overhead", settings, statistics.median(statistics.median(r["plain"]) for r in runs),
        statistics.median(statistics.median(r["captured"]) for r in runs), "s/batch", ratio=statistics.median(ratios),
        ratio_meaning="capture / plain (time), median of per-process ratios", target="<= 1.05x",
        batch_size=batch_size, process_ratios=ratios, logits_identical=identical,
        samples_baseline=[t for r in runs for t in r["plain"]], samples_vitlab=[t for r in runs for t in r["captured"]],
        notes=f"{settings.arch}, eval, no_grad, fp32; per-process ratios {', '.join(f'{x:.2f}x' for x in ratios)}; "
        f"logits identical with and without capture: {identical}",
    )


def memory_child(side: str, arch: str, batch_size: int, steps: int, device: str) -> float:
    """In a fresh process: `steps` steps of one side's training; its peak memory, MiB. CUDA: max_memory_allocated;
    the CPU: the process's peak resident set, VmHWM (`ru_maxrss` is a parent's on Linux after `fork` and `exec`)."""
    settings = Settings(device=torch.device(device), arch=arch)
    images, labels = cifar_like(batch_size * steps, settings.seed)
    if side == "notebook":
        notebook_trainer(settings, images, labels, batch_size)[0](steps)
    else:
        vitlab_trainer(settings, as_dataset(images, labels).to(settings.device), batch_size, total_steps=100)(steps)
    if settings.cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    if Path("/proc/self/status").is_file():  # Linux
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 2**10  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes


def bench_peak_memory(settings: Settings) -> dict:
    """Peak memory of the training step, each side in a fresh process of its own, the same batch size."""
    batch_size, steps = settings.batch(8, 64), 1 if settings.quick else 2  # Adam's state comes in the first step
    base, ours = (measure.in_fresh_process("vitlab.bench.rows", "memory_child", [side, settings.arch, batch_size, steps,
                                                                        str(settings.device)])
                  for side in ("notebook", "vitlab"))
    what = "torch.cuda.max_memory_allocated" if settings.cuda else "peak RSS of the whole process"
    return row_result("peak_memory", settings, base, ours, "MiB", ratio=ours / base, ratio_meaning="vitlab / notebook",
                      batch_size=batch_size, steps=steps, notes=f"{settings.arch}, {what}")
