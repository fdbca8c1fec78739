"""Tests for vitlab.data.fashion: Fashion-MNIST from idx files, the shipped subset and its rebuild, the masks."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import struct
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from vitlab import finetune
from vitlab.data import fashion, load_dataset
from vitlab.errors import DataUnavailableError, VitlabError

HAS_DEBIAN = fashion.has_files(fashion.DEBIAN_DIR)
NO_DEBIAN = "Debian's dataset-fashion-mnist is not installed (apt install dataset-fashion-mnist)"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection attempt from any test here fails instead of reaching the internet."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access is disabled in vitlab's data tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def write_idx(path: Path, array: np.ndarray, packed: bool) -> None:
    """An idx file as the real ones are: 00 00 08 <dims>, each dimension a big-endian uint32, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if packed:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def plant(folder: Path, packed: bool, n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """The four files in `folder`, random photos (N, 28, 28) and labels cycling through the 10 classes."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        photos = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        image_stem, label_stem = fashion.STEMS[split]
        write_idx(folder / image_stem, photos, packed)
        write_idx(folder / label_stem, labels, packed)
        written[f"{split}_photos"], written[f"{split}_labels"] = photos, labels
    return written


@pytest.fixture
def no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "no-debian-package-here")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


# ---------------------------------------------------------------------------------------------------------------
# fashion_mnist: idx files in torchvision's layout, Debian's folder, or an error that names the three ways
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gz"])
def test_torchvision_layout_is_read_pixel_for_pixel(tmp_path: Path, no_debian: None, packed: bool) -> None:
    written = plant(tmp_path / "FashionMNIST" / "raw", packed)
    splits = load_dataset("fashion_mnist", tmp_path, val_size=5, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (25, 5, 10)
    assert splits.classes[0] == "T-shirt/top" and splits.classes[-1] == "ankle boot" and splits.image_size == 32
    test = splits.test.images
    assert test.dtype == torch.uint8 and test.shape == (10, 3, 32, 32)
    # Known answer: photo pixel (row, column) is image pixel (row + 2, column + 2) in every channel.
    assert test[3, 1, 2 + 5, 2 + 17].item() == written["test_photos"][3, 5, 17]
    assert torch.equal(test[:, 0, 2:30, 2:30], torch.from_numpy(written["test_photos"]))
    assert torch.equal(test[:, 0], test[:, 2]) and test[:, :, :2].eq(0).all() and test[:, :, :, 30:].eq(0).all()
    assert splits.test.labels.tolist() == written["test_labels"].tolist()
    # train + val is the training file, each photo once, each with its own label.
    index_of = {photo.tobytes(): i for i, photo in enumerate(written["train_photos"])}
    pooled = torch.cat([splits.train.images, splits.val.images])[:, 0, 2:30, 2:30].numpy()
    found = [index_of[photo.tobytes()] for photo in pooled]
    assert sorted(found) == list(range(30))
    assert torch.cat([splits.train.labels, splits.val.labels]).tolist() == written["train_labels"][found].tolist()


def test_validation_split_is_seeded(tmp_path: Path, no_debian: None) -> None:
    plant(tmp_path / "FashionMNIST" / "raw", packed=True)
    first, again, other = (load_dataset("fashion_mnist", tmp_path, val_size=5, seed=s, download=False)
                           for s in (1, 1, 2))
    assert torch.equal(first.val.images, again.val.images) and not torch.equal(first.val.images, other.val.images)


def test_data_dir_comes_before_debian(tmp_path: Path) -> None:
    written = plant(tmp_path / "FashionMNIST" / "raw", packed=False)
    splits = load_dataset("fashion_mnist", tmp_path, val_size=5, download=False)
    assert torch.equal(splits.test.images[:, 0, 2:30, 2:30], torch.from_numpy(written["test_photos"]))


@pytest.mark.skipif(not HAS_DEBIAN, reason=NO_DEBIAN)
def test_debian_files_are_read_as_torchvision_reads_them(tmp_path: Path) -> None:
    splits = load_dataset("fashion_mnist", tmp_path, download=False)  # nothing in tmp_path: Debian's files
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55_000, 5_000, 10_000)
    labels = torch.cat([splits.train.labels, splits.val.labels])
    assert torch.bincount(labels).tolist() == [6000] * 10 and torch.bincount(splits.test.labels).tolist() == [1000] * 10
    for stem in fashion.STEMS["test"]:  # torchvision's own reader takes the unpacked files
        (tmp_path / stem).write_bytes(gzip.decompress((fashion.DEBIAN_DIR / f"{stem}.gz").read_bytes()))
    expected = read_image_file(str(tmp_path / fashion.STEMS["test"][0]))  # (10000, 28, 28)
    assert torch.equal(splits.test.images[:, 1, 2:30, 2:30], expected)
    assert torch.equal(splits.test.labels, read_label_file(str(tmp_path / fashion.STEMS["test"][1])))


@pytest.mark.parametrize("download", [True, False])
def test_offline_without_files_names_the_three_ways(tmp_path: Path, no_debian: None, offline: None,
                                                   download: bool) -> None:
    with pytest.raises(DataUnavailableError) as caught:
        load_dataset("fashion_mnist", tmp_path, download=download)
    message = str(caught.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "--data-dir" in message  # 1: torchvision's files
    assert "apt install dataset-fashion-mnist" in message and str(fashion.DEBIAN_DIR) in message  # 2: Debian's
    assert "allow the download" in message and "--dataset fashion" in message  # 3: the download; and the subset
    assert ("download failed" in message and "name resolution" in message) if download else "switched off" in message


def test_offline_without_files_exits_2_on_the_command_line(tmp_path: Path, no_debian: None, offline: None,
                                                           capsys: pytest.CaptureFixture) -> None:
    argv = ["--preset", "demo", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path), "--out",
            str(tmp_path / "run"), "--quiet"]
    assert finetune.main(argv) == 2
    assert "apt install dataset-fashion-mnist" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "not_idx", "mismatched"])
def test_damaged_idx_files_are_refused(tmp_path: Path, no_debian: None, damage: str) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    plant(raw, packed=True)
    images = raw / "t10k-images-idx3-ubyte.gz"
    if damage == "truncated":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    elif damage == "not_idx":
        images.write_bytes(gzip.compress(b"<html>404 Not Found</html>"))
    else:
        write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(7, np.uint8), packed=True)  # 7 labels for 10 photos
    with pytest.raises(DataUnavailableError, match="t10k"):
        load_dataset("fashion_mnist", tmp_path, val_size=5, download=False)


# ---------------------------------------------------------------------------------------------------------------
# Masks: the garment's silhouette
# ---------------------------------------------------------------------------------------------------------------


def test_mask_is_the_bright_pixels_with_enclosed_holes_filled() -> None:
    photo = np.zeros((28, 28), np.uint8)
    photo[4:12, 4:12] = 200  # a square garment...
    photo[6:10, 6:10] = 0  # ...with a black print inside: enclosed, so garment
    photo[15:25, 3] = photo[15:25, 9] = photo[24, 3:10] = 11  # a U open at the top, just above the threshold
    photo[20, 20] = 10  # at the threshold: background
    photo[0:3, 20:27] = 90  # touching the border
    mask = fashion.to_dataset(photo[None], np.zeros(1, np.uint8)).masks[0]  # (32, 32)
    expected = np.zeros((32, 32), bool)
    expected[2 + 4 : 2 + 12, 2 + 4 : 2 + 12] = True  # the square, print included
    expected[2 + 15 : 2 + 25, 2 + 3] = expected[2 + 15 : 2 + 25, 2 + 9] = expected[2 + 24, 2 + 3 : 2 + 10] = True
    expected[2 + 0 : 2 + 3, 2 + 20 : 2 + 27] = True  # the inside of the U is reachable from the border: background
    assert torch.equal(mask, torch.from_numpy(expected))


def test_ring_of_dark_pixels_reaching_the_border_stays_background() -> None:
    gray = torch.full((1, 7, 7), 255, dtype=torch.uint8)
    gray[0, 1:6, 3] = 0  # a dark column from near the top to near the bottom, then out through the left
    gray[0, 5, 0:3] = 0
    mask = fashion.foreground(gray)[0]
    assert not mask[1:6, 3].any() and not mask[5, 0:3].any() and mask.sum() == 49 - 8
    gray[0, 5, 0] = 255  # closed off: the whole channel is a hole, filled
    assert fashion.foreground(gray)[0].all()


# ---------------------------------------------------------------------------------------------------------------
# fashion: the shipped subset, its card, its hash check and its rebuild
# ---------------------------------------------------------------------------------------------------------------


def test_shipped_subset_loads_balanced_and_matches_its_card() -> None:
    splits = load_dataset("fashion")
    card = json.loads((fashion.SHIPPED_DIR / fashion.CARD).read_text())
    archive = fashion.SHIPPED_DIR / fashion.ARCHIVE
    assert archive.stat().st_size <= 10 * 10**6 and card["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert "MIT" in (fashion.SHIPPED_DIR / "FASHION_MNIST_LICENSE").read_text()
    for split, per_class in fashion.PER_CLASS.items():
        data = getattr(splits, split)
        assert data.images.shape == (10 * per_class, 3, 32, 32) and data.images.dtype == torch.uint8
        assert torch.bincount(data.labels).tolist() == [per_class] * 10
        assert data.images[:, :, :2].eq(0).all() and data.masks[:, :2].eq(False).all()  # the black padding
        assert data.masks.any(dim=(1, 2)).all() and (data.images[:, 0] > fashion.FOREGROUND_THRESHOLD).le(
            data.masks).all()  # every photo has a garment, and every bright pixel is in it
        assert card["arrays"][f"{split}_images"]["shape"] == [10 * per_class, 28, 28]
    train_indices = np.load(archive)["train_indices"]
    assert len(set(train_indices) & set(np.load(archive)["val_indices"])) == 0  # val photos are not train photos


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "missing", "no_card"])
def test_damaged_shipped_subset_is_refused_with_the_rebuild_command(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "files"
    shutil.copytree(fashion.SHIPPED_DIR, folder)
    archive = folder / fashion.ARCHIVE
    data = bytearray(archive.read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0x01
        archive.write_bytes(bytes(data))
    elif damage == "truncate":
        archive.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "missing":
        archive.unlink()
    else:
        (folder / fashion.CARD).unlink()
    with pytest.raises(DataUnavailableError, match="python -m vitlab.data.fashion --rebuild"):
        fashion.load_fashion(folder)


def test_selection_takes_the_first_photos_of_each_class_in_file_order() -> None:
    labels = np.array([3, 0, 3, 1, 0, 3, 2, 0, 1, 3, 2] + list(range(4, 10)) * 2)  # classes 4-9 at 11-16, 17-22
    assert fashion.select(labels, 1).tolist() == [0, 1, 3, 6, 11, 12, 13, 14, 15, 16]
    assert fashion.select(labels, 1, skip=1).tolist() == [2, 4, 8, 10, 17, 18, 19, 20, 21, 22]
    assert fashion.select(labels, 2).tolist() == [0, 1, 2, 3, 4, 6, 8, 10, *range(11, 23)]
    with pytest.raises(VitlabError, match="fewer than 3"):
        fashion.select(labels, 3)  # class 1 has two


def test_archive_bytes_depend_only_on_the_arrays() -> None:
    arrays = {"a_images": np.arange(600, dtype=np.uint8).reshape(6, 10, 10) % 7, "a_labels": np.arange(6)}
    data = fashion.archive_bytes(arrays)
    assert fashion.archive_bytes(arrays) == data
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    loaded = np.load(io.BytesIO(data))
    assert all(np.array_equal(loaded[name], value) for name, value in arrays.items())


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DEBIAN, reason=NO_DEBIAN)
def test_rebuild_from_debian_gives_the_shipped_bytes(tmp_path: Path) -> None:
    assert fashion.main(["--rebuild", "--out", str(tmp_path)]) == 0
    assert (tmp_path / fashion.ARCHIVE).read_bytes() == (fashion.SHIPPED_DIR / fashion.ARCHIVE).read_bytes()
    rebuilt = json.loads((tmp_path / fashion.CARD).read_text())
    shipped = json.loads((fashion.SHIPPED_DIR / fashion.CARD).read_text())
    assert rebuilt["sha256"] == shipped["sha256"] and rebuilt["source_files"] == shipped["source_files"]


def test_rebuild_without_source_files_says_where_to_get_them(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert fashion.main(["--rebuild", "--source", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "apt install dataset-fashion-mnist" in capsys.readouterr().err and not (tmp_path / "out").exists()
