"""Figures a student can read: attention overlays, head grids, training curves, predictions, Fig. 7 panels.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no global figure state, no GUI backend
needed), so the same figure can be saved by a script (`save_figure`) or shown by Streamlit (`st.pyplot(fig)`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from vitlab.atomic import atomic_write
from vitlab.data import denormalize


def to_display(image: Tensor) -> np.ndarray:
    """(3, H, W) uint8, or float normalised as the model expects -> (H, W, 3) float array in [0, 1]."""
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        pixels = image.float() / 255
    else:
        pixels = denormalize(image.float())  # undo the ImageNet normalisation (not "/2 + 0.5")
    return pixels.permute(1, 2, 0).numpy()


def upsample_map(grid_map: Tensor, size: int) -> np.ndarray:
    """(grid, grid) map -> (size, size) array scaled to [0, 1], bilinear, for drawing over an image."""
    grid_map = grid_map.detach().float().cpu()
    resized = F.interpolate(grid_map[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    # Scale by the map's own range: bilinear output stays inside it, and a flat map must stay flat (rounding
    # noise in `resized` would otherwise be stretched to [0, 1]).
    low, high = grid_map.min(), grid_map.max()
    if high == low:
        return torch.zeros(size, size).numpy()
    return ((resized - low) / (high - low)).clamp(0, 1).numpy()


def draw_overlay(
    ax: Axes,
    image: Tensor,
    grid_map: Tensor | None,
    *,
    title: str | None = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
    patch_grid: int | None = None,
) -> None:
    """Draw `image` (3, H, W) with a (grid, grid) map over it; `patch_grid` draws the patch boundaries."""
    pixels = to_display(image)
    ax.imshow(pixels)
    if grid_map is not None:
        ax.imshow(upsample_map(grid_map, pixels.shape[0]), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    if patch_grid:
        step = pixels.shape[0] / patch_grid
        for line in np.arange(step, pixels.shape[0] - 1e-6, step):
            ax.axhline(line - 0.5, color="white", linewidth=0.6, alpha=0.8)
            ax.axvline(line - 0.5, color="white", linewidth=0.6, alpha=0.8)
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def plot_overlay(image: Tensor, grid_map: Tensor, title: str, patch_grid: int | None = None) -> Figure:
    """One image with one attention map over it."""
    fig = Figure(figsize=(4, 4.3), layout="constrained")
    draw_overlay(fig.add_subplot(), image, grid_map, title=title, patch_grid=patch_grid)
    return fig


def plot_heads(image: Tensor, head_maps: Tensor, title: str) -> Figure:
    """All heads of one layer: `head_maps` (heads, grid, grid) drawn over `image` (3, H, W), one panel per head."""
    num_heads = head_maps.shape[0]
    cols = min(num_heads, 6)
    rows = math.ceil(num_heads / cols)
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows + 0.4), layout="constrained")
    fig.suptitle(title)
    for head, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        if head < num_heads:
            draw_overlay(ax, image, head_maps[head], title=f"head {head}")
        else:
            ax.set_axis_off()
    return fig


def plot_curves(history: Sequence[dict]) -> Figure:
    """Loss and accuracy per epoch from a vitlab `history.json` list (accuracies as fractions)."""
    epochs = [record["epoch"] for record in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss per epoch")
    acc_ax.plot(epochs, [100 * r["train_acc"] for r in history], "o-", label="train")
    acc_ax.plot(epochs, [100 * r["val_acc"] for r in history], "o-", label="validation")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy per epoch")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def plot_predictions(
    images: Tensor, labels: Tensor, predictions: Tensor, classes: Sequence[str], max_images: int = 16
) -> Figure:
    """Images (B, 3, H, W) with true and predicted labels; green when right, red when wrong."""
    count = min(max_images, images.shape[0])
    cols = min(count, 4)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(3 * cols, 3.2 * rows), layout="constrained")
    for index, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        if index >= count:
            ax.set_axis_off()
            continue
        truth, guess = classes[int(labels[index])], classes[int(predictions[index])]
        ax.imshow(to_display(images[index]))
        ax.set_title(f"true: {truth}\npred: {guess}", color="green" if truth == guess else "red", fontsize=9)
        ax.set_axis_off()
    return fig


def plot_mean_distance(distances: Tensor, patch_size: int) -> Figure:
    """Mean attention distance (layers, heads) as the ViT paper draws it: one dot per head, per layer."""
    layers, heads = distances.shape
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for head in range(heads):
        ax.scatter(np.arange(1, layers + 1), distances[:, head].cpu().numpy(), s=14, label=f"head {head}")
    ax.set(xlabel="encoder block (depth)", ylabel="mean attention distance (pixels)",
           title=f"How far each head looks ({patch_size}-px patches)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    if heads <= 12:
        ax.legend(fontsize=7, ncol=2)
    return fig


def plot_position_similarity(similarity: Tensor) -> Figure:
    """Position-embedding similarity (grid, grid, grid, grid) as a grid of (grid, grid) maps (ViT Fig. 7 centre)."""
    grid = similarity.shape[0]
    fig = Figure(figsize=(7, 7.3), layout="constrained")
    fig.suptitle("Cosine similarity of each position's embedding with all others")
    for (row, col), ax in np.ndenumerate(np.array(fig.subplots(grid, grid, squeeze=False), dtype=object)):
        ax.imshow(similarity[row, col].cpu().numpy(), cmap="viridis", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if col == 0:
            ax.set_ylabel(str(row + 1), fontsize=7)
        if row == grid - 1:
            ax.set_xlabel(str(col + 1), fontsize=7)
    fig.supxlabel("input patch column")
    fig.supylabel("input patch row")
    return fig


def plot_filter_components(components: Tensor, explained: Tensor) -> Figure:
    """Principal components (k, 3, p, p) of the patch-embedding filters, scaled to [0, 1] (ViT Fig. 7 left)."""
    count = components.shape[0]
    cols = min(count, 7)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(1.4 * cols, 1.6 * rows + 0.5), layout="constrained")
    fig.suptitle("Principal components of the patch-embedding filters")
    for index, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        ax.set_axis_off()
        if index < count:
            ax.imshow(components[index].permute(1, 2, 0).cpu().numpy())
            ax.set_title(f"PC{index + 1} {100 * explained[index]:.0f}%", fontsize=7)
    return fig


def style_depth_axes(ax: Axes, ylabel: str, **settings) -> None:
    """A by-depth line plot's axes: encoder blocks on x (whole numbers), `ylabel` on y, a light grid, a legend.

    `settings` go to `ax.set` (title, ylim, ...).
    """
    ax.set(xlabel="encoder block (depth)", ylabel=ylabel, **settings)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a figure as PNG, creating the folder, and return the path; written atomically (vitlab.atomic)."""
    return atomic_write(path, lambda file: fig.savefig(file, dpi=dpi, format="png"))  # never a half-drawn PNG
