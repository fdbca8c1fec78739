"""Tests for vitlab.data (datasets, loaders, shapes, transforms): known answers, all offline (no network)."""

from __future__ import annotations

import math
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from conftest import write_fake_cifar100  # the real CIFAR pickle layout, shared with test_finetune
from PIL import Image
from torchvision.transforms import InterpolationMode

from vitlab.data import BatchTransform, ImageDataset, batches, denormalize, load_dataset
from vitlab.data.shapes import SHAPE_CLASSES, make_shapes
from vitlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resize, rotate_flip
from vitlab.errors import DataUnavailableError, VitlabError


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces: a connection attempt from any test here fails instead of reaching the internet."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access is disabled in vitlab's data tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)


# ---------------------------------------------------------------------------------------------------------------
# BatchTransform
# ---------------------------------------------------------------------------------------------------------------


def _random_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("out_size", [48, 20, 8])  # up, same size, down (antialiased)
def test_eval_of_constant_colour_is_the_normalised_colour(out_size: int) -> None:
    colour = (10, 128, 250)
    images = torch.tensor(colour, dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 20, 20).contiguous()
    out = BatchTransform(out_size, train=False)(images)
    assert out.shape == (2, 3, out_size, out_size) and out.dtype == torch.float32
    for channel, c in enumerate(colour):
        expected = (c / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        torch.testing.assert_close(out[:, channel], torch.full_like(out[:, channel], expected), atol=1e-5, rtol=0)


def test_eval_downscale_is_antialiased() -> None:
    # Every 4th column white: shrinking 64 -> 16 must average the 4 columns each output pixel covers (255 / 4).
    # Plain bilinear would read between two black columns and return 0: the stripes would vanish or alias.
    images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    images[..., ::4] = 255
    shrunk = denormalize(BatchTransform(16, train=False)(images))
    torch.testing.assert_close(shrunk[..., 2:-2], torch.full_like(shrunk[..., 2:-2], 0.25), atol=0.01, rtol=0)


def test_train_without_rotation_gives_the_eval_image_or_its_mirror() -> None:
    images = _random_images(1, 16).expand(64, -1, -1, -1)  # one asymmetric image, 64 times
    plain = BatchTransform(24, train=False)(images[:1])[0]  # (3, 24, 24)
    mirror = plain.flip(-1)
    out = BatchTransform(24, train=True, max_rotation_degrees=0.0)(images, torch.Generator().manual_seed(0))
    is_plain = [torch.allclose(o, plain, atol=1e-4) for o in out]
    is_mirror = [torch.allclose(o, mirror, atol=1e-4) for o in out]
    assert all(p != m for p, m in zip(is_plain, is_mirror, strict=True))  # every output is exactly one of the two
    assert 10 < sum(is_mirror) < 54  # both happen, about half each (p = 0.5; this range fails with p < 1e-6)


def test_flip_off_and_no_rotation_is_the_eval_transform() -> None:
    images = _random_images(8, 32)
    train = BatchTransform(224, train=True, max_rotation_degrees=0.0, flip=False)(images)
    torch.testing.assert_close(train, BatchTransform(224, train=False)(images), atol=1e-4, rtol=0)


def test_rotation_matches_torchvision_rotate_inside_the_image() -> None:
    image = torch.zeros(1, 3, 32, 32)  # an L-shaped pattern: any wrong angle, sign or mirror shows
    image[..., 4:12, 8:28] = 1.0
    image[..., 12:28, 20:26] = 0.5
    radius = torch.linspace(-15.5, 15.5, 32)
    interior = radius[:, None] ** 2 + radius[None, :] ** 2 < 13**2  # away from the corners torchvision fills
    for degrees, sign in [(30.0, 1.0), (-20.0, 1.0), (30.0, -1.0)]:
        expected = TF.rotate(image, degrees, interpolation=InterpolationMode.BILINEAR)
        if sign < 0:
            expected = TF.hflip(expected)  # ours rotates, then mirrors
        ours = rotate_flip(image, torch.tensor([math.radians(degrees)]), torch.tensor([sign]))
        torch.testing.assert_close(ours[..., interior], expected[..., interior], atol=1e-4, rtol=0)


def test_rotation_by_45_degrees_keeps_the_octagon() -> None:
    # A square turned by 45 degrees covers a regular octagon of the output: 2 * (sqrt(2) - 1) = 0.828 of it.
    ones = torch.ones(1, 1, 64, 64)
    out = rotate_flip(ones, torch.tensor([math.radians(45.0)]), torch.ones(1))
    assert out.mean().item() == pytest.approx(2 * (math.sqrt(2) - 1), abs=0.02)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 32, 32] == 1  # black corner, untouched centre


