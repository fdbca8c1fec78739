"""The batch transform: uint8 images -> normalised ViT inputs, a whole batch at once, on its own device.

The notebook pushed every image through PIL transforms (resize, flip, rotation, ToTensor, Normalize) one at a
time on the CPU. `BatchTransform` does the same for a whole batch in one resampling pass, on the GPU when the batch
is there, so the training loop never waits for the CPU to prepare images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The statistics ViT-B/16 saw during its ImageNet training: inputs must be normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ---------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------


class BatchTransform(nn.Module):
    """uint8 images -> normalised float ViT inputs, for a whole batch on its own device.

    Eval (`train=False`): normalisation ((pixel - mean) / std per channel; ImageNet's statistics unless `mean` and
    `std` are given) and a bilinear resize to `image_size` x `image_size`.
    Train (`train=True`): first a random horizontal flip (p=0.5) and a random rotation in
    [-max_rotation_degrees, +max_rotation_degrees], as one bilinear resampling at the images' own resolution;
    then the same normalisation and resize. Corners that rotate in from outside the image are black, as with
    torchvision's `RandomRotation`.

    Why this order: the resize to 224 is the only step that touches every output pixel, so everything else
    happens on the small source images (32x32 for CIFAR), where it is almost free. Normalising before resizing
    gives the same numbers, since bilinear weights sum to 1. Measured on a 2-core CPU (batch 64, 32 -> 224):
    about 4,500 images/s, against about 700 images/s for one full-size `grid_sample` that did all three at once.

    The switch between the two modes is the module's own `training` flag, like Dropout: `transform.eval()` turns
    the augmentation off.

    `mean` and `std` are the per-channel statistics the model was trained with, on pixels scaled to [0, 1]:
    torchvision's ViTs and vitlab's own used ImageNet's (the default); many timm and Hugging Face ViTs used
    (0.5, 0.5, 0.5) for both (`vitlab.external.ImportedViT` carries each imported model's own).
    """

    def __init__(self, image_size: int, train: bool, *, max_rotation_degrees: float = 10.0, flip: bool = True,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__()
        _check_statistics(mean, std)
        self.image_size = image_size
        self.max_rotation_degrees = max_rotation_degrees
        self.flip = flip
        self.train(train)  # sets self.training, the flag nn.Module.train()/.eval() toggle
        # Buffers follow `transform.to(device)`; persistent=False keeps them out of any state_dict.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Transform a batch.

        Args:
            images: uint8 (B, 3, H, W), on any device.
            generator: random source for the augmentation (train mode); it must live on the images' device.
                None uses torch's global generator for that device.

        Returns:
            float32 (B, 3, S, S) with S = image_size, normalised with `mean` and `std`, on the images' device.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images of shape (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        mean, std = self.mean.to(images.device), self.std.to(images.device)  # no-ops once moved with .to(device)
        # Scaled so that black is 0: the rotation's zero padding is then black, as in torchvision.
        x = images.float() / (255.0 * std)  # (B, 3, H, W) uint8 0..255 -> float 0..1/std
        if self.training:
            x = self._augment(x, generator)  # (B, 3, H, W), same size
        x = x - mean / std  # now (pixel - mean) / std: the normalisation, still at the source size
        return resize(x, self.image_size)  # (B, 3, H, W) -> (B, 3, S, S)

    def _augment(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Random flip + rotation of float images (B, 3, H, W), at their own size."""
        batch = x.shape[0]
        # Random numbers are drawn on the images' device: nothing has to wait for, or copy from, the host.
        uniform = torch.rand(batch, device=x.device, generator=generator)  # (B,) in [0, 1)
        angles = (2 * uniform - 1) * math.radians(self.max_rotation_degrees)  # (B,) in [-max, +max)
        if self.flip:
            coin = torch.rand(batch, device=x.device, generator=generator)  # (B,)
            flip_signs = torch.where(coin < 0.5, -1.0, 1.0)  # (B,) -1 mirrors the image
        else:
            flip_signs = torch.ones(batch, device=x.device)  # (B,)
        return rotate_flip(x, angles, flip_signs)


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of float images (B, C, H, W) -> (B, C, size, size), antialiased only when shrinking.

    A bilinear resize is linear and separable: out = R_h @ x @ R_w^T, with R_h (size, H) mixing rows and R_w
    (size, W) mixing columns. Written as two matrix products it runs about 1.2x faster than `F.interpolate` on a
    CPU (measured: 4,900 against 4,200 images/s for 64 images 32 -> 224), with the same weights.
    """
    if tuple(x.shape[-2:]) == (size, size):
        return x
    rows = resize_matrix(x.shape[-2], size, x)  # (S, H)
    cols = resize_matrix(x.shape[-1], size, x)  # (S, W)
    return rows @ x @ cols.T  # (S, H) @ (B, C, H, W) @ (W, S) -> (B, C, S, S)


def resize_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """(n_out, n_in): the 1-D bilinear resize as a matrix, made by resizing the identity with `F.interpolate`.

    Row i holds the weights output pixel i gives the input pixels, exactly those `F.interpolate` uses
    (align_corners=False; antialiased when shrinking). Every row sums to 1.
    """
    identity = torch.eye(n_in, dtype=like.dtype, device=like.device).view(n_in, 1, 1, n_in)  # n_in 1-pixel-high images
    resized = F.interpolate(identity, size=(1, n_out), mode="bilinear", align_corners=False, antialias=n_out < n_in)
    return resized[:, 0, 0, :].T  # (n_in, 1, 1, n_out) -> (n_out, n_in)


def rotate_flip(x: Tensor, angles: Tensor, flip_signs: Tensor) -> Tensor:
    """Rotate and optionally mirror each image, in one bilinear resampling at its own size.

    Args:
        x: float images (B, C, H, W).
        angles: (B,) rotation in radians, counter-clockwise for positive angles (as torchvision's `rotate`).
        flip_signs: (B,) +1 keeps an image, -1 mirrors it left-right.

    Returns:
        (B, C, H, W); pixels whose source lies outside the input image are 0.
    """
    # affine_grid works in normalised coordinates ([-1, 1] across each image, y pointing down) and maps every
    # OUTPUT pixel to the INPUT point it reads from: input = R(angle) @ diag(flip, 1) @ output. With y pointing
    # down, reading through R(angle) shows the picture turned counter-clockwise.
    cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
    theta = torch.stack(
        [
            torch.stack([flip_signs * cos, -sin, zero], dim=-1),  # (B, 3): x_in = s*cos*x_out - sin*y_out
            torch.stack([flip_signs * sin, cos, zero], dim=-1),  # (B, 3): y_in = s*sin*x_out + cos*y_out
        ],
        dim=1,
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C, H, W)


def denormalize(x: Tensor, *, mean: tuple[float, float, float] = IMAGENET_MEAN,
                std: tuple[float, float, float] = IMAGENET_STD) -> Tensor:
    """Undo the normalisation for display: (B, 3, H, W) or (3, H, W) -> same shape, clamped to [0, 1].

    This is `x * std + mean`, the exact inverse of `(x - mean) / std`, with the statistics the images were
    normalised with (ImageNet's by default, as `BatchTransform`'s). (The notebook's `img / 2 + 0.5` inverted a
    (0.5, 0.5) normalisation that was never applied: its previews had off colours and clipping warnings.)
    """
    mean_ = torch.tensor(mean, device=x.device, dtype=x.dtype).view(3, 1, 1)  # broadcasts over B too
    std_ = torch.tensor(std, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x * std_ + mean_).clamp(0, 1)


def _check_statistics(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Refuse statistics that would not normalise three channels: 3 finite means, 3 finite positive stds."""
    values = [*mean, *std]
    if len(mean) != 3 or len(std) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) \
            or min(std) <= 0:
        raise ValueError(f"mean and std must be 3 finite numbers each (RGB, for pixels in [0, 1]) and std positive, "
                         f"got mean={mean!r} std={std!r}")

