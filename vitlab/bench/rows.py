"""The notebook's way (`vitlab.bench.baseline`) against vitlab's step by step (data, training, evaluation, memory),
capture's cost, and the rows that run the fine-tuning job end to end (demo, transfer)."""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from vitlab.bench import measure
from vitlab.bench.baseline import images_per_second, notebook_eval_steps, notebook_loader, notebook_trainer
from vitlab.bench.measure import Settings, as_dataset, cifar_like
from vitlab.capture import capture
from vitlab.cli import flag_name
from vitlab.data import BatchTransform, batches
from vitlab.training import finetune

# transfer: all the demo's 18,000 training photos, and few labels (500). From scratch: every block at 3e-3, the best of
# 1e-3 and 3e-3 measured on the photos (83.7% and 84.8% after 5 epochs, 2,000 test photos, 2 cores).
VARIANTS = {"all photos, 5 epochs": {}, "500 photos, 10 epochs": {"subset": 500, "epochs": 10}}
FROM_SCRATCH = ["--pretrained", "none", "--trainable-blocks", "all", "--lr", "3e-3"]
FRONTIER_EPOCHS = (2, 3, 5, 8)  # the demo preset's accuracy against wall time, one run per epoch count
RESOLUTION_TARGETS = {160: ">= 1.8x", 112: ">= 3.5x"}  # the speed-up over 224 px; 112 px has 1/4 of the tokens


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

    sides = (lambda: images_per_second(loader, steps), lambda: len(data) / measure.timed(device, transform_all)[1])
    return measure.paired_row(
        "data_pipeline", settings, sides, settings.reps(5, 9), target=">= 4x", batch_size=batch_size, steps=steps,
        notes=f"resize to {size}, flip, rotation 10, normalise; notebook: PIL on the CPU; vitlab: on the {device.type}")


def bench_train_step(settings: Settings) -> dict:
    """The training loop, data included: the notebook's (fp32, PIL, Adam) against vitlab's, images/s."""
    batch_size, steps, repeats = settings.batch(8, 64), settings.count(2, 3, 10, 25), settings.reps(3, 5)
    images, labels = cifar_like(batch_size * steps, settings.seed)
    notebook, _ = notebook_trainer(settings, images, labels, batch_size)
    vitlab = measure.vitlab_trainer(settings, as_dataset(images, labels).to(settings.device), batch_size,
                                    total_steps=4 * steps * (repeats + 2))
    return measure.paired_row(  # the warm-up allocates Adam's state and primes the kernels
        "train_step", settings, (lambda: notebook(steps), lambda: vitlab(steps)), repeats, target=">= 1x",
        batch_size=batch_size, steps=steps, notes=f"{settings.arch}, random weights, last 3 blocks + head train; "
        f"vitlab: recipe 'default' (AdamW, cosine, smoothing, clipping), {'bf16' if settings.cuda else 'fp32'}")


def bench_eval_throughput(settings: Settings) -> dict:
    """Evaluation: the notebook's loop (PIL test transform, fp32, .item() per batch) against vitlab's `evaluate`."""
    device, size = settings.device, settings.image_size
    batch_size, steps = settings.batch(8, 128), settings.count(1, 2, 10, 20)  # steps: batches per timed repeat
    images, labels = cifar_like(batch_size * steps, settings.seed)
    training = measure.vitlab_training(settings, total_steps=1)  # one model for both sides: only the loops differ
    loader = notebook_loader(images, labels, batch_size, train=False, image_size=size)
    data, transform = as_dataset(images, labels).to(device), BatchTransform(size, train=False).to(device)

    def vitlab() -> float:
        source, model = batches(data, batch_size, shuffle=False, device=device), training.model
        metrics, seconds = measure.timed(device, lambda: training.evaluate(model, source, len(data), transform))
        return metrics["count"] / seconds

    return measure.paired_row(
        "eval_throughput", settings, (lambda: notebook_eval_steps(training.model, loader, steps, device), vitlab),
        settings.reps(3, 5), batch_size=batch_size, steps=steps, notes=f"{settings.arch}; notebook: "
        f"weights.transforms() per image, fp32; vitlab: BatchTransform eval, {'bf16' if settings.cuda else 'fp32'}")


def bench_resolution_step(settings: Settings, image_size: int, reference: int = 224) -> dict:
    """vitlab's training step (data transform included) at `image_size` px against `reference` px, images/s."""
    batch_size, steps, repeats = settings.batch(8, 64), settings.count(2, 3, 10, 25), settings.reps(3, 5)
    data = measure.random_dataset(batch_size * steps, settings)
    base, ours = (measure.vitlab_trainer(settings, data, batch_size, 4 * steps * (repeats + 2), image_size=size)
                  for size in (reference, image_size))
    return measure.paired_row(
        f"train_step_{image_size}", settings, (lambda: base(steps), lambda: ours(steps)), repeats,
        ratio_meaning=f"{image_size} px / {reference} px", target=RESOLUTION_TARGETS.get(image_size, "report"),
        batch_size=batch_size, steps=steps, image_size=image_size, reference_size=reference,
        notes=f"{settings.arch}, random weights, the last 3 blocks + head train; baseline: the same at {reference} px")