def test_same_generator_seed_gives_same_augmentation() -> None:
    images = _random_images(16, 32)
    transform = BatchTransform(64, train=True, max_rotation_degrees=30.0)
    first = transform(images, torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, transform(images, torch.Generator().manual_seed(7)), atol=0, rtol=0)
    assert not torch.allclose(first, transform(images, torch.Generator().manual_seed(8)))


def test_denormalize_inverts_the_normalisation() -> None:
    images = _random_images(2, 16)
    restored = denormalize(BatchTransform(16, train=False)(images))
    torch.testing.assert_close(restored, images.float() / 255, atol=1e-6, rtol=0)
    torch.testing.assert_close(denormalize(BatchTransform(16, train=False)(images)[0]), restored[0])  # (3, H, W)
    assert denormalize(torch.full((3, 2, 2), 100.0)).max() == 1.0  # clamped for display


def test_eval_transform_is_the_modules_training_flag() -> None:
    transform = BatchTransform(32, train=True)
    assert transform.training and not transform.eval().training  # .eval() switches the augmentation off


def test_transform_rejects_float_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        BatchTransform(32, train=False)(torch.rand(1, 3, 32, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_transform_and_batches_stay_on_the_gpu_without_syncing() -> None:
    data = ImageDataset(_random_images(10, 32), torch.arange(10), ["c"] * 10).to("cuda")
    transform = BatchTransform(224, train=True).to("cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")  # any host<->device synchronisation now raises
    try:
        for images, _ in batches(data, 4, shuffle=False, device="cuda"):
            out = transform(images, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda" and out.shape == (2, 3, 224, 224)


# ---------------------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------------------


def _bounding_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Height and width in pixels of each mask's bounding box: (N, S, S) -> (N,), (N,)."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (N, S) each
    return rows.sum(dim=1), cols.sum(dim=1)  # shapes are convex along rows and columns, so the count is the span


def test_shapes_are_deterministic_balanced_and_seed_dependent() -> None:
    data = make_shapes(400, seed=3)
    again = make_shapes(400, seed=3)
    assert data.images.shape == (400, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.masks.shape == (400, 32, 32) and data.masks.dtype == torch.bool
    assert torch.equal(data.images, again.images) and torch.equal(data.masks, again.masks)
    assert torch.equal(data.labels, again.labels)
    assert not torch.equal(data.images, make_shapes(400, seed=4).images)
    assert data.classes == list(SHAPE_CLASSES)
    assert torch.bincount(data.labels).tolist() == [100] * len(SHAPE_CLASSES)  # exactly balanced


def test_shape_masks_are_whole_shapes_of_the_right_size_and_kind() -> None:
    data = make_shapes(800, seed=0)
    height, width = _bounding_boxes(data.masks)
    assert height.min() >= 9 and height.max() <= 19  # 10-18 px across, give or take a pixel of rounding
    assert (height - width).abs().max() <= 2  # every class fits a square box: a shape cut by the border would not
    fill = data.masks.sum(dim=(1, 2)) / (height * width)  # (N,) share of its box a shape covers
    by_class = {name: fill[data.labels == i] for i, name in enumerate(SHAPE_CLASSES)}
    assert by_class["square"].min() > 0.95
    assert 0.65 < by_class["circle"].mean() < 0.85  # pi / 4 = 0.785
    assert 0.4 < by_class["triangle"].mean() < 0.62 and 0.4 < by_class["cross"].mean() < 0.7
    triangles = data.masks[data.labels == SHAPE_CLASSES.index("triangle")]
    rows = triangles.any(dim=2)  # (T, S): which rows each triangle spans
    top = rows.int().argmax(dim=1)  # (T,) first row with shape pixels (argmax returns the first maximum)
    bottom = 31 - rows.flip(1).int().argmax(dim=1)  # (T,) last row
    index = torch.arange(len(triangles))
    assert (triangles[index, top].sum(1) < triangles[index, bottom].sum(1)).all()  # narrow top: pointing up


def test_shape_pixels_are_one_flat_colour_that_stands_out() -> None:
    data = make_shapes(200, seed=1)
    pixels = data.images.permute(0, 2, 3, 1).float()  # (N, 3, S, S) -> (N, S, S, 3)
    for image, mask in zip(pixels, data.masks, strict=True):
        inside, outside = image[mask], image[~mask]  # (n_in, 3), (n_out, 3)
        assert (inside == inside[0]).all()  # the mask is exactly the pixels painted with the shape colour
        assert (inside.mean(0) - outside.mean(0)).norm() > 80  # and that colour is far from the background


def test_load_shapes_splits_and_subset() -> None:
    full = load_dataset("shapes", seed=5)  # 10,000 images in all; fast, and the speed is reported, not asserted
    assert (len(full.train), len(full.val), len(full.test)) == (8000, 1000, 1000)
    assert full.num_classes == 4 and full.image_size == 32 and full.val.masks is not None
    assert full.train.masks.any(dim=(1, 2)).all()  # every image has an object
    assert not torch.equal(full.train.images[:1000], full.val.images)  # each split has its own seed
    small = load_dataset("shapes", seed=5, subset=50)
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(small, part).images, getattr(full, part).images[:50])  # first 50 of each
        assert torch.equal(getattr(small, part).masks, getattr(full, part).masks[:50])


# ---------------------------------------------------------------------------------------------------------------
# CIFAR: a small fabricated copy in torchvision's on-disk layout
# ---------------------------------------------------------------------------------------------------------------

CIFAR100_FOLDER = "cifar-100-python"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every download fail the way it does without a network."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def test_cifar_pixels_labels_and_classes_round_trip(tmp_path: Path, trust_fake_files: None) -> None:
    written = write_fake_cifar100(tmp_path)
    splits = load_dataset("cifar100", tmp_path, val_size=10, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 20)
    assert splits.classes[:2] == ["class_00", "class_01"] and splits.num_classes == 100 and splits.image_size == 32
    # Known answer: byte 1024 + 1 of a row is the green value of the pixel in row 0, column 1.
    assert splits.test.images[0, 1, 0, 1].item() == written["test_data"][0, 1024 + 1]
    assert torch.equal(splits.test.images, torch.from_numpy(written["test_data"].reshape(-1, 3, 32, 32)))
    assert splits.test.labels.tolist() == written["test_labels"].tolist()
    # train + val is the official training set, each image once, each with its own label.
    index_of = {row.tobytes(): i for i, row in enumerate(written["train_data"])}
    pooled = torch.cat([splits.train.images, splits.val.images]).reshape(60, 3072).numpy()
    found = [index_of[row.tobytes()] for row in pooled]
    assert sorted(found) == list(range(60))
    assert torch.cat([splits.train.labels, splits.val.labels]).tolist() == written["train_labels"][found].tolist()


def test_cifar_validation_split_is_seeded(tmp_path: Path, trust_fake_files: None) -> None:
    write_fake_cifar100(tmp_path)
    first = load_dataset("cifar100", tmp_path, val_size=10, seed=1, download=False)
    same = load_dataset("cifar100", tmp_path, val_size=10, seed=1, download=False)
    other = load_dataset("cifar100", tmp_path, val_size=10, seed=2, download=False)
    assert torch.equal(first.val.images, same.val.images)
    assert not torch.equal(first.val.images, other.val.images)


def test_cifar_subset_keeps_the_first_images_of_each_split(tmp_path: Path, trust_fake_files: None) -> None:
    write_fake_cifar100(tmp_path)
    full = load_dataset("cifar100", tmp_path, val_size=10, download=False)
    small = load_dataset("cifar100", tmp_path, val_size=10, download=False, subset=7)
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(small, part).images, getattr(full, part).images[:7])


def test_missing_cifar_without_download_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as caught:
        load_dataset("cifar100", tmp_path, download=False)
    message = str(caught.value)
    assert torchvision.datasets.CIFAR100.url in message and str(tmp_path / CIFAR100_FOLDER) in message
    assert "--data-dir" in message and "--preset demo" in message


def test_missing_cifar_offline_says_offline(tmp_path: Path, offline: None) -> None:
    with pytest.raises(DataUnavailableError) as caught:
        load_dataset("cifar10", tmp_path, download=True)
    message = str(caught.value)
    assert torchvision.datasets.CIFAR10.url in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "offline" in message


def test_garbage_archive_is_reported_as_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"this is not a gzip file" * 100)
    # Let the garbage through torchvision's MD5 check so that unpacking it is what fails.
    monkeypatch.setattr(torchvision.datasets.utils, "check_integrity", lambda path, md5=None: True)
    with pytest.raises(DataUnavailableError, match="corrupt"):
        load_dataset("cifar100", tmp_path, download=True)


def test_garbage_archive_offline_is_reported(tmp_path: Path, offline: None) -> None:
    # Unpatched: the archive fails its MD5 check, torchvision tries a fresh download, and that fails.
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(DataUnavailableError, match="offline") as caught:
        load_dataset("cifar100", tmp_path, download=True)
    assert "corrupt" in str(caught.value) and "MD5" in str(caught.value)


def test_truncated_pickle_is_reported_as_corrupt(tmp_path: Path, trust_fake_files: None) -> None:
    write_fake_cifar100(tmp_path)
    train_file = tmp_path / CIFAR100_FOLDER / "train"
    train_file.write_bytes(train_file.read_bytes()[:5000])
    with pytest.raises(DataUnavailableError, match="corrupt"):
        load_dataset("cifar100", tmp_path, download=False)


def test_files_failing_md5_are_reported_as_corrupt(tmp_path: Path) -> None:
    write_fake_cifar100(tmp_path)  # not the real bytes, so torchvision's own MD5 check rejects them
    with pytest.raises(DataUnavailableError, match="corrupt") as caught:
        load_dataset("cifar100", tmp_path, download=False)
    assert "Delete" in str(caught.value)


# ---------------------------------------------------------------------------------------------------------------
# Your own image folder
# ---------------------------------------------------------------------------------------------------------------


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _write_image_tree(root: Path) -> None:
    """root/cat and root/dog: 5 solid-colour PNGs each, of different sizes and modes (RGB, grayscale, RGBA)."""
    for i in range(5):
        _save(root / "cat" / f"rgb_{i}.png", Image.new("RGB", (40 + i, 30), (200, 10 * i, 30)))
        _save(root / "dog" / f"gray_{i}.png", Image.new("L", (12, 20 + i), 70 + i))
    _save(root / "dog" / "rgba.png", Image.new("RGBA", (25, 15), (10, 220, 40, 128)))
    (root / "dog" / "notes.txt").write_text("not an image, and not an image extension: ignored")


def test_folder_loads_resizes_converts_and_splits(tmp_path: Path) -> None:
    _write_image_tree(tmp_path)
    splits = load_dataset("folder", tmp_path, image_size=16, progress=False)
    assert splits.classes == ["cat", "dog"] and splits.image_size == 16
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 1, 1)  # 11 images: a tenth each, >= 1
    everything = ImageDataset(
        torch.cat([s.images for s in (splits.train, splits.val, splits.test)]),
        torch.cat([s.labels for s in (splits.train, splits.val, splits.test)]),
        splits.classes,
    )
    assert everything.images.shape == (11, 3, 16, 16) and everything.images.dtype == torch.uint8
    assert sorted(everything.labels.tolist()) == [0] * 5 + [1] * 6
    # Known answers: solid colours survive the resize; grayscale becomes (g, g, g); RGBA loses its alpha.
    colours = {tuple(image[:, 8, 8].tolist()) for image in everything.images}
    assert {(200, 0, 30), (70, 70, 70), (10, 220, 40)} <= colours
    assert all(bool((image == image[:, :1, :1]).all()) for image in everything.images)  # still solid
    again = load_dataset("folder", tmp_path, image_size=16, progress=False, seed=42)
    assert torch.equal(again.val.images, splits.val.images)  # the split is seeded


