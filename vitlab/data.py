"""Datasets as plain uint8 tensors, and a batched, on-device transform that turns them into ViT inputs.

The notebook pushed every image through PIL transforms in a DataLoader, one image at a time, on the CPU. vitlab keeps
each dataset as one uint8 tensor (CIFAR-100's 60,000 32x32 images are only 184 MB) and does resize, flip, rotation
and ImageNet normalisation on a whole batch at once, on whatever device the batch is on:

    splits = load_dataset("cifar100")                       # or "cifar10", "shapes" (offline), "folder"
    transform = BatchTransform(image_size=224, train=True)
    for images, labels in batches(splits.train, 64, shuffle=True, device="cuda"):
        x = transform(images)                              # (64, 3, 32, 32) uint8 -> (64, 3, 224, 224) float

The synthetic, offline "shapes" dataset is generated in `vitlab.shapes`.
"""


from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from vitlab.errors import VitlabError
from vitlab.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, denormalize  # noqa: F401 (re-exported)

DATASETS = ("cifar100", "cifar10", "shapes", "folder")


# ---------------------------------------------------------------------------------------------------------------
# Datasets as tensors
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ImageDataset:
    """A whole dataset in memory: images uint8 (N, 3, H, W), labels int64 (N,), optional masks bool (N, H, W)."""

    images: Tensor  # uint8 (N, 3, H, W), 0..255, not normalised
    labels: Tensor  # int64 (N,), indices into `classes`
    classes: list[str]  # class names, index = label
    masks: Tensor | None = None  # bool (N, H, W): which pixels are the object (only the synthetic shapes have it)

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

    name: str  # one of DATASETS
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


def load_dataset(
    name: str,
    data_dir: str | Path = "./data",
    *,
    val_size: int = 5000,
    seed: int = 42,
    download: bool = True,
    subset: int | None = None,
    image_size: int = 224,
    progress: bool = True,
) -> DataSplits:
    """Load a dataset as train/val/test uint8 tensors.

    Args:
        name: "cifar100" or "cifar10" (torchvision's files, downloaded into `data_dir` when missing), "shapes"
            (synthetic 32x32 images made in memory: 8000 train, 1000 val, 1000 test; see `vitlab.shapes`) or
            "folder" (your images, one subfolder per class, under `data_dir`; optional train/, val/, test/).
        data_dir: where the CIFAR files are (or will go), or the image folder.
        val_size: CIFAR only: how many of the 50,000 training images are held out for validation.
        seed: makes the validation split, the folder split and the shapes reproducible.
        download: CIFAR only: allow downloading when the files are missing.
        subset: keep only the first `subset` images of each split, for quick smoke runs.
        image_size: folder only: the stored side length. CIFAR and shapes stay 32x32 (BatchTransform resizes).
        progress: show a progress bar while reading a folder (torchvision's download bar always shows).

    Returns:
        DataSplits whose datasets hold images uint8 (N, 3, H, W) and labels int64 (N,).

    Raises:
        DataUnavailableError: the data is missing and cannot be downloaded, or is corrupt or unreadable.
    """
    # The loaders import ImageDataset and DataSplits from this module, so they are imported here, not at the top.
    from vitlab.cifar import load_cifar
    from vitlab.folder import load_folder
    from vitlab.shapes import make_shapes

    if name in ("cifar100", "cifar10"):
        splits = load_cifar(name, Path(data_dir).expanduser(), val_size, seed, download)
    elif name == "shapes":
        # Three seeds derived from `seed`, so that train, val and test are different images.
        train_seed, val_seed, test_seed = torch.randint(2**31, (3,), generator=seeded_generator(seed)).tolist()
        splits = DataSplits(
            "shapes", make_shapes(8000, train_seed), make_shapes(1000, val_seed), make_shapes(1000, test_seed)
        )
    elif name == "folder":
        splits = load_folder(Path(data_dir).expanduser(), image_size, seed, progress)
    else:
        raise VitlabError(f"Unknown dataset {name!r}. Choose one of: {', '.join(DATASETS)}.")
    if subset is not None:
        if subset < 1:
            raise VitlabError(f"subset must be a positive number of images per split, got {subset}.")
        splits = DataSplits(splits.name, splits.train.take(subset), splits.val.take(subset), splits.test.take(subset))
    return splits


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
