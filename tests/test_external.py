"""Tests for vitlab.external: timm and Hugging Face ViTs imported as torchvision ViTs with the same function."""

from __future__ import annotations

import pytest
import torch

from vitlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, denormalize

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def test_batch_transform_normalises_with_the_imported_statistics() -> None:
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 0.75)
    ours = BatchTransform(32, train=False, mean=mean, std=std)(pixels)  # (B, 3, 32, 32): no resize at 32
    expected = (pixels / 255.0 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(denormalize(ours, mean=mean, std=std), (pixels / 255.0))
    default = BatchTransform(32, train=False)  # unchanged: ImageNet's statistics
    assert torch.equal(default.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.equal(default.std.flatten(), torch.tensor(IMAGENET_STD))
    with pytest.raises(ValueError, match="std positive"):
        BatchTransform(32, train=False, std=(0.5, 0.0, 0.5))
