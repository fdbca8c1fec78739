"""Tests for vitlab.plotting: figures hold the data they were given, images are shown with their true colours,
and every figure saves as a real PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from vitlab.plotting import (
    draw_overlay,
    plot_curves,
    plot_filter_components,
    plot_heads,
    plot_mean_distance,
    plot_overlay,
    plot_position_similarity,
    plot_predictions,
    save_figure,
    to_display,
    upsample_map,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Written out here, not imported from vitlab, so a wrong constant there cannot hide.
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def known_pixels(height: int = 8, width: int = 12) -> torch.Tensor:
    """(3, H, W) in [0, 1], including the extremes 0 and 1."""
    pixels = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    pixels[:, 0, 0] = 0.0
    pixels[:, -1, -1] = 1.0
    return pixels


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - IMAGENET_MEAN) / IMAGENET_STD


def assert_saves_png(fig: Figure, path: Path) -> None:
    saved = save_figure(fig, path)
    assert Path(saved) == path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


# ---------------------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------------------


def test_to_display_undoes_imagenet_normalisation():
    pixels = known_pixels()
    shown = to_display(normalised(pixels))
    assert isinstance(shown, np.ndarray)
    assert shown.shape == (8, 12, 3)  # (H, W, 3): channels last, height and width not swapped
    np.testing.assert_allclose(shown, pixels.permute(1, 2, 0).numpy(), atol=1e-6, rtol=0)


def test_to_display_of_uint8_scales_to_unit_range():
    image = torch.zeros(3, 4, 6, dtype=torch.uint8)
    image[0] = 255
    image[1, 1, 2] = 51
    image[2, 3, 5] = 128
    shown = to_display(image)
    assert shown.shape == (4, 6, 3)
    expected = np.zeros((4, 6, 3), dtype=np.float32)
    expected[..., 0] = 1.0
    expected[1, 2, 1] = 0.2
    expected[3, 5, 2] = 128 / 255
    np.testing.assert_allclose(shown, expected, atol=1e-7, rtol=0)


def test_to_display_does_not_touch_a_tensor_that_requires_grad():
    image = normalised(known_pixels()).requires_grad_(True)
    shown = to_display(image)
    np.testing.assert_allclose(shown, known_pixels().permute(1, 2, 0).numpy(), atol=1e-6, rtol=0)


def test_upsample_map_scales_to_unit_range():
    grid_map = torch.tensor([[0.0, 2.0], [4.0, 8.0]])
    up = upsample_map(grid_map, 16)
    assert up.shape == (16, 16)
    assert up.min() == pytest.approx(0.0) and up.max() == pytest.approx(1.0)
    # Bilinear keeps the corners' order: top-left lowest, bottom-right highest.
    assert up[0, 0] == pytest.approx(0.0) and up[-1, -1] == pytest.approx(1.0)
    assert up[0, -1] < up[-1, 0]


@pytest.mark.parametrize("value", [15 / (16 * 65), 0.7], ids=["uniform_rollout", "0.7"])
def test_upsample_map_of_a_constant_map_is_flat(value: float):
    """A constant map (uniform attention's rollout on vit_tiny is 15 / (16 * 65) everywhere) has no structure to show:
    the drawn overlay must be flat, not float32 rounding noise of bilinear interpolation stretched to [0, 1]."""
    flat = upsample_map(torch.full((8, 8), value), 32)
    assert flat.shape == (32, 32)
    assert np.isfinite(flat).all()
    assert np.ptp(flat) < 1e-3, f"constant map drawn with values {np.unique(flat)}"


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------


def test_plot_overlay_shows_the_image_and_the_map(tmp_path: Path):
    pixels = known_pixels(16, 16)
    grid_map = torch.arange(16.0).view(4, 4)
    fig = plot_overlay(normalised(pixels), grid_map, title="class token, layer 3", patch_grid=4)

    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title() == "class token, layer 3"
    image_layer, map_layer = ax.images
    np.testing.assert_allclose(image_layer.get_array(), pixels.permute(1, 2, 0).numpy(), atol=1e-6)
    np.testing.assert_allclose(map_layer.get_array(), upsample_map(grid_map, 16), atol=1e-6)
    assert len(ax.lines) == 2 * 3  # a 4x4 patch grid has 3 inner lines each way
    assert_saves_png(fig, tmp_path / "nested" / "folder" / "overlay.png")


def test_draw_overlay_without_a_map_draws_only_the_image():
    fig = Figure()
    ax = fig.add_subplot()
    draw_overlay(ax, torch.zeros(3, 8, 8, dtype=torch.uint8), None)
    assert len(ax.images) == 1
    assert len(ax.lines) == 0


def test_plot_heads_one_panel_per_head(tmp_path: Path):
    maps = torch.rand(8, 4, 4, generator=torch.Generator().manual_seed(1))
    fig = plot_heads(normalised(known_pixels(16, 16)), maps, title="layer 2")

    assert isinstance(fig, Figure)
    assert len(fig.axes) == 12  # 6 columns x 2 rows, 4 left empty
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:8] == [f"head {h}" for h in range(8)]
    assert all(len(ax.images) == 2 for ax in fig.axes[:8])
    assert all(len(ax.images) == 0 for ax in fig.axes[8:])
    assert_saves_png(fig, tmp_path / "heads.png")


def test_plot_curves_plots_the_history(tmp_path: Path):
    history = [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 2.5, "train_acc": 0.40, "val_acc": 0.30},
        {"epoch": 2, "train_loss": 1.0, "val_loss": 1.5, "train_acc": 0.70, "val_acc": 0.55},
    ]
    fig = plot_curves(history)

    assert isinstance(fig, Figure)
    loss_ax, acc_ax = fig.axes
    train_loss, val_loss = loss_ax.lines
    assert list(train_loss.get_xdata()) == [1, 2]
    assert list(train_loss.get_ydata()) == [2.0, 1.0]
    assert list(val_loss.get_ydata()) == [2.5, 1.5]
    train_acc, val_acc = acc_ax.lines
    np.testing.assert_allclose(train_acc.get_ydata(), [40.0, 70.0])  # fractions shown as percent
    np.testing.assert_allclose(val_acc.get_ydata(), [30.0, 55.0])
    assert_saves_png(fig, tmp_path / "curves.png")


def test_plot_predictions_colours_right_and_wrong(tmp_path: Path):
    images = torch.stack([normalised(known_pixels(16, 16))] * 3)
    labels = torch.tensor([0, 1, 2])
    predictions = torch.tensor([0, 2, 2])
    fig = plot_predictions(images, labels, predictions, ["circle", "square", "triangle"])

    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 3
    titles = [ax.title for ax in shown]
    assert titles[0].get_text() == "true: circle\npred: circle"
    assert titles[1].get_text() == "true: square\npred: triangle"
    assert [to_rgba(t.get_color()) for t in titles] == [to_rgba("green"), to_rgba("red"), to_rgba("green")]
    np.testing.assert_allclose(shown[0].images[0].get_array(), known_pixels(16, 16).permute(1, 2, 0).numpy(), atol=1e-6)
    assert_saves_png(fig, tmp_path / "predictions.png")


def test_plot_predictions_caps_the_count():
    images = torch.zeros(20, 3, 8, 8, dtype=torch.uint8)
    labels = torch.zeros(20, dtype=torch.long)
    fig = plot_predictions(images, labels, labels, ["a"], max_images=5)
    assert sum(1 for ax in fig.axes if ax.images) == 5


def test_plot_mean_distance_one_dot_per_head_and_layer(tmp_path: Path):
    distances = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])  # (layers, heads)
    fig = plot_mean_distance(distances, patch_size=16)

    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.collections) == 3  # one scatter per head
    for head, collection in enumerate(ax.collections):
        np.testing.assert_allclose(collection.get_offsets(), [[1, distances[0, head]], [2, distances[1, head]]])
    assert "16-px" in ax.get_title()
    assert_saves_png(fig, tmp_path / "distance.png")


def test_plot_position_similarity_one_panel_per_position(tmp_path: Path):
    similarity = torch.rand(3, 3, 3, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    fig = plot_position_similarity(similarity)

    assert isinstance(fig, Figure)
    assert len(fig.axes) == 9
    # Row-major panels: panel (1, 2) shows the similarity map of position (1, 2).
    np.testing.assert_allclose(fig.axes[1 * 3 + 2].images[0].get_array(), similarity[1, 2].numpy())
    assert_saves_png(fig, tmp_path / "similarity.png")


def test_plot_filter_components(tmp_path: Path):
    components = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    explained = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    fig = plot_filter_components(components, explained)

    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5
    assert [ax.get_title() for ax in shown] == ["PC1 50%", "PC2 20%", "PC3 15%", "PC4 10%", "PC5 5%"]
    np.testing.assert_allclose(shown[2].images[0].get_array(), components[2].permute(1, 2, 0).numpy())
    assert_saves_png(fig, tmp_path / "filters.png")