def test_folder_with_train_val_test_subfolders_is_used_as_is(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        _write_image_tree(tmp_path / split)
    splits = load_dataset("folder", tmp_path, image_size=8, progress=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (11, 11, 11)


def test_tiny_folder_still_gets_a_validation_and_a_test_image(tmp_path: Path) -> None:
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        for i in range(2):
            _save(tmp_path / name / f"{i}.png", Image.new("RGB", (8, 8), colour))
    splits = load_dataset("folder", tmp_path, image_size=8, progress=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2, 1, 1)


def test_folder_skips_an_unreadable_image_with_a_warning(tmp_path: Path) -> None:
    _write_image_tree(tmp_path)
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG but then nothing useful")
    with pytest.warns(UserWarning, match="broken.png"):
        splits = load_dataset("folder", tmp_path, image_size=8, progress=False)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 11


def test_folder_problems_raise_data_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="does not exist"):
        load_dataset("folder", tmp_path / "nowhere")
    with pytest.raises(DataUnavailableError, match="no class subfolders"):
        load_dataset("folder", tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "only.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(DataUnavailableError, match="only.png"):
        load_dataset("folder", tmp_path, progress=False)


def test_unknown_dataset_name_is_a_clear_error() -> None:
    with pytest.raises(VitlabError, match="cifar100"):
        load_dataset("imagenet")


# ---------------------------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------------------------


def _numbered(n: int) -> ImageDataset:
    """A dataset whose labels are the image indices, so batches show which images they hold."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return ImageDataset(images, torch.arange(n), [str(i) for i in range(n)])


def test_batches_cover_every_image_once_per_epoch() -> None:
    data = _numbered(23)
    seen = [b for _, labels in batches(data, 5, shuffle=True) for b in labels.tolist()]
    assert sorted(seen) == list(range(23)) and seen != list(range(23))  # all once, shuffled
    for images, labels in batches(data, 5, shuffle=True):
        assert torch.equal(images[:, 0, 0, 0].long(), labels)  # images travel with their labels
    sizes = [len(labels) for _, labels in batches(data, 5, shuffle=False)]
    assert sizes == [5, 5, 5, 5, 3]
    assert [len(labels) for _, labels in batches(data, 5, shuffle=False, drop_last=True)] == [5, 5, 5, 5]
    in_order = torch.cat([labels for _, labels in batches(data, 5, shuffle=False)])
    assert in_order.tolist() == list(range(23))


def test_batches_shuffle_is_reproducible_with_a_generator() -> None:
    def order(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat(
            [labels for _, labels in batches(_numbered(50), 8, shuffle=True, generator=generator)]
        ).tolist()

    assert order(0) == order(0) and order(0) != order(1)


def test_batches_land_on_the_requested_device_with_the_right_types() -> None:
    images, labels = next(batches(_numbered(4), 4, shuffle=False, device=torch.device("cpu")))
    assert images.device.type == "cpu" and images.dtype == torch.uint8 and labels.dtype == torch.int64


@pytest.mark.parametrize(("size_in", "size_out"), [(32, 224), (40, 24), (17, 17)])
def test_resize_as_matrices_equals_interpolate(size_in: int, size_out: int) -> None:
    x = torch.rand(2, 3, size_in, size_in, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(
        x, size=(size_out, size_out), mode="bilinear", align_corners=False, antialias=size_out < size_in
    )
    torch.testing.assert_close(resize(x, size_out), expected, atol=1e-5, rtol=0)
