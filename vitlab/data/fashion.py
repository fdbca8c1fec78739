"""Fashion-MNIST: real photographs offline. 70,000 grayscale 28x28 photos of clothing in 10 classes.

Fashion-MNIST (Xiao, Rasul and Vollgraf, Zalando Research, 2017; MIT licence) comes as four idx files: a 16-byte
header (magic 2051, count, rows, columns; big-endian), then one byte per pixel. vitlab reads them as two datasets:

    load_dataset("fashion")                       # the subset that ships inside vitlab: no files, no network
    load_dataset("fashion_mnist", "./data")       # all 70,000, from files on disk or torchvision's download

`fashion` is stored in `vitlab/data/files/` as one compressed numpy archive of the raw uint8 pixels (nothing to
decode), with a card (`fashion_subset.json`: the source files, which indices of them, and the archive's SHA-256,
checked before every load) and the licence. `python -m vitlab.data.fashion --rebuild` makes it again, bit for bit,
from Debian's package `dataset-fashion-mnist` (or torchvision's files, `--source DIR`).

Each photo becomes vitlab's uint8 (3, 32, 32): the gray value in all three channels, zero-padded by PAD = 2 black
pixels on each side (the clothes already lie on black, so the padding adds background and resamples nothing), which
is vit_tiny's 8x8 grid of 4-px patches. The mask, bool (32, 32), is the garment's silhouette: pixels brighter than
FOREGROUND_THRESHOLD, with the holes inside filled (a dark print on a shirt is still the shirt).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import platform
import sys
import urllib.error
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.data.dataset import DataSplits, ImageDataset, seeded_generator
from vitlab.errors import DataUnavailableError, VitlabError

CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
PAD = 2  # black pixels added on each side: 28 -> 32, the 8x8 grid of vit_tiny's 4-px patches
FOREGROUND_THRESHOLD = 10  # gray values above this are garment: the background is 0, with faint noise below 10
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # where `apt install dataset-fashion-mnist` puts the files
TORCHVISION_FOLDER = Path("FashionMNIST") / "raw"  # torchvision's layout under a data folder
STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
ALL_STEMS = (*STEMS["train"], *STEMS["test"])
SHIPPED_DIR = Path(__file__).resolve().parent / "files"
ARCHIVE, CARD = "fashion_subset.npz", "fashion_subset.json"
# The shipped subset, photos per class: train and val are the first of each class in the training file (in file
# order), test the first of each class in the test file. Deflated, a photo takes about 440 bytes, so 21,000 stay
# under 10 MB: 18,000 train (the demo's 5 epochs take under a minute on 2 cores), 1,000 val, and 2,000 test (accuracy
# to about +-0.7 points).
PER_CLASS = {"train": 1800, "val": 100, "test": 200}
REBUILD = "python -m vitlab.data.fashion --rebuild"
HOW_TO_GET = (
    f"Three ways to get it: (1) put torchvision's files ({', '.join(ALL_STEMS)}, each plain or .gz) in "
    f"DIR/FashionMNIST/raw/ and pass --data-dir DIR; (2) install Debian's package (apt install dataset-fashion-mnist), "
    f"which puts them in {DEBIAN_DIR}/; (3) allow the download (torchvision fetches them into --data-dir and checks "
    f"their MD5 sums). Offline without any of them, --dataset fashion trains on the subset that ships inside vitlab."
)

# ---------------------------------------------------------------------------------------------------------------
# The idx format
# ---------------------------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An idx file (plain or gzip) as a uint8 array: images (N, 28, 28) or labels (N,).

    Raises:
        DataUnavailableError: the file is unreadable, not uint8 idx, or shorter or longer than its header says.
    """
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # gzip's magic number
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise _corrupt(path, f"{type(error).__name__}: {error}") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 3:
        raise _corrupt(path, "it does not start with an idx header of unsigned bytes (00 00 08 0n)")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if len(data) != 4 + 4 * dims + int(np.prod(shape)):
        raise _corrupt(path, f"its header promises shape {shape}, but it holds {len(data)} bytes (truncated?)")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _corrupt(path: Path, why: str) -> DataUnavailableError:
    return DataUnavailableError(f"{path} is not a readable Fashion-MNIST idx file: {why}. Replace it with an intact "
                                f"copy (delete it to let the download fetch one).")


