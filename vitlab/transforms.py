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

