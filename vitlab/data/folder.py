"""Your own images in torchvision's ImageFolder layout (data_dir/<class name>/<image file>), as uint8 tensors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from vitlab.data.dataset import DataSplits, ImageDataset, seeded_generator
from vitlab.errors import DataUnavailableError

_FOLDER_LAYOUT = (
    "Expected one subfolder per class (PATH/cat/001.png, PATH/dog/002.jpg, ...), optionally split into "
    "PATH/train/, PATH/val/ and PATH/test/ with the same class subfolders. Pass --data-dir PATH."
)


def load_folder(data_dir: Path, image_size: int, seed: int, progress: bool) -> DataSplits:
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
    order = torch.randperm(len(train), generator=seeded_generator(seed))  # (n,) the seeded shuffle behind the split
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

