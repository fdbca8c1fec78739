"""What a run shows while it trains: TensorBoard events and metrics.csv, written into its run folder every epoch.

    log = RunLog(out, watched, tensorboard=True)     # watched: 8 fixed validation images, uint8 (8, 3, H, W)
    log.epoch(history, model, transform)             # after each epoch; history: one record per epoch so far
    log.close()

`tensorboard --logdir runs` then shows, per run, the losses, accuracies, learning rate and images/s, and under
"attention" the class token's last-block attention and the rollout of the same 8 validation images each epoch, so
the maps can be watched changing while the last blocks train. metrics.csv holds one row per epoch, rewritten whole
and atomically each time (a resumed run's rows are its history's, never a duplicate).

TensorBoard's writer is imported only when events are written (`--no-tensorboard` skips it).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib import colormaps
from torch import Tensor
from torchvision.models import VisionTransformer
from torchvision.utils import make_grid

from vitlab.analysis.attention import cls_attention, rollout
from vitlab.atomic import atomic_write
from vitlab.capture import capture
from vitlab.data import BatchTransform

METRICS_CSV = "metrics.csv"
CSV_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_second")
WATCHED_IMAGES = 8  # validation images whose attention is drawn each epoch
TILE_PIXELS = 96  # each watched image is drawn this large: 32-px images would be specks in TensorBoard


class RunLog:
    """The per-epoch log of one run: metrics.csv always, TensorBoard events unless `tensorboard` is False."""

    def __init__(self, out: Path, watched: Tensor, tensorboard: bool = True) -> None:
        self.out = out
        self.watched = watched[:WATCHED_IMAGES]  # uint8 (8, 3, H, W), the same images every epoch
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out))

    def epoch(self, history: Sequence[dict], model: VisionTransformer, transform: BatchTransform) -> None:
        """Log the last record of `history` (one dict per epoch, as history.json holds it; "lr" is the head's)."""
        record = history[-1]
        write_metrics_csv(self.out / METRICS_CSV, history)
        if self.writer is None:
            return
        step = record["epoch"]
        for tag, key in (("loss/train", "train_loss"), ("loss/val", "val_loss"), ("accuracy/train", "train_acc"),
                         ("accuracy/val", "val_acc"), ("learning_rate", "lr"),
                         ("images_per_second", "images_per_second")):
            self.writer.add_scalar(tag, record[key], step)
        class_token, flow = watched_maps(model, transform, self.watched)
        self.writer.add_image("attention/class_token_last_block", overlay_grid(self.watched, class_token), step)
        self.writer.add_image("attention/rollout", overlay_grid(self.watched, flow), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_metrics_csv(path: Path, records: Sequence[dict]) -> Path:
    """metrics.csv: one row per epoch with CSV_COLUMNS (a value a record lacks is left empty)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: record.get(column, "") for column in CSV_COLUMNS} for record in records)
    data = text.getvalue().encode()
    return atomic_write(path, lambda file: file.write(data))


@torch.no_grad()
def watched_maps(model: VisionTransformer, transform: BatchTransform, images: Tensor) -> tuple[Tensor, Tensor]:
    """The last block's class-token attention (heads averaged) and the rollout of `images` (uint8 (N, 3, H, W)).

    Returns two (N, grid, grid) maps on the CPU. The model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with capture(model) as captured:
        model(transform(images.to(device)))
    model.train(was_training)
    geometry = captured.geometry
    class_token = cls_attention(captured.attentions[-1], geometry).mean(dim=1)  # (N, heads, g, g) -> (N, g, g)
    flow = rollout(captured.attentions).reshape(-1, geometry.grid_size, geometry.grid_size)  # (N, P) -> (N, g, g)
    return class_token.float().cpu(), flow.float().cpu()


def overlay_grid(images: Tensor, maps: Tensor, size: int = TILE_PIXELS) -> Tensor:
    """Each map over its image as one picture row: uint8 images (N, 3, H, W), maps (N, g, g) -> (3, H', W') in [0, 1].

    Each map is scaled to its own range, coloured with matplotlib's inferno and blended half and half with the image.
    """
    pictures = F.interpolate(images.float().cpu() / 255, size=(size, size), mode="bilinear", align_corners=False)
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    scaled = (maps - low) / (high - low).clamp(min=1e-12)  # (N, g, g) in [0, 1]
    heat = F.interpolate(scaled[:, None], size=(size, size), mode="nearest")[:, 0]  # (N, S, S): patch-exact
    palette = torch.tensor(colormaps["inferno"](torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)
    coloured = palette[(heat * 255).round().long()].permute(0, 3, 1, 2)  # (N, S, S, 3) -> (N, 3, S, S)
    blended = 0.5 * pictures.clamp(0, 1) + 0.5 * coloured
    return make_grid(blended, nrow=len(images), padding=2, pad_value=1.0)  # (3, S + 4, N * (S + 2) + 2)
