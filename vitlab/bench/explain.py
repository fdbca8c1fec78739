"""The explain row: every relevance method and every test of a map for one image (`explain_report`), on the demo model
and on `--arch` with random weights; and which methods find the shortcut model's marker (a known answer).

The large model is measured in bfloat16 (`precision="bfloat16"`, the setting that makes it practical on a CPU with
bfloat16 instructions), and once more in float32 unless `--quick`; the demo model in float32, its default.

Beside the large model's seconds the row measures what one of its batched bfloat16 forward passes costs here, per
image, and states the report in those units (`large_forward_ms`, `large_in_forwards`): the seconds depend on the
machine (2 cores of one "AMD EPYC" can be twice as fast as 2 of another), the report's work does not."""

from __future__ import annotations

import statistics

import torch

from vitlab.analysis.faithfulness import FORWARD_BATCH
from vitlab.analysis.report import Precision, explain_report
from vitlab.bench.measure import Settings, row_result, timed
from vitlab.data import BatchTransform
from vitlab.model import build_model
from vitlab.teaching.shortcut import hits_by_method, train_shortcut_model
from vitlab.training.demo import load_demo_model


def report_seconds(model: torch.nn.Module, image: torch.Tensor, repeats: int,
                   precision: Precision = "float32") -> tuple[list[float], dict[str, float]]:
    """The wall seconds of each of `repeats` runs of `explain_report(model, image, precision=...)`, in order, and the
    last run's parts. Every run is kept: on a shared machine one report's time moves by several percent from run to
    run, and a reader should see by how much."""
    runs = [timed(image.device, lambda: explain_report(model, image, precision=precision)) for _ in range(repeats)]
    return [seconds for _, seconds in runs], runs[-1][0].seconds


def forward_ms_per_image(model: torch.nn.Module, device: torch.device, repeats: int = 3) -> float:
    """Milliseconds per image of one bfloat16 forward pass of FORWARD_BATCH noise images without gradients, the
    median of `repeats` after a warm-up pass: PyTorch's own inference pass of `model`, at the batch and precision of
    most of the report's passes (which run inside `borrowed`, with attention as plain matrix products)."""
    images = torch.randn(FORWARD_BATCH, 3, model.image_size, model.image_size, device=device)  # (16, 3, S, S)

    def forward() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return model(images)  # (16, classes)

    forward()
    seconds = [timed(device, forward)[1] for _ in range(repeats)]
    return statistics.median(seconds) / FORWARD_BATCH * 1000


def bench_explain(settings: Settings) -> dict:
    """Median seconds of the report on the demo model (after a warm-up) and on `settings.arch`; the marker shares."""
    demo, splits = load_demo_model()
    image = BatchTransform(demo.image_size, train=False)(splits.test.images[:1]).to(settings.device)  # (1, 3, S, S)
    explain_report(demo.to(settings.device), image)
    torch.manual_seed(settings.seed)
    large = build_model(settings.arch, 100, pretrained=False, progress=False).eval().to(settings.device)
    noise = torch.randn(1, 3, large.image_size, large.image_size, device=settings.device)  # (1, 3, S, S)
    demo_samples, demo_parts = report_seconds(demo, image, settings.reps(3, 5))
    large_samples, large_parts = report_seconds(large, noise, settings.reps(1, 3), precision="bfloat16")
    demo_s, large_s = statistics.median(demo_samples), statistics.median(large_samples)
    forward_ms = forward_ms_per_image(large, settings.device)
    in_forwards = large_s / forward_ms * 1000  # the report's median in those passes of one image
    float32_s = None if settings.quick else report_seconds(large, noise, 1)[0][0]
    shares = {name: top4 for name, (_, top4) in hits_by_method(train_shortcut_model(), device=settings.device).items()}
    float32_note = "" if float32_s is None else f" ({float32_s:.1f} s in float32)"
    return row_result(
        "explain", settings, None, demo_s, "s", target=f"demo <= 2 s, {settings.arch} <= 60 s, a method >= 95% on "
        "the shortcut", met=demo_s <= 2 and large_s <= 60 and max(shares.values()) >= 0.95, large_seconds=large_s,
        large_precision="bfloat16", large_float32_seconds=float32_s, demo_parts=demo_parts, large_parts=large_parts,
        demo_samples=demo_samples, large_samples=large_samples, large_forward_ms=forward_ms,
        large_in_forwards=in_forwards, marker_first=shares,
        notes=f"one image, every method and test, medians: demo {demo_s:.2f} s, {settings.arch} {large_s:.1f} s in "
        f"bfloat16 (runs {', '.join(f'{s:.1f}' for s in large_samples)}; as long as "
        f"{in_forwards:.0f} batched forward passes of one image at {forward_ms:.0f} ms here)"
        f"{float32_note}; the marker's 4 patches first on the shortcut: "
        + ", ".join(f"{name} {share:.0%}" for name, share in shares.items()))
