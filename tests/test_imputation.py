"""Tests for vitlab.analysis.imputation: ROAD's noisy linear imputation, against known answers and the library.

Without noise, a removed pixel is the weighted mean of its neighbours: a constant image is filled with the constant,
and a linear ramp is filled with the ramp wherever the hole stays off the border (the 8 weights are symmetric, so the
mean of a linear function over them is its value at the centre). With noise, the fill equals pytorch-grad-cam's
`NoisyLinearImputer` (the ROAD authors' code) for the same seed.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from vitlab.analysis.imputation import noisy_linear_imputation


def patch_mask(size: int, patch: int, removed: list[int]) -> torch.Tensor:
    """(size, size): 1 kept, 0 in the removed patches (row-major patch indices)."""
    grid = size // patch
    kept = torch.ones(grid * grid)
    kept[removed] = 0
    return kept.view(grid, grid).repeat_interleave(patch, 0).repeat_interleave(patch, 1)


def test_a_constant_image_is_filled_with_its_constant_even_at_the_border() -> None:
    image = torch.full((3, 32, 32), 0.25)
    image[1] = -1.5
    kept = patch_mask(32, 8, [0, 1, 5, 15])  # corner and edge patches included
    filled = noisy_linear_imputation(image, kept, noise=0.0)
    torch.testing.assert_close(filled, image, atol=1e-6, rtol=0)


def test_a_linear_ramp_is_filled_exactly_inside_the_image() -> None:
    rows, columns = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    image = torch.stack([0.1 * columns, -0.05 * rows + 0.2 * columns, rows / 31])  # (3, 32, 32), linear in each
    kept = patch_mask(32, 8, [5, 6, 9, 10])  # the 16 x 16 centre: no removed pixel touches the border
    filled = noisy_linear_imputation(image, kept, noise=0.0)
    torch.testing.assert_close(filled, image, atol=1e-5, rtol=0)
    kept_pixels = kept.bool().expand_as(image)
    assert torch.equal(filled[kept_pixels], image[kept_pixels])


def test_the_fill_is_not_a_flat_colour_nor_the_removed_content() -> None:
    """A bright square removed from a dark image is filled from its dark surroundings: its shape is gone."""
    image = torch.zeros(3, 32, 32)
    image[:, 8:24, 8:24] = 1.0
    kept = patch_mask(32, 8, [5, 6, 9, 10])
    filled = noisy_linear_imputation(image, kept, noise=0.0)
    assert filled[:, 8:24, 8:24].abs().max() < 1e-6  # every neighbour outside is 0


@pytest.mark.parametrize("share", [0.1, 0.6, 0.95])
def test_equals_pytorch_grad_cams_imputer_noise_included(share: float) -> None:
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(3, 48, 48, generator=generator)
    kept = (torch.rand(48, 48, generator=generator) > share).float()
    torch.manual_seed(11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the library hands NumPy torch tensors
        expected = road.NoisyLinearImputer()(image, kept)
    ours = noisy_linear_imputation(image, kept, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    torch.manual_seed(11)
    torch.testing.assert_close(noisy_linear_imputation(image, kept), expected, atol=1e-5, rtol=0)


def test_nothing_removed_gives_the_image_back() -> None:
    image = torch.randn(3, 16, 16)
    assert torch.equal(noisy_linear_imputation(image, torch.ones(16, 16)), image)
