"""Datasets as plain uint8 tensors: one dataset, its three splits, and batches drawn from it.

vitlab keeps each dataset as one uint8 tensor (CIFAR-100's 60,000 32x32 images are only 184 MB) instead of a
DataLoader of PIL images, so a whole dataset can live on the GPU and `batches` indexes it in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------------------------
# Datasets as tensors
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ImageDataset:
    """A whole dataset in memory: images uint8 (N, 3, H, W), labels int64 (N,), optional masks bool (N, H, W)."""

    images: Tensor  # uint8 (N, 3, H, W), 0..255, not normalised
    labels: Tensor  # int64 (N,), indices into `classes`
    classes: list[str]  # class names, index = label
    masks: Tensor | None = None  # bool (N, H, W): which pixels are the object (shapes: exact; photos: the silhouette)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Tensor) -> ImageDataset:
        """The images at `indices` (int64 (M,)), in that order, with their labels and masks."""
        masks = None if self.masks is None else self.masks[indices]  # (M, H, W)
        return ImageDataset(self.images[indices], self.labels[indices], self.classes, masks)  # (M, 3, H, W)

    def take(self, n: int) -> ImageDataset:
        """The first `n` images (all of them if there are fewer). Slices are views: nothing is copied."""
        masks = None if self.masks is None else self.masks[:n]
        return ImageDataset(self.images[:n], self.labels[:n], self.classes, masks)

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset on `device`: keep a whole dataset on the GPU and batches never cross the bus."""
        masks = None if self.masks is None else self.masks.to(device)
        return ImageDataset(self.images.to(device), self.labels.to(device), self.classes, masks)


@dataclass
class DataSplits:
    """The three splits of one dataset. `val` picks checkpoints and settings; `test` is looked at last."""

    name: str  # one of vitlab.data.DATASETS
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def image_size(self) -> int:
        """Height of the stored images (32 for CIFAR and shapes); BatchTransform resizes them for the model."""
        return self.train.images.shape[-2]


def seeded_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator: seeded randomness that leaves torch's global random state alone."""
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------


def batches(
    dataset: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images uint8 (b, 3, H, W), labels int64 (b,)) on `device`, each image exactly once.

    Args:
        dataset: the images to go through.
        batch_size: b; the last batch is smaller unless `drop_last`.
        shuffle: a fresh random order each call (torch.randperm with `generator`, a CPU generator).
        generator: makes the order reproducible; None uses torch's global generator.
        device: where the batches go. A dataset already there (`dataset.to(device)`) is indexed in place: no copy
            through the host.
        drop_last: skip a final batch smaller than `batch_size`.
    """
    n = len(dataset)
    where = dataset.images.device  # index the data where it lives
    if shuffle:
        # randperm runs on the CPU, so a CPU generator works; non_blocking: the copy does not wait for the GPU.
        order = torch.randperm(n, generator=generator).to(where, non_blocking=True)  # (N,)
    else:
        order = torch.arange(n, device=where)  # (N,)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]  # (b,)
        if drop_last and len(index) < batch_size:
            break
        images, labels = dataset.images[index], dataset.labels[index]  # (b, 3, H, W), (b,)
        # .to() hands back the same tensor when it is already on `device`, so on-device data is never copied.
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
