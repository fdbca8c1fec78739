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

import gzip
import http.client
import math
import pickle
import tarfile
import urllib.error
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from vitlab.errors import DataUnavailableError, VitlabError

# The statistics ViT-B/16 saw during its ImageNet training: inputs must be normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS = ("cifar100", "cifar10", "shapes", "folder")


# ---------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------


class BatchTransform(nn.Module):
    """uint8 images -> normalised float ViT inputs, for a whole batch on its own device.

    Eval (`train=False`): bilinear resize to `image_size` x `image_size`, then ImageNet normalisation.
    Train (`train=True`): a random horizontal flip (p=0.5) and a random rotation in
    [-max_rotation_degrees, +max_rotation_degrees], done together with the resize as ONE resampling of each image
    (one `grid_sample`), so the image is blurred once rather than three times. Corners that rotate in from outside
    the image are black, as with torchvision's `RandomRotation`. (Only when shrinking does an antialiased resize
    come first, because `grid_sample` cannot antialias.)

    The switch between the two is the module's own `training` flag, like Dropout: `transform.eval()` turns the
    augmentation off.
    """

    def __init__(self, image_size: int, train: bool, *, max_rotation_degrees: float = 10.0, flip: bool = True):
        super().__init__()
        self.image_size = image_size
        self.max_rotation_degrees = max_rotation_degrees
        self.flip = flip
        self.train(train)  # sets self.training, the flag nn.Module.train()/.eval() toggle
        # Buffers follow `transform.to(device)`; persistent=False keeps them out of any state_dict.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Transform a batch.

        Args:
            images: uint8 (B, 3, H, W), on any device.
            generator: random source for the augmentation (train mode); it must live on the images' device.
                None uses torch's global generator for that device.

        Returns:
            float32 (B, 3, S, S) with S = image_size, ImageNet-normalised, on the images' device.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images of shape (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.float() / 255.0  # (B, 3, H, W) uint8 0..255 -> float 0..1
        if self.training:
            x = self._augment(x, generator)  # (B, 3, H, W) -> (B, 3, S, S)
        else:
            x = resize(x, self.image_size)  # (B, 3, H, W) -> (B, 3, S, S)
        # .to() is a no-op when the transform was moved to the images' device already.
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def _augment(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Random flip + rotation + resize of float images (B, 3, H, W) -> (B, 3, S, S)."""
        batch = x.shape[0]
        # Random numbers are drawn on the images' device: nothing has to wait for, or copy from, the host.
        uniform = torch.rand(batch, device=x.device, generator=generator)  # (B,) in [0, 1)
        angles = (2 * uniform - 1) * math.radians(self.max_rotation_degrees)  # (B,) in [-max, +max)
        if self.flip:
            coin = torch.rand(batch, device=x.device, generator=generator)  # (B,)
            flip_signs = torch.where(coin < 0.5, -1.0, 1.0)  # (B,) -1 mirrors the image
        else:
            flip_signs = torch.ones(batch, device=x.device)  # (B,)
        if x.shape[-2] > self.image_size or x.shape[-1] > self.image_size:
            # grid_sample cannot antialias, so a big downscale through it would alias (moire); shrink first.
            x = resize(x, self.image_size)  # (B, 3, H, W) -> (B, 3, S, S)
        return rotate_flip_resize(x, angles, flip_signs, self.image_size)


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of float images (B, 3, H, W) -> (B, 3, size, size), antialiased only when shrinking."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    shrinking = x.shape[-2] > size or x.shape[-1] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def rotate_flip_resize(x: Tensor, angles: Tensor, flip_signs: Tensor, size: int) -> Tensor:
    """Rotate, optionally mirror, and resize each image in one bilinear resampling.

    Args:
        x: float images (B, C, H, W).
        angles: (B,) rotation in radians, counter-clockwise for positive angles (as torchvision's `rotate`).
        flip_signs: (B,) +1 keeps an image, -1 mirrors it left-right.
        size: output side length S.

    Returns:
        (B, C, S, S); pixels whose source lies outside the input image are 0.
    """
    # affine_grid works in normalised coordinates ([-1, 1] across each image, y pointing down) and maps every
    # OUTPUT pixel to the INPUT point it reads from: input = R(angle) @ diag(flip, 1) @ output. With y pointing
    # down, reading through R(angle) shows the picture turned counter-clockwise. Normalised coordinates make the
    # resize free: the same matrix works for any input and output size.
    cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
    theta = torch.stack(
        [
            torch.stack([flip_signs * cos, -sin, zero], dim=-1),  # (B, 3): x_in = s*cos*x_out - sin*y_out
            torch.stack([flip_signs * sin, cos, zero], dim=-1),  # (B, 3): y_in = s*sin*x_out + cos*y_out
        ],
        dim=1,
    )  # (B, 2, 3)
    batch, channels = x.shape[:2]
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)  # (B, S, S, 2)
    # padding_mode="border" makes the un-rotated case identical to F.interpolate (which also clamps at the edge);
    # the mask then blacks out what truly comes from outside the image, like padding_mode="zeros" would.
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B, C, S, S)
    inside = (grid.abs() <= 1).all(dim=-1)  # (B, S, S)
    return out * inside.unsqueeze(1)  # (B, S, S) -> (B, 1, S, S) broadcast over channels


def denormalize(x: Tensor) -> Tensor:
    """Undo the ImageNet normalisation for display: (B, 3, H, W) or (3, H, W) -> same shape, clamped to [0, 1].

    This is `x * std + mean`, the exact inverse of `(x - mean) / std`. (The notebook's `img / 2 + 0.5` inverted
    a (0.5, 0.5) normalisation that was never applied: its previews had off colours and clipping warnings.)
    """
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(3, 1, 1)  # broadcasts over B too
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)


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
    if name in ("cifar100", "cifar10"):
        splits = _load_cifar(name, Path(data_dir).expanduser(), val_size, seed, download)
    elif name == "shapes":
        from vitlab.shapes import make_shapes  # imported here because vitlab.shapes imports this module

        # Three seeds derived from `seed`, so that train, val and test are different images.
        train_seed, val_seed, test_seed = torch.randint(2**31, (3,), generator=_seeded(seed)).tolist()
        splits = DataSplits(
            "shapes", make_shapes(8000, train_seed), make_shapes(1000, val_seed), make_shapes(1000, test_seed)
        )
    elif name == "folder":
        splits = _load_folder(Path(data_dir).expanduser(), image_size, seed, progress)
    else:
        raise VitlabError(f"Unknown dataset {name!r}. Choose one of: {', '.join(DATASETS)}.")
    if subset is not None:
        if subset < 1:
            raise VitlabError(f"subset must be a positive number of images per split, got {subset}.")
        splits = DataSplits(splits.name, splits.train.take(subset), splits.val.take(subset), splits.test.take(subset))
    return splits


def _seeded(seed: int) -> torch.Generator:
    """A fresh CPU generator: seeded randomness that leaves torch's global random state alone."""
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# CIFAR through torchvision (which downloads the archive and checks every file's MD5 sum)
# ---------------------------------------------------------------------------------------------------------------

# What reading a damaged archive or pickle raises (gzip.BadGzipFile is an OSError: caught before OSError below).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)
_PICKLE_ERRORS = (pickle.UnpicklingError, ValueError, KeyError, IndexError, TypeError)
_CORRUPT_ERRORS = _ARCHIVE_ERRORS + _PICKLE_ERRORS
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def _load_cifar(name: str, data_dir: Path, val_size: int, seed: int, download: bool) -> DataSplits:
    """CIFAR-10/100 as tensors: a seeded `val_size` hold-out of the 50,000 training images, and the test set."""
    dataset_class = CIFAR100 if name == "cifar100" else CIFAR10
    try:
        train_set = dataset_class(root=data_dir, train=True, download=download)
        test_set = dataset_class(root=data_dir, train=False, download=False)  # train=True fetched both already
    except _CORRUPT_ERRORS + _NETWORK_ERRORS + (RuntimeError,) as error:
        raise _cifar_error(dataset_class, data_dir, download, error) from error
    except OSError as error:  # for example no permission to write into data_dir
        raise DataUnavailableError(
            f"Could not read or write the {name} files under {data_dir}: {error}. "
            f"Check that the folder exists and is writable, or pass --data-dir PATH to use another folder."
        ) from error

    def to_tensors(dataset: CIFAR10) -> tuple[Tensor, Tensor]:
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
        return images, torch.tensor(dataset.targets, dtype=torch.int64)  # (N,)

    images, labels = to_tensors(train_set)
    if not 0 <= val_size < len(labels):
        raise VitlabError(f"val_size must be from 0 to {len(labels) - 1} ({name} has {len(labels)} training images).")
    order = torch.randperm(len(labels), generator=_seeded(seed))  # (N,) the seeded shuffle behind the split
    pool = ImageDataset(images, labels, list(train_set.classes))
    test_images, test_labels = to_tensors(test_set)
    return DataSplits(
        name,
        train=pool.subset(order[val_size:]),
        val=pool.subset(order[:val_size]),
        test=ImageDataset(test_images, test_labels, list(test_set.classes)),
    )


def _cifar_error(
    dataset_class: type[CIFAR10], data_dir: Path, download: bool, error: Exception
) -> DataUnavailableError:
    """Turn what torchvision raised into a message that says what happened and what to do."""
    folder, archive = data_dir / dataset_class.base_folder, data_dir / dataset_class.filename
    label, url = dataset_class.__name__.replace("CIFAR", "CIFAR-"), dataset_class.url
    expected = [f for f, _ in dataset_class.train_list + dataset_class.test_list] + [dataset_class.meta["filename"]]
    files_present = any((folder / f).exists() for f in expected)
    # torchvision raises RuntimeError both for "missing" and for "MD5 mismatch"; with files (or a fresh download)
    # on disk it is the mismatch.
    if isinstance(error, _CORRUPT_ERRORS) or (isinstance(error, RuntimeError) and (files_present or download)):
        how = (
            "they fail torchvision's MD5 check"
            if isinstance(error, RuntimeError)
            else f"{type(error).__name__}: {error}"
        )
        return DataUnavailableError(
            f"The {label} files under {data_dir} look corrupt, truncated or incomplete ({how}). "
            f"Delete {folder} and {archive}, then run again with downloading "
            f"allowed to fetch fresh copies from {url} (or copy intact files there by hand)."
        )
    if isinstance(error, _NETWORK_ERRORS):
        why = f"could not be downloaded: the machine looks offline ({error})"
        if archive.exists():
            why += f". The archive {archive} is there but fails its MD5 check (corrupt or truncated): delete it"
    elif archive.exists():
        why = (
            f"was not unpacked from {archive} because downloading is switched off (download=False). Allow "
            f"downloading (nothing is fetched when the archive is intact), or unpack it with `tar -xzf`"
        )
    else:
        why = "was not downloaded because downloading is switched off (download=False)"
    return DataUnavailableError(
        f"{label} is not in {folder} and {why}.\n"
        f"To fix it: download {url} where you have internet, then pass --data-dir PATH (data_dir= in Python) "
        f"naming the folder that holds the extracted {folder.name}/ folder or the {archive.name} file. "
        f"Or, offline, use --preset demo."
    )


# ---------------------------------------------------------------------------------------------------------------
# Your own images, in torchvision's ImageFolder layout: data_dir/<class name>/<image file>
# ---------------------------------------------------------------------------------------------------------------

_FOLDER_LAYOUT = (
    "Expected one subfolder per class (PATH/cat/001.png, PATH/dog/002.jpg, ...), optionally split into "
    "PATH/train/, PATH/val/ and PATH/test/ with the same class subfolders. Pass --data-dir PATH."
)


def _load_folder(data_dir: Path, image_size: int, seed: int, progress: bool) -> DataSplits:
    """Read an image folder; splits missing on disk are held out of train (10% val, 10% test), seeded."""
    if not data_dir.is_dir():
        raise DataUnavailableError(f"The image folder {data_dir} does not exist. {_FOLDER_LAYOUT}")
    has_splits = (data_dir / "train").is_dir()
    train = _read_image_folder(data_dir / "train" if has_splits else data_dir, None, image_size, progress)
    given = {
        split: _read_image_folder(data_dir / split, train.classes, image_size, progress)
        for split in ("val", "test")
        if has_splits and (data_dir / split).is_dir()
    }
    # Each split not given on disk gets a tenth of the images, at least one when there are enough to go round.
    tenth = max(1, round(len(train) / 10)) if len(train) >= 3 else 0
    n_val = 0 if "val" in given else tenth
    n_test = 0 if "test" in given else tenth
    order = torch.randperm(len(train), generator=_seeded(seed))  # (n,) the seeded shuffle behind the split
    val = given["val"] if "val" in given else train.subset(order[:n_val])
    test = given["test"] if "test" in given else train.subset(order[n_val : n_val + n_test])
    return DataSplits("folder", train.subset(order[n_val + n_test :]), val, test)


def _read_image_folder(folder: Path, classes: list[str] | None, image_size: int, progress: bool) -> ImageDataset:
    """Decode every image under folder/<class>/ to RGB, resized to image_size x image_size (aspect not kept).

    `classes` fixes the label order (from train/ when reading val/ or test/); None takes the sorted subfolders.
    Files that fail to decode are skipped with a warning naming them.
    """
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataUnavailableError(f"{folder} has no class subfolders. {_FOLDER_LAYOUT}")
    classes = found if classes is None else classes
    if unknown := sorted(set(found) - set(classes)):
        raise DataUnavailableError(f"{folder} has class folders that train/ lacks: {unknown}. {_FOLDER_LAYOUT}")
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((folder / name).rglob("*"))
        if path.suffix.lower() in IMG_EXTENSIONS and path.is_file()
    ]
    images, labels, failures = [], [], []
    for path, label in tqdm(files, desc=f"Reading {folder}", unit="img", disable=not progress):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
        except (OSError, ValueError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
            failures.append(f"{path} ({error})")
            warnings.warn(f"Skipping {path}: it could not be decoded as an image ({error}).", stacklevel=4)
            continue
        images.append(torch.from_numpy(np.array(rgb)).permute(2, 0, 1))  # (S, S, 3) -> (3, S, S)
        labels.append(label)
    if not images:
        detail = (
            f"none of {len(files)} image files could be decoded, e.g. {failures[0]}"
            if failures
            else (f"no image files ({', '.join(IMG_EXTENSIONS)}) were found in its class folders")
        )
        raise DataUnavailableError(f"No readable images in {folder}: {detail}. {_FOLDER_LAYOUT}")
    return ImageDataset(torch.stack(images), torch.tensor(labels, dtype=torch.int64), list(classes))  # (N, 3, S, S)


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
