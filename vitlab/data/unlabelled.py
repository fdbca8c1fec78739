"""The images self-supervised pretraining draws each step (`vitlab.training.pretrain`): fresh fractals, or photos.

    source, probe = image_source("fashion", 100, 0)
    images, labels = source.draw(64, generator)     # uint8 (64, 3, 32, 32), int64 (64,)

Fractals are generated anew for every batch (`vitlab.data.fractals`), labelled with their IFS system. The photos are
the shipped Fashion-MNIST subset's 18,000 training photos (never its validation or test photos), each randomly
mirrored, and unlabelled: their label is 0, so no class loss can use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitlab.data.fractals import make_systems, render
from vitlab.data.load import load_dataset


@dataclass
class ImageSource:
    """Where each step's images come from: fresh fractals, or the shipped training photos."""

    systems: list | None = None  # the IFS systems, for --data fractals
    photos: torch.Tensor | None = None  # uint8 (N, 3, 32, 32), for --data fashion

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: uint8 images (B, 3, 32, 32) and labels (B,) (the fractal class; 0 for the unlabelled photos)."""
        if self.photos is None:
            return render(self.systems, batch_size, generator)
        index = torch.randint(len(self.photos), (batch_size,), generator=generator)  # (B,)
        mirror = torch.rand(batch_size, generator=generator) < 0.5  # (B,) a left-right flip is still a garment
        images = self.photos[index]  # (B, 3, 32, 32)
        images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
        return images, torch.zeros(batch_size, dtype=torch.int64)


def image_source(data: str, num_classes: int, system_seed: int) -> tuple[ImageSource, torch.Tensor]:
    """The training images for `data` ("fractals": `num_classes` IFS systems drawn from `system_seed`, or
    "fashion") and the probe images the structure is measured on (uint8 (250, 3, 32, 32)): shapes test images for
    fractals, the subset's validation photos for fashion."""
    if data == "fractals":
        return ImageSource(systems=make_systems(num_classes, system_seed)), load_dataset("shapes").test.images[:250]
    photos = load_dataset("fashion")
    return ImageSource(photos=photos.train.images), photos.val.images[:250]