def capture_samples(arch: str, batch_size: int, forwards: int, repeats: int, device: str) -> dict:
    """Seconds per batch, interleaved: plain eval forwards, forwards under `capture`; and are the logits identical?"""
    settings = Settings(device=torch.device(device), arch=arch)
    model = measure.vitlab_training(settings, total_steps=1).model.eval()
    images = as_dataset(*cifar_like(batch_size, seed=0)).images.to(device)  # (B, 3, 32, 32) uint8
    inputs = BatchTransform(model.image_size, train=False).to(device)(images)  # (B, 3, S, S)

    def seconds(captured: bool) -> float:
        def run() -> None:
            for _ in range(forwards):
                with capture(model) if captured else contextlib.nullcontext() as cap:
                    model(inputs)
            assert not captured or len(cap.attentions) == len(model.encoder.layers)  # every block was recorded

        return measure.timed(settings.device, run)[1] / forwards

    with torch.no_grad():  # the warm-up is the check that capture changes nothing
        logits = model(inputs)
        with capture(model):
            identical = bool(torch.equal(logits, model(inputs)))
        plain, captured = measure.interleaved(lambda: seconds(False), lambda: seconds(True), repeats, warmup=0)
    return {"plain": plain, "captured": captured, "identical": identical}


def bench_capture_overhead(settings: Settings) -> dict:
    """An eval forward under `vitlab.capture` against the same forward without it, s/batch, in fresh processes: the
    plain forward's speed differs between processes by more than the effect, so the ratio is the median process's."""
    batch_size, processes = settings.batch(4, 64), settings.count(3, 5, 2, 3)
    arguments = [settings.arch, batch_size, settings.count(1, 1, 5, 10), settings.reps(5, 7), str(settings.device)]
    runs = [measure.in_fresh_process("vitlab.bench.rows", "capture_samples", arguments) for _ in range(processes)]
    ratios = [statistics.median(r["captured"]) / statistics.median(r["plain"]) for r in runs]
    return measure.row_result(
        "capture_overhead", settings, statistics.median(statistics.median(r["plain"]) for r in runs),
        statistics.median(statistics.median(r["captured"]) for r in runs), "s/batch", ratio=statistics.median(ratios),
        ratio_meaning="capture / plain (time), median of per-process ratios", target="<= 1.05x",
        batch_size=batch_size, process_ratios=ratios, logits_identical=all(r["identical"] for r in runs),
        samples_baseline=[t for r in runs for t in r["plain"]], samples_vitlab=[t for r in runs for t in r["captured"]],
        notes=f"{settings.arch}, eval, fp32; per-process ratios {', '.join(f'{x:.2f}x' for x in ratios)}")


def memory_child(side: str, arch: str, batch_size: int, steps: int, device: str) -> float:
    """In a fresh process: `steps` steps of one side's training; its peak memory (the CPU: the process's), MiB."""
    settings = Settings(device=torch.device(device), arch=arch)
    images, labels = cifar_like(batch_size * steps, settings.seed)
    run = notebook_trainer(settings, images, labels, batch_size)[0] if side == "notebook" else measure.vitlab_trainer(
        settings, as_dataset(images, labels).to(settings.device), batch_size, total_steps=100)
    run(steps)
    if settings.cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    if Path("/proc/self/status").is_file():  # Linux: VmHWM, as ru_maxrss keeps a parent's peak over fork and exec
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 2**10  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes


def bench_peak_memory(settings: Settings) -> dict:
    """Peak memory of the training step, each side in a fresh process of its own, the same batch size."""
    batch_size, steps = settings.batch(8, 64), 1 if settings.quick else 2  # Adam's state comes in the first step
    arguments = [settings.arch, batch_size, steps, str(settings.device)]
    base, ours = (measure.in_fresh_process("vitlab.bench.rows", "memory_child", [side, *arguments])
                  for side in ("notebook", "vitlab"))
    what = "torch.cuda.max_memory_allocated" if settings.cuda else "peak RSS of the whole process"
    return measure.row_result("peak_memory", settings, base, ours, "MiB", ratio=ours / base, batch_size=batch_size,
                              ratio_meaning="vitlab / notebook", steps=steps, notes=f"{settings.arch}, {what}")


def finetune_job(args: list[str], out: Path, fresh_process: bool = False) -> dict:
    """`python -m vitlab.finetune ARGS --quiet --out OUT`: summary.json and wall "seconds" (in a fresh process too)."""
    command = [*args, "--quiet", "--out", str(out)]
    code, seconds = measure.timed(torch.device("cpu"), lambda: measure.in_fresh_process(
        "vitlab.training.finetune", "main", [command]) if fresh_process else finetune.main(command))
    if code != 0:
        raise RuntimeError(f"python -m vitlab.finetune {' '.join(command)} exited with {code} (its message is above)")
    return {**json.loads((out / "summary.json").read_text()), "seconds": seconds}


