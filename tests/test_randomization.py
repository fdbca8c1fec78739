"""Tests for vitlab.analysis.randomization: Adebayo et al.'s cascading model-parameter randomisation.

Known answers: a "map" that never looks at the weights (an edge detector on the image) keeps a correlation of exactly
1 at every level, so it fails the check; a gradient map of the trained shortcut model loses its correlation, so it
passes; attention does not depend on the head, so re-initialising the head alone leaves it exactly as it was.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab import randomization_check
from vitlab.analysis.randomization import cascade, spearman
from vitlab.model import build_model

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def edge_map(model, images: Tensor, targets: Tensor) -> Tensor:
    """Sobel gradient magnitude of the image, summed per patch: (B, patches). Uses no weight of the model."""
    grey = images.mean(dim=1, keepdim=True)  # (B, 1, S, S)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.T])[:, None]  # (2, 1, 3, 3): horizontal and vertical edges
    edges = F.conv2d(grey, kernels, padding=1).norm(dim=1, keepdim=True)  # (B, 1, S, S)
    return F.avg_pool2d(edges, model.patch_size).flatten(1)  # (B, patches)


def test_spearman_equals_scipys_with_ties_and_calls_a_constant_row_zero() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, 6, (4, 30), generator=generator).float()  # many ties
    second = first + torch.randn(4, 30, generator=generator) * 3
    expected = [stats.spearmanr(a.numpy(), b.numpy()).statistic for a, b in zip(first, second, strict=True)]
    assert spearman(first, second).tolist() == pytest.approx(expected, abs=1e-6)
    assert spearman(first, first).tolist() == pytest.approx([1.0] * 4)
    assert spearman(first, -first).tolist() == pytest.approx([-1.0] * 4)
    assert spearman(torch.ones(1, 30), first[:1]).tolist() == [0.0]


def test_the_cascade_goes_top_down_and_ends_with_nothing_trained_left() -> None:
    model = build_model("vit_tiny", num_classes=3, pretrained=False)
    levels = cascade(len(model.encoder.layers))
    assert [name for name, _ in levels] == ["head", "block 4", "block 3", "block 2", "block 1", "embeddings"]
    prefixes = tuple(prefix for _, level_prefixes in levels for prefix in level_prefixes)
    assert all(name.startswith(prefixes) for name in model.state_dict())  # every weight is random at the end


def test_a_deep_models_cascade_groups_the_blocks_below_the_last_and_randomises_each_once() -> None:
    levels = cascade(12)
    assert [name for name, _ in levels] == ["head", "block 12", "blocks 8-11", "blocks 4-7", "blocks 1-3",
                                            "embeddings"]
    blocks = [prefix for _, prefixes in levels for prefix in prefixes if prefix.startswith("encoder.layers.")]
    assert sorted(blocks) == sorted(f"encoder.layers.encoder_layer_{index}." for index in range(12))
    assert [name for name, _ in cascade(1)] == ["head", "block 1", "embeddings"]
    assert [name for name, _ in cascade(6)] == ["head", "block 6", "blocks 4-5", "blocks 2-3", "block 1",
                                                "embeddings"]


@pytest.mark.slow
def test_an_edge_detector_fails_and_a_gradient_map_passes(shortcut) -> None:
    images = shortcut.test_images[:12]
    state = {name: value.clone() for name, value in shortcut.model.state_dict().items()}
    edges = randomization_check(shortcut.model, images, edge_map)
    torch.testing.assert_close(edges.correlations, torch.ones(6, 12))  # the image, not the model
    gradients = randomization_check(shortcut.model, images, "input_x_gradient")
    assert gradients.mean.max() < 0.6  # the map changes as soon as the head is random, and more below
    assert gradients.mean[-1] < 0.2
    for result in (edges, gradients):
        assert abs(result.random_baseline) < 0.1  # the baseline beside it: random maps correlate about 0
    assert all(torch.equal(value, shortcut.model.state_dict()[name]) for name, value in state.items())


def test_attention_ignores_the_head_and_the_check_leaves_everything_alone() -> None:
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=4, pretrained=True).eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    with torch.inference_mode():
        result = randomization_check(model, images, "attention", seed=5)
    assert result.levels == ("head", "block 4", "block 3", "block 2", "block 1", "embeddings")
    assert result.correlations[0].tolist() == pytest.approx([1.0] * 3)  # the head is not in the attention
    assert result.mean[1] < 0.9  # the last block's attention is
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in weights.items())
    again = randomization_check(model, images, "attention", seed=5)
    assert torch.equal(again.correlations, result.correlations)  # seeded
