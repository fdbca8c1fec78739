"""The fractal generator, the SimMIM objective and the structure measurements, each against a known answer."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import VisionTransformer

from vitlab.analysis.structure import (
    distance_ratios,
    position_embedding_similarity,
    position_embedding_spearman,
    ranks,
    spearman,
)
from vitlab.data.fractals import MAX_MAPS, make_systems, render
from vitlab.training.simmim import MaskedImageModel


def small_vit(layers: int = 2, heads: int = 2) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=4, num_layers=layers, num_heads=heads, hidden_dim=16,
                             mlp_dim=32, num_classes=10)


def test_systems_are_contractive_and_their_probabilities_sum_to_one() -> None:
    systems = make_systems(50, seed=3)
    assert systems.maps.shape == (50, MAX_MAPS, 2, 3)
    largest_stretch = torch.linalg.matrix_norm(systems.maps[..., :2], ord=2)  # (K, M) spectral norms
    assert float(largest_stretch.max()) < 1.0  # every map contracts, so every attractor exists
    torch.testing.assert_close(systems.probabilities.sum(dim=1), torch.ones(50))
    assert int((systems.probabilities > 0).sum(dim=1).min()) >= 2


def test_rendering_is_seeded_and_follows_the_labels() -> None:
    systems = make_systems(10, seed=0)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    first, first_labels = render(systems, 8, torch.Generator().manual_seed(5), labels=labels)
    again, _ = render(systems, 8, torch.Generator().manual_seed(5), labels=labels)
    other, _ = render(systems, 8, torch.Generator().manual_seed(6), labels=labels)
    assert first.dtype == torch.uint8 and first.shape == (8, 3, 32, 32)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first_labels, labels)
    _, drawn = render(systems, 200, torch.Generator().manual_seed(0))
    assert drawn.min() >= 0 and drawn.max() < 10 and len(drawn.unique()) == 10


def test_fractals_cover_the_edges_as_often_as_the_middle() -> None:
    images, _ = render(make_systems(20, seed=1), 256, torch.Generator().manual_seed(2))
    brightness = images.float().min(dim=1).values  # (N, S, S): darkest channel, high only on the fractal
    light = brightness > 150  # (N, S, S) fractal pixels
    share = light.float().mean(dim=(1, 2))  # (N,)
    assert float(share.mean()) > 0.04 and float(share.max()) < 0.7
    edges = torch.cat([light[:, 0], light[:, -1], light[:, :, 0], light[:, :, -1]], dim=1).float().mean()
    middle = light[:, 12:20, 12:20].float().mean()
    # No position is special: a centred fractal (the first design) had its edge pixels lit 4x less than the middle.
    assert 0.6 < float(edges / middle) < 1.6


def test_random_mask_hides_half_the_patches_in_two_by_two_squares() -> None:
    objective = MaskedImageModel(small_vit(), mask_ratio=0.5, mask_block=2)
    mask = objective.random_mask(6, torch.Generator().manual_seed(0))  # (6, 64)
    assert mask.shape == (6, 64) and torch.equal(mask.sum(dim=1), torch.full((6,), 32))
    grid = mask.view(6, 8, 8)
    assert torch.equal(grid, grid[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2))


def test_masked_patches_cannot_leak_into_the_prediction() -> None:
    # The encoder sees the mask token instead of a masked patch: changing that patch's pixels changes nothing.
    objective = MaskedImageModel(small_vit()).eval()
    images = torch.randn(2, 3, 32, 32)
    mask = objective.random_mask(2, torch.Generator().manual_seed(1))
    pixel_mask = mask.view(2, 1, 8, 1, 8, 1).expand(2, 3, 8, 4, 8, 4).reshape(2, 3, 32, 32)
    changed = torch.where(pixel_mask, torch.randn_like(images), images)
    with torch.no_grad():
        torch.testing.assert_close(objective(images, mask), objective(changed, mask), rtol=0, atol=0)
        assert not torch.equal(objective(images, mask)[0], objective(changed, ~mask)[0])


def test_the_pixel_loss_counts_only_masked_patches() -> None:
    objective = MaskedImageModel(small_vit(), class_weight=0.0)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    mask = objective.random_mask(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        pixels, _ = objective(images, mask)
        target = images.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, 3, 8, 8, 4, 4)
        target = target.permute(0, 2, 3, 4, 5, 1).reshape(2, 64, 48)  # (B, patches, p*p*3)
        expected = (pixels - target).abs().mean(dim=-1)[mask].mean()
        total, parts = objective.loss(images, labels, mask)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(parts["pixel"], expected)


def test_ranks_average_ties_and_spearman_known_answers() -> None:
    assert ranks(torch.tensor([10.0, 30.0, 20.0, 20.0])).tolist() == [0.0, 3.0, 1.5, 1.5]
    x = torch.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -torch.exp(x)) == pytest.approx(-1.0)
    # With ties: Pearson's r of the average ranks, computed by hand.
    rx, ry = torch.tensor([0.0, 1.5, 1.5, 3.0]), torch.tensor([0.0, 1.0, 2.0, 3.0])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    expected = float((rx * ry).sum() / (rx.norm() * ry.norm()))
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(expected)


def test_position_spearman_is_strongly_negative_for_a_grid_and_near_zero_for_noise() -> None:
    vit = small_vit()
    with torch.no_grad():
        # Embeddings that are the patch's (row, col) on a circle-free smooth code: cos/sin of its coordinates.
        rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        angle = torch.stack([rows.flatten(), cols.flatten()], dim=1) * 0.35  # (64, 2)
        code = torch.cat([angle.cos(), angle.sin()], dim=1)  # (64, 4)
        vit.encoder.pos_embedding[0, 1:] = torch.cat([code, torch.zeros(64, 12)], dim=1)
    assert position_embedding_spearman(vit) < -0.9
    torch.manual_seed(0)
    with torch.no_grad():
        vit.encoder.pos_embedding.normal_()
    assert abs(position_embedding_spearman(vit)) < 0.1
    assert position_embedding_similarity(vit).shape == (8, 8, 8, 8)


def test_distance_ratios_are_one_for_uniform_attention() -> None:
    vit = small_vit(layers=2, heads=2)
    with torch.no_grad():
        for block in vit.encoder.layers:
            block.self_attention.in_proj_weight[:32] = 0  # queries and keys 0: every score equal, uniform rows
            block.self_attention.in_proj_bias[:32] = 0
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(distance_ratios(vit, images, batch_size=2), torch.ones(2, 2))
