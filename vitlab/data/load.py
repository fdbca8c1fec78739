"""`load_dataset`: every dataset by name, through the loader that knows its format."""

from __future__ import annotations

from pathlib import Path

from vitlab.data.cifar import load_cifar
from vitlab.data.dataset import DataSplits
from vitlab.data.folder import load_folder
from vitlab.data.shapes import load_shapes
from vitlab.errors import VitlabError

DATASETS = ("cifar100", "cifar10", "shapes", "fashion", "fashion_mnist", "folder")


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
            (synthetic 32x32 images made in memory: 8000 train, 1000 val, 1000 test; see `vitlab.data.shapes`),
            "fashion" (photos of clothing, 32x32: the Fashion-MNIST subset that ships inside vitlab, 18,000 train,
            1,000 val, 2,000 test; see `vitlab.data.fashion`), "fashion_mnist" (all 70,000, from `data_dir`,
            Debian's package or a download) or "folder" (your images, one subfolder per class, under `data_dir`;
            optional train/, val/, test/).
        data_dir: where the CIFAR or Fashion-MNIST files are (or will go), or the image folder.
        val_size: CIFAR and fashion_mnist: how many of the training images are held out for validation.
        seed: makes the validation split, the folder split and the shapes reproducible.
        download: CIFAR and fashion_mnist: allow downloading when the files are missing.
        subset: keep only the first `subset` images of each split, for quick smoke runs.
        image_size: folder only: the stored side length. CIFAR, shapes and Fashion-MNIST are 32x32 (BatchTransform
            resizes).
        progress: show a progress bar while reading a folder (torchvision's download bar always shows).

    Returns:
        DataSplits whose datasets hold images uint8 (N, 3, H, W) and labels int64 (N,).

    Raises:
        DataUnavailableError: the data is missing and cannot be downloaded, or is corrupt or unreadable.
    """
    if name in ("cifar100", "cifar10"):
        splits = load_cifar(name, Path(data_dir).expanduser(), val_size, seed, download)
    elif name == "shapes":
        splits = load_shapes(seed)
    elif name in ("fashion", "fashion_mnist"):
        # Imported here, not above: `python -m vitlab.data.fashion --rebuild` then runs that module only once.
        from vitlab.data.fashion import load_fashion, load_fashion_mnist

        if name == "fashion":
            splits = load_fashion()
        else:
            splits = load_fashion_mnist(Path(data_dir).expanduser(), val_size, seed, download)
    elif name == "folder":
        splits = load_folder(Path(data_dir).expanduser(), image_size, seed, progress)
    else:
        raise VitlabError(f"Unknown dataset {name!r}. Choose one of: {', '.join(DATASETS)}.")
    if subset is not None:
        if subset < 1:
            raise VitlabError(f"subset must be a positive number of images per split, got {subset}.")
        splits = DataSplits(splits.name, splits.train.take(subset), splits.val.take(subset), splits.test.take(subset))
    return splits
