"""Known-answer tests for vitlab.analysis.projections: PCA against an eigendecomposition, planted directions, RGB
maps."""

from __future__ import annotations

import pytest
import torch

from vitlab.analysis.projections import class_separation, patch_pca_rgb, pca
from vitlab.capture import capture_forward
from vitlab.errors import VitlabError
from vitlab.model import build_model

pytestmark = pytest.mark.usefixtures("single_thread")


def correlated(n: int, dim: int, seed: int) -> torch.Tensor:
    """(n, dim) float64 data with unequal variances in random directions."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return torch.randn(n, dim, generator=generator, dtype=torch.float64) @ mixing + 3.0


def test_components_are_orthonormal_and_ordered_by_variance():
    result = pca(correlated(300, 10, seed=0), k=6)

    torch.testing.assert_close(result.components @ result.components.T, torch.eye(6, dtype=torch.float64))
    assert (result.explained_variance[:-1] >= result.explained_variance[1:]).all()
    assert 0 < result.explained_ratio.sum() <= 1


def test_pca_matches_the_eigenvectors_of_the_covariance_up_to_sign():
    x = correlated(200, 7, seed=1)

    result = pca(x, k=7)

    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(x.T))  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1).T  # (7,), (7, 7) rows, descending
    torch.testing.assert_close(result.explained_variance, eigenvalues)
    signs = (result.components * eigenvectors).sum(dim=1).sign()[:, None]  # (7, 1)
    torch.testing.assert_close(result.components, signs * eigenvectors)
    assert result.total_variance == pytest.approx(eigenvalues.sum().item())
    torch.testing.assert_close(result.project(x), (x - x.mean(dim=0)) @ result.components.T)


def test_the_first_component_recovers_a_planted_dominant_direction():
    generator = torch.Generator().manual_seed(2)
    direction = torch.nn.functional.normalize(torch.randn(16, generator=generator), dim=0)
    x = 0.1 * torch.randn(500, 16, generator=generator) + 5 * torch.randn(500, 1, generator=generator) * direction

    first = pca(x, k=2).components[0]

    assert abs(first @ direction) > 0.999


def test_the_sign_convention_makes_the_largest_entry_positive_and_the_result_repeatable():
    x = correlated(100, 5, seed=3)

    result, flipped = pca(x, k=3), pca(-x, k=3)  # -x has the same components up to sign

    largest = result.components.gather(1, result.components.abs().argmax(dim=1, keepdim=True))
    assert (largest > 0).all()
    torch.testing.assert_close(result.components, flipped.components)


def test_class_separation_is_one_for_collapsed_classes_and_zero_for_coinciding_means():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    collapsed = torch.tensor([[0.0, 0], [0, 0], [5, 1], [5, 1], [-2, 3], [-2, 3]])
    same_means = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1], [2, 2], [-2, -2]])

    assert class_separation(collapsed, labels) == pytest.approx(1.0)
    assert class_separation(same_means, labels) == pytest.approx(0.0)


def test_patch_pca_rgb_colours_two_kinds_of_patch_apart():
    generator = torch.Generator().manual_seed(4)
    grid, hidden = 4, 12
    is_object = torch.zeros(2, grid * grid)
    is_object[0, :5], is_object[1, 10:] = 1, 1  # (B, patches)
    direction = torch.nn.functional.normalize(torch.randn(hidden, generator=generator), dim=0)
    states = 0.05 * torch.randn(2, grid * grid, hidden, generator=generator) + 4 * is_object[..., None] * direction

    rgb = patch_pca_rgb(states, grid)

    assert rgb.shape == (2, grid, grid, 3) and rgb.min() >= 0 and rgb.max() <= 1
    red = rgb[..., 0].reshape(2, -1)  # the first component: object against background
    gap = red[is_object == 1].mean() - red[is_object == 0].mean()
    assert abs(gap) > 0.9
    per_image = patch_pca_rgb(states, grid, per_image=True)
    assert torch.allclose(per_image.amin(dim=(1, 2)), torch.zeros(2, 3))  # each image spans [0, 1] on its own
    assert torch.allclose(per_image.amax(dim=(1, 2)), torch.ones(2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit_tiny", "vit_b_16"])
def test_patch_pca_rgb_on_random_vit_tiny_and_vit_b_16_states(arch: str):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=3, pretrained=False).eval()
    with torch.no_grad():
        _, captured = capture_forward(model, torch.randn(3, 3, model.image_size, model.image_size))
    patches = captured.hidden_states[-1][:, 1:]  # (3, patches, hidden)
    grid = captured.geometry.grid_size

    rgb = patch_pca_rgb(patches, grid)

    projected = pca(patches.flatten(0, 1), 3).project(patches.flatten(0, 1))  # (3 * patches, 3)
    scaled = (projected - projected.amin(dim=0)) / (projected.amax(dim=0) - projected.amin(dim=0))
    torch.testing.assert_close(rgb, scaled.reshape(3, grid, grid, 3))


def test_bad_input_gives_a_clear_vitlab_error():
    x = torch.randn(5, 3)

    with pytest.raises(VitlabError, match="choose k from 1 to 3"):
        pca(x, k=4)
    with pytest.raises(VitlabError, match="choose k from 1 to 4"):
        pca(torch.randn(5, 10), k=5)  # 5 centred rows span only 4 directions
    with pytest.raises(VitlabError, match="choose k from 1 to 3"):
        pca(x, k=0)
    with pytest.raises(VitlabError, match="at least 2 rows"):
        pca(x[:0], k=1)
    with pytest.raises(VitlabError, match=r"rows of 3 features"):
        pca(x, k=2).project(torch.randn(4, 2))
    with pytest.raises(VitlabError, match=r"\(B, 8\^2 = 64, hidden\)"):
        patch_pca_rgb(torch.randn(2, 65, 16), grid_size=8)
    with pytest.raises(VitlabError, match="B >= 1"):
        patch_pca_rgb(torch.randn(0, 64, 16), grid_size=8)