def bench_demo(settings: Settings, frontier: tuple[int, ...] = ()) -> dict:
    """The offline demo end to end, in a fresh process: wall seconds (starting Python included) and test accuracy.
    With `frontier` (epoch counts), the demo_frontier row: the preset's accuracy against wall time, one run each."""
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-demo-") as folder:
        runs = {e: finetune_job(["--preset", "demo", "--device", settings.device.type, *settings.demo_args, *(
            ["--epochs", str(e)] if e else [])], Path(folder) / str(e), fresh_process=True) for e in frontier or [0]}
    if frontier:
        points = {str(e): {"test_acc": r["test_acc"], "seconds": round(r["seconds"], 1)} for e, r in runs.items()}
        return measure.row_result("demo_frontier", settings, None, max(r["test_acc"] for r in runs.values()),
                                  "test acc", frontier=points, notes="epochs: accuracy, wall s: " + ", ".join(
                                      f"{e}: {v['test_acc']:.1%} {v['seconds']:.0f} s" for e, v in points.items()))
    run = runs[0]
    return measure.row_result(
        "demo", settings, None, run["seconds"], "s", target=">= 90% test acc, <= 30 s (never < 87% or > 60 s)",
        met=run["test_acc"] >= 0.90 and run["seconds"] <= 30.0, test_acc=run["test_acc"],
        pointing_game=run.get("pointing_game"), attention_mass_ratio=run.get("attention_mass_ratio"),
        wall_seconds_in_process=run["wall_seconds"], floor_met=run["test_acc"] >= 0.87 and run["seconds"] <= 60.0,
        notes=f"{' '.join(['--preset', 'demo', *settings.demo_args])}; {run['wall_seconds']:.0f} s inside the run")


def bench_tensorboard(settings: Settings) -> dict:
    """TensorBoard's cost: the demo preset's wall seconds without and with its events, alternating, in this process."""
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-tensorboard-") as folder:
        runs = iter(range(1_000))  # a fresh run folder for every run
        def side(switch: str) -> Callable[[], float]:
            return lambda: finetune_job(["--preset", "demo", "--device", settings.device.type, switch,
                                         *settings.demo_args], Path(folder) / str(next(runs)))["seconds"]
        return measure.paired_row("tensorboard", settings, (side("--no-tensorboard"), side("--tensorboard")),
                                  settings.reps(3, 3), unit="s", ratio_meaning="with / without TensorBoard",
                                  target="<= 1.03x", notes="the demo preset, the same process")


def transfer_runs(seed: int, device: str, extra: dict, folder: Path) -> dict[str, dict[str, float]]:
    """The demo preset, its from-scratch twin at equal epochs, and the twin again at the preset's wall time (the epochs
    its measured seconds per epoch fit in), `extra` on all: {"pretrained" / "scratch" / "scratch_equal_time":
    test_acc, seconds (and epochs)}."""
    common = ["--preset", "demo", "--device", device, "--seed", str(seed),
              *(text for name, value in extra.items() for text in (flag_name(name), str(value)))]
    sides, results = [("pretrained", []), ("scratch", FROM_SCRATCH)], {}
    for side, flags in sides if seed % 2 == 0 else sides[::-1]:  # the order alternates from seed to seed
        run = finetune_job([*common, *flags], folder / f"{side}-{seed}")
        results[side] = {"test_acc": run["test_acc"], "seconds": run["seconds"], "epochs": run["epochs"]}
    per_epoch = results["scratch"]["seconds"] / results["scratch"]["epochs"]
    epochs = max(1, round(results["pretrained"]["seconds"] / per_epoch))
    run = finetune_job([*common, *FROM_SCRATCH, "--epochs", str(epochs)], folder / f"equal-time-{seed}")
    results["scratch_equal_time"] = {"test_acc": run["test_acc"], "seconds": run["seconds"], "epochs": epochs}
    return results


def bench_transfer(settings: Settings, variants: dict | None = None) -> dict:
    """Does the shipped base pay? The demo preset against the same model from scratch, per variant and seed (42...)."""
    variants, seeds = variants or VARIANTS, range(42, 42 + settings.reps(1, 3))
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-transfer-") as folder:
        table = {name: {seed: transfer_runs(seed, settings.device.type, extra, Path(folder) / str(index))
                        for seed in seeds} for index, (name, extra) in enumerate(variants.items())}
    wins = {name: {rival: sum(r[s]["pretrained"]["test_acc"] > r[s][rival]["test_acc"] for s in seeds)
                   for rival in ("scratch", "scratch_equal_time")} for name, r in table.items()}
    first = table[next(iter(table))]
    return measure.row_result(
        "transfer", settings, statistics.mean(first[s]["scratch"]["test_acc"] for s in seeds),
        statistics.mean(first[s]["pretrained"]["test_acc"] for s in seeds), "test acc",
        target="the pretrained base beats from-scratch on every seed, at equal epochs and at equal wall time",
        met=all(n == len(seeds) for w in wins.values() for n in w.values()),
        table={name: {str(s): r[s] for s in seeds} for name, r in table.items()}, wins=wins,
        notes=f"the demo preset vs {' '.join(FROM_SCRATCH)}; seeds (of {len(seeds)}) the base won: {wins}")
