"""A synthetic, offline dataset of simple shapes with exact object masks.

Each image is a noisy background with one flat-coloured shape on it (circle, square, triangle or cross). Because we
paint the shape ourselves we know exactly which pixels belong to it, so the per-pixel mask is ground truth for the
question vitlab keeps asking: "does the attention look at the object?". The classes are easy on purpose: a tiny ViT
(4x4 patches, an 8x8 grid at 32x32) trained from scratch passes 95% test accuracy in about three epochs of the
8000 training images (under a minute on a 2-core CPU), so the whole pipeline can be tried without a GPU or network.

Generation is vectorised: every shape is a boolean test on a grid of pixel-centre coordinates, evaluated for all
images of a class at once, so 10,000 images take well under a second.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitlab.data.dataset import DataSplits, ImageDataset, seeded_generator

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
SPLIT_SIZES = (8000, 1000, 1000)  # train, val, test images of load_dataset("shapes")

# Sizes are given for 32x32 images and scale with image_size.
_REFERENCE_SIZE = 32
_MIN_EXTENT, _MAX_EXTENT = 10.0, 18.0  # how many pixels across a shape is, at 32x32
_NOISE_STD = 12.0  # per-pixel Gaussian noise on the background, in 0..255 units
# Dark backgrounds and light shapes, each channel drawn from its own range, so every hue occurs but the shape is
# always at least 255 - 80 - 80 = 95 brighter in every channel (>= 164 apart in RGB). The fixed polarity matters: a
# tiny ViT trained from scratch learns "bright shape on dark ground" in one epoch, while with random polarity and
# any colours it stayed near chance for several (measured while designing this dataset).
_BACKGROUND_MAX = 80.0  # background channels in [0, 80]
_SHAPE_MIN = 175.0  # shape channels in [175, 255]


def load_shapes(seed: int) -> DataSplits:
    """The "shapes" dataset's three splits (SPLIT_SIZES images of 32x32), each from its own seed derived from `seed`."""
    # Three seeds, so that train, val and test are different images.
    seeds = torch.randint(2**31, (3,), generator=seeded_generator(seed)).tolist()
    train, val, test = (make_shapes(n, split_seed) for n, split_seed in zip(SPLIT_SIZES, seeds, strict=True))
    return DataSplits("shapes", train, val, test)


def make_shapes(num_images: int, seed: int, image_size: int = 32) -> ImageDataset:
    """Generate `num_images` shape images, their labels and their object masks, deterministically from `seed`.

    Classes are balanced: each class gets `num_images // 4` images (the first few classes one more when it does
    not divide evenly), in shuffled order.

    Args:
        num_images: how many images to make.
        seed: the same seed always gives the same images (on any machine, since only torch's CPU generator is used).
        image_size: side length S of the square images.

    Returns:
        An `ImageDataset` with images uint8 (N, 3, S, S), labels int64 (N,), classes `SHAPE_CLASSES` and masks
        bool (N, S, S), True exactly on the pixels painted with the shape colour.
    """
    if num_images < 0 or image_size < 8:
        raise ValueError(f"need num_images >= 0 and image_size >= 8, got {num_images} and {image_size}")
    gen = seeded_generator(seed)
    n, size = num_images, image_size
    num_classes = len(SHAPE_CLASSES)

    # Balanced labels, shuffled: 0, 1, 2, 3, 0, 1, ... in a random order.
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]  # (N,)

    # Extent (pixels across) and a centre that keeps the whole shape inside the image.
    scale = size / _REFERENCE_SIZE
    extent = (_MIN_EXTENT + (_MAX_EXTENT - _MIN_EXTENT) * torch.rand(n, generator=gen)) * scale  # (N,)
    half = extent / 2
    centre_x = half + (size - extent) * torch.rand(n, generator=gen)  # (N,) in [half, size - half]
    centre_y = half + (size - extent) * torch.rand(n, generator=gen)  # (N,)

    background = _BACKGROUND_MAX * torch.rand(n, 3, generator=gen)  # (N, 3) one base colour per image
    colour = _SHAPE_MIN + (255 - _SHAPE_MIN) * torch.rand(n, 3, generator=gen)  # (N, 3) one shape colour per image

    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for class_index in range(num_classes):
        rows = (labels == class_index).nonzero().squeeze(1)  # (n_c,) images of this class
        masks[rows] = _paint(class_index, size, centre_x[rows], centre_y[rows], half[rows])

    noise = _NOISE_STD * torch.randn(n, 3, size, size, generator=gen)  # (N, 3, S, S)
    pixels = background[:, :, None, None] + noise  # (N, 3) -> (N, 3, S, S) noisy background
    pixels = torch.where(masks[:, None], colour[:, :, None, None], pixels)  # paint the shape, no noise on it
    images = pixels.clamp(0, 255).round().to(torch.uint8)  # (N, 3, S, S)
    return ImageDataset(images=images, labels=labels, classes=list(SHAPE_CLASSES), masks=masks)


def _paint(class_index: int, size: int, cx: Tensor, cy: Tensor, half: Tensor) -> Tensor:
    """Boolean masks of one shape class: which pixel centres fall inside the shape.

    cx, cy, half: (M,) centre and half-extent in pixels. Returns bool (M, S, S).
    """
    coords = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres, (S,)
    # Offsets of every pixel centre from each shape's centre, broadcast to (M, S, S).
    dx = coords[None, None, :] - cx[:, None, None]  # (M, 1, S)
    dy = coords[None, :, None] - cy[:, None, None]  # (M, S, 1)
    half = half[:, None, None]  # (M, 1, 1)
    name = SHAPE_CLASSES[class_index]
    if name == "circle":
        mask = dx**2 + dy**2 <= half**2
    elif name == "square":
        mask = (dx.abs() <= half) & (dy.abs() <= half)
    elif name == "triangle":
        # Pointing up: zero width at the top (dy = -half), full width 2 * half at the bottom (dy = +half).
        mask = (dy <= half) & (dx.abs() <= (dy + half) / 2)
    elif name == "cross":
        # A plus sign: two bars a third of the extent thick.
        arm = half / 3
        mask = ((dx.abs() <= arm) & (dy.abs() <= half)) | ((dy.abs() <= arm) & (dx.abs() <= half))
    else:
        raise ValueError(f"no painter for shape class {name!r}")
    return mask.expand(-1, size, size)  # (M, S, S) even when one factor broadcast