def raw_file(folder: Path, stem: str) -> Path | None:
    """`folder/stem` (torchvision unpacks its downloads) or `folder/stem.gz` (Debian keeps them packed); None if
    neither is there."""
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def has_files(folder: Path) -> bool:
    """Does `folder` hold all four Fashion-MNIST files, plain or gzip?"""
    return all(raw_file(folder, stem) is not None for stem in ALL_STEMS)


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The photos uint8 (N, 28, 28) and labels uint8 (N,) of "train" or "test" from `folder`'s idx files."""
    image_path, label_path = (raw_file(folder, stem) for stem in STEMS[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or labels.max(initial=0) >= len(CLASSES):
        raise DataUnavailableError(
            f"The Fashion-MNIST files {image_path} and {label_path} do not fit together: images {images.shape}, "
            f"labels {labels.shape} with largest label {labels.max(initial=0)} (10 classes). Replace them with "
            f"intact copies.")
    return images, labels


# ---------------------------------------------------------------------------------------------------------------
# Photos as vitlab images
# ---------------------------------------------------------------------------------------------------------------


def to_dataset(photos: np.ndarray, labels: np.ndarray) -> ImageDataset:
    """Photos uint8 (N, 28, 28) and labels (N,) -> images uint8 (N, 3, 32, 32), labels int64, silhouette masks."""
    gray = torch.from_numpy(np.array(photos))  # (N, 28, 28), a writable copy
    padding = (PAD, PAD, PAD, PAD)
    images = F.pad(gray, padding)[:, None].expand(-1, 3, -1, -1).contiguous()  # (N, 28, 28) -> (N, 3, 32, 32)
    masks = F.pad(foreground(gray), padding)  # (N, 28, 28) -> (N, 32, 32), the padding is background
    return ImageDataset(images, torch.from_numpy(labels.astype(np.int64)), list(CLASSES), masks)


def foreground(gray: Tensor) -> Tensor:
    """The garment's silhouette: uint8 (N, H, W) -> bool (N, H, W), for W up to 52.

    Pixels above FOREGROUND_THRESHOLD, plus every darker pixel that the image border cannot reach through dark
    pixels (4-connected): the dark print on a T-shirt or the black sole of a sneaker belongs to the garment.
    """
    width = gray.shape[-1]
    bits = 2 ** torch.arange(width)  # (W,) bit w of a row's number stands for column w
    # Each row as one number (float64 holds 52 bits exactly), so that each step of the flood fill below is a few
    # shifts on (N, H) numbers rather than on (N, H, W) pixels: milliseconds, not seconds, for 20,000 photos.
    dark = ((gray <= FOREGROUND_THRESHOLD).double() @ bits.double()).long()  # (N, H, W) -> (N, H)
    outside = dark & (1 | 1 << (width - 1))  # dark pixels in the left and right columns
    outside[:, [0, -1]] = dark[:, [0, -1]]  # and in the top and bottom rows
    while True:  # grow the background reached from the border, one pixel a step, through dark pixels only
        grown = outside | outside << 1 | outside >> 1  # left and right neighbours
        grown[:, 1:] |= outside[:, :-1]  # the neighbour above
        grown[:, :-1] |= outside[:, 1:]  # the neighbour below
        grown &= dark
        if torch.equal(grown, outside):
            return (outside[..., None] & bits) == 0  # (N, H) -> (N, H, W)
        outside = grown


# ---------------------------------------------------------------------------------------------------------------
# fashion_mnist: all 70,000, from disk or a download
# ---------------------------------------------------------------------------------------------------------------


def load_fashion_mnist(data_dir: Path, val_size: int, seed: int, download: bool) -> DataSplits:
    """All of Fashion-MNIST: a seeded `val_size` hold-out of the 60,000 training photos, and the 10,000 test ones.

    Read from `data_dir/FashionMNIST/raw/` (torchvision's layout), else from Debian's DEBIAN_DIR, else downloaded
    into `data_dir` by torchvision (MD5-checked) when `download` allows.
    """
    folder = find_source(data_dir, download)
    photos, labels = read_split(folder, "train")
    if not 0 <= val_size < len(labels):
        raise VitlabError(f"val_size must be from 0 to {len(labels) - 1} (Fashion-MNIST has {len(labels)} training "
                          f"photos), for example --val-size 5000.")
    pool = to_dataset(photos, labels)
    order = torch.randperm(len(labels), generator=seeded_generator(seed))  # (N,) the seeded shuffle behind the split
    test = to_dataset(*read_split(folder, "test"))
    return DataSplits("fashion_mnist", pool.subset(order[val_size:]), pool.subset(order[:val_size]), test)


def find_source(data_dir: Path, download: bool) -> Path:
    """The folder holding the four files: torchvision's under `data_dir`, Debian's, or a fresh download."""
    for folder in (data_dir / TORCHVISION_FOLDER, DEBIAN_DIR):
        if has_files(folder):
            return folder
    missing = f"Fashion-MNIST is neither in {data_dir / TORCHVISION_FOLDER} nor in {DEBIAN_DIR}"
    if not download:
        raise DataUnavailableError(f"{missing}, and downloading is switched off. {HOW_TO_GET}")
    from torchvision.datasets import FashionMNIST  # imported here: only a download needs it

    try:
        FashionMNIST(root=data_dir, train=True, download=True)  # all four files, each checked against its MD5
    except (RuntimeError, OSError, urllib.error.URLError) as error:
        reason = " ".join(str(error).split())[:300]
        raise DataUnavailableError(f"{missing}, and the download failed ({reason}). "
                                   f"{HOW_TO_GET}") from None
    return data_dir / TORCHVISION_FOLDER


# ---------------------------------------------------------------------------------------------------------------
# fashion: the subset that ships inside vitlab
# ---------------------------------------------------------------------------------------------------------------


def load_fashion(folder: Path | None = None) -> DataSplits:
    """The shipped subset (PER_CLASS photos of each class per split), after checking its SHA-256 against the card.

    Raises:
        DataUnavailableError: the archive or its card is missing, or the archive's bytes are not the card's.
    """
    folder = folder or SHIPPED_DIR
    arrays = np.load(io.BytesIO(checked_archive(folder)))
    splits = {split: to_dataset(arrays[f"{split}_images"], arrays[f"{split}_labels"]) for split in PER_CLASS}
    return DataSplits("fashion", splits["train"], splits["val"], splits["test"])


def checked_archive(folder: Path) -> bytes:
    """The shipped archive's bytes, once their SHA-256 matches the card's (as vitlab.shipped does for weights)."""
    try:
        expected = json.loads((folder / CARD).read_text())["sha256"]
        data = (folder / ARCHIVE).read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataUnavailableError(f"vitlab's Fashion-MNIST subset in {folder} is missing or unreadable "
                                   f"({type(error).__name__}: {error}). {_rebuild_hint()}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataUnavailableError(f"{folder / ARCHIVE} is damaged: its SHA-256 is {actual[:16]}..., but {CARD} "
                                   f"expects {str(expected)[:16]}.... {_rebuild_hint()}")
    return data


def _rebuild_hint() -> str:
    return (f"Rebuild it with: {REBUILD} (reads Debian's dataset-fashion-mnist, or --source DIR with torchvision's "
            f"files), or reinstall vitlab.")


def select(labels: np.ndarray, per_class: int, skip: int = 0) -> np.ndarray:
    """Indices int64 (per_class * 10,), in file order: of each class, the photos after its first `skip`."""
    chosen = [np.flatnonzero(labels == c)[skip : skip + per_class] for c in range(len(CLASSES))]
    if any(len(indices) < per_class for indices in chosen):
        raise VitlabError(f"The source has fewer than {skip + per_class} photos of some class.")
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def build_subset(source: Path) -> dict[str, np.ndarray]:
    """The shipped subset's arrays from the idx files in `source`: photos, labels and source indices per split."""
    train_photos, train_labels = read_split(source, "train")
    test_photos, test_labels = read_split(source, "test")
    picks = {"train": (train_photos, train_labels, select(train_labels, PER_CLASS["train"])),
             "val": (train_photos, train_labels, select(train_labels, PER_CLASS["val"], skip=PER_CLASS["train"])),
             "test": (test_photos, test_labels, select(test_labels, PER_CLASS["test"]))}
    arrays = {}
    for split, (photos, labels, indices) in picks.items():
        arrays |= {f"{split}_images": photos[indices], f"{split}_labels": labels[indices], f"{split}_indices": indices}
    return arrays


def archive_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A .npz archive of `arrays` whose bytes depend only on the arrays: fixed entry dates, names and order.

    `np.savez_compressed` stamps each entry with the current time, so two builds would differ; this writes the
    same zip (deflate, level 9) with every timestamp at 1980-01-01, which `np.load` reads like any .npz.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type, entry.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(entry, payload.getvalue(), compresslevel=9)
    return buffer.getvalue()


def make_card(source: Path, arrays: dict[str, np.ndarray], data: bytes) -> dict[str, Any]:
    """The card beside the archive: where every photo came from, and the hashes that check it."""
    files = {}
    for stem in ALL_STEMS:
        path = raw_file(source, stem)
        content = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        files[stem] = {"read_from": str(path), "sha256_uncompressed": hashlib.sha256(content).hexdigest()}
    return {
        "dataset": "Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017), https://github.com/zalandoresearch/fashion-mnist",
        "licence": "MIT, Copyright (c) 2017 Zalando SE: see FASHION_MNIST_LICENSE beside this card",
        "command": REBUILD, "source_files": files, "classes": list(CLASSES),
        "selection": _selection(),
        "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype),
                          "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}
                   for name, a in arrays.items()},
        "built_with": {"python": platform.python_version(), "numpy": np.__version__,
                       "zlib": zlib.ZLIB_RUNTIME_VERSION},
        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
    }


def _selection() -> dict[str, str]:
    """Which photos each split holds, in words (the card's "selection")."""
    train, val, test = PER_CLASS["train"], PER_CLASS["val"], PER_CLASS["test"]
    return {"train": f"the first {train} photos of each class in {STEMS['train'][0]}, in file order",
            "val": f"the next {val} photos of each class in {STEMS['train'][0]} (after train's), in file order",
            "test": f"the first {test} photos of each class in {STEMS['test'][0]}, in file order",
            "indices": "each split's indices into its source file are the archive's <split>_indices"}


def rebuild(source: Path, out: Path) -> Path:
    """Build the subset from `source` (a folder of the four files, flat or in torchvision's layout) into `out`."""
    if not has_files(source) and has_files(source / TORCHVISION_FOLDER):
        source = source / TORCHVISION_FOLDER
    if not has_files(source):
        raise DataUnavailableError(f"{source} does not hold the four Fashion-MNIST files. {HOW_TO_GET}")
    arrays = build_subset(source)
    data = archive_bytes(arrays)
    out.mkdir(parents=True, exist_ok=True)
    (out / ARCHIVE).write_bytes(data)
    (out / CARD).write_text(json.dumps(make_card(source, arrays, data), indent=2) + "\n")
    return out / ARCHIVE


def main(argv: list[str] | None = None) -> int:
    """`python -m vitlab.data.fashion --rebuild`: 0 done, 2 the source files are missing or unreadable."""
    parser = argparse.ArgumentParser(prog="python -m vitlab.data.fashion", description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", required=True,
                        help="build the shipped subset from the idx files into --out")
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR, help=f"the idx files (default: {DEBIAN_DIR})")
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR, help=f"where to write (default: {SHIPPED_DIR})")
    args = parser.parse_args(argv)
    try:
        path = rebuild(args.source, args.out)
    except VitlabError as error:
        print(f"vitlab: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size:,} bytes, SHA-256 {hashlib.sha256(path.read_bytes()).hexdigest()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
