"""The tour's model-level figures and token views, for the steps the per-image maps do not cover.

    png = filter_components_png(model)        # bytes: the patch-embedding filters' principal components (lesson 2)
    png = position_similarity_png(model)      # bytes: position-embedding similarity, a grid of grids (lesson 3)
    tokens = token_views(model, image)        # TokenViews: per-block patch norms and DINO-style PCA colours

The analyses are vitlab.analysis.attention's, vitlab.analysis.norms' and vitlab.analysis.projections'; the figures are
vitlab.plotting's.
Each figure is rendered once per model (the page caches the bytes).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.norms import token_norms
from vitlab.analysis.projections import patch_pca_rgb
from vitlab.analysis.structure import patch_filter_components, position_embedding_similarity
from vitlab.capture import capture_forward
from vitlab.explorer.views import _MODEL_LOCK, model_inputs
from vitlab.plotting import plot_filter_components, plot_position_similarity

FILTER_COMPONENTS = 14  # two rows of seven: enough to see the smooth first components give way to noise


@dataclass(frozen=True)
class TokenViews:
    """What one image's token states look like, block by block (no attention: the states themselves)."""

    norms: Tensor  # (blocks, grid, grid): each patch token's L2 norm after each block
    class_norms: Tensor  # (blocks,): the class token's norm after each block
    pca_rgb: Tensor  # (blocks, grid, grid, 3) in [0, 1]: each block's patch features' first 3 components as RGB


def _png(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def filter_components_png(model: VisionTransformer, count: int = FILTER_COMPONENTS) -> bytes:
    """vitlab.plotting's figure of the first `count` principal components of `conv_proj`'s filters, as PNG."""
    components, explained = patch_filter_components(model, count)  # (k, 3, p, p), (k,)
    return _png(plot_filter_components(components, explained))


def position_similarity_png(model: VisionTransformer) -> bytes:
    """vitlab.plotting's grid of position-embedding similarity maps (grid, grid, grid, grid), as PNG."""
    return _png(plot_position_similarity(position_embedding_similarity(model)), dpi=80)


@torch.no_grad()
def token_views(model: VisionTransformer, image: Tensor) -> TokenViews:
    """One captured forward pass of `image` uint8 (3, H, W): every block's token norms and patch-feature PCA."""
    with _MODEL_LOCK:  # capture hooks the shared model: one pass at a time (see vitlab.explorer.views)
        _, captured = capture_forward(model, model_inputs(model, image))
    states = [state.float().cpu() for state in captured.hidden_states]  # (1, T, hidden) per block
    prefix, grid = captured.geometry.num_prefix_tokens, captured.geometry.grid_size
    norms = token_norms(states)[:, 0]  # (blocks, T)
    rgb = torch.cat([patch_pca_rgb(state[:, prefix:], grid) for state in states])  # (blocks, grid, grid, 3)
    return TokenViews(
        norms=norms[:, prefix:].reshape(len(states), grid, grid),  # (blocks, grid, grid)
        class_norms=norms[:, 0],
        pca_rgb=rgb,
    )
