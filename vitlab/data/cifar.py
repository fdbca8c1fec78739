"""CIFAR-10/100 through torchvision, as uint8 tensors, with errors that say what to do when files are missing.

torchvision downloads the archive and checks every file's MD5 sum; vitlab never bypasses that check.
"""

from __future__ import annotations

import gzip
import http.client
import pickle
import tarfile
import urllib.error
import zlib
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100

from vitlab.data.dataset import DataSplits, ImageDataset, seeded_generator
from vitlab.errors import DataUnavailableError, VitlabError

# What reading a damaged archive or pickle raises (gzip.BadGzipFile is an OSError: caught before OSError below).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)
_PICKLE_ERRORS = (pickle.UnpicklingError, ValueError, KeyError, IndexError, TypeError)
_CORRUPT_ERRORS = _ARCHIVE_ERRORS + _PICKLE_ERRORS
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def load_cifar(name: str, data_dir: Path, val_size: int, seed: int, download: bool) -> DataSplits:
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
    order = torch.randperm(len(labels), generator=seeded_generator(seed))  # (N,) the seeded shuffle behind the split
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

