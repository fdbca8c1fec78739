"""Two models on the same image, side by side: where does each look, and what changed between them?

    first, second = analyse_image(base, image), analyse_image(demo, image)    # vitlab.explorer.views
    comparison = compare_maps(first, second, "cls", layer=3)                 # heads averaged
    comparison.difference                                                     # (grid, grid): second - first

Both maps are shares of attention: each is divided by its sum over the patches, so a map sums to 1 whatever the
model gives its class token and whatever its grid. The difference is then in the same units for both (positive:
the second model puts more of its patch attention there). When the grids differ (an 8x8 vit_tiny against a 14x14
ViT-B/16), the coarser map is resampled bilinearly (cell centres aligned, `align_corners=False`, as the overlays
are drawn) to the finer grid before it is normalised, so both cover the image the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.errors import VitlabError
from vitlab.explorer.views import ImageViews

COMPARE_VIEWS = ("cls", "rollout")  # the views compare_maps can put side by side


@dataclass(frozen=True)
class Comparison:
    """The same view of two models on one finer grid, each summing to 1 over the patches, and their difference."""

    first: Tensor  # (grid, grid)
    second: Tensor  # (grid, grid)
    difference: Tensor  # (grid, grid): second - first, exactly


def compare_maps(
    first: ImageViews, second: ImageViews, view: str, layer: int | None = None, head: int | None = None
) -> Comparison:
    """One view of two analyses (`analyse_image` of two models on the same image), on a common grid.

    Args:
        view: "cls" (the class token's attention in block `layer`, head `head`) or "rollout" (mean fusion,
            nothing discarded; `layer` and `head` must be None).
        layer: 0-based block, the same in both models; None: each model's last block (models of different depth
            are compared at their last blocks).
        head: a head of both models; None: the mean over each model's heads.
    Returns:
        A Comparison on the finer of the two grids.

    Raises:
        VitlabError: unknown view, a layer or head that one of the models does not have.
    """
    if view not in COMPARE_VIEWS:
        raise VitlabError(f"Unknown comparison view {view!r}. Choose one of: {', '.join(COMPARE_VIEWS)}.")
    if view == "rollout" and (layer is not None or head is not None):
        raise VitlabError("Rollout runs through every block and fuses all heads: leave layer and head unset.")
    maps = [_view_map(views, view, layer, head, name) for views, name in ((first, "first"), (second, "second"))]
    grid = max(m.shape[-1] for m in maps)
    left, right = (_as_share(_resample(m, grid)) for m in maps)  # (grid, grid) each
    return Comparison(first=left, second=right, difference=right - left)


def _view_map(views: ImageViews, view: str, layer: int | None, head: int | None, name: str) -> Tensor:
    """(grid, grid): one analysis's map for the comparison, with the layer and head checked against its model."""
    if view == "rollout":
        return views.rollout_map("mean", 0.0)
    block = views.num_layers - 1 if layer is None else layer
    if not 0 <= block < views.num_layers:
        raise VitlabError(f"Block {layer} does not exist in the {name} model: its blocks are 0 to "
                          f"{views.num_layers - 1}. Leave layer unset to compare the last blocks.")
    if head is not None and not 0 <= head < views.num_heads:
        raise VitlabError(f"Head {head} does not exist in the {name} model: its heads are 0 to "
                          f"{views.num_heads - 1}. Leave head unset to compare the mean over heads.")
    head_maps = views.head_maps(block)  # (heads, grid, grid)
    return head_maps.mean(dim=0) if head is None else head_maps[head]


def _resample(grid_map: Tensor, grid: int) -> Tensor:
    """(g, g) -> (grid, grid), bilinear with cell centres aligned; unchanged when g == grid."""
    if grid_map.shape[-1] == grid:
        return grid_map.float()
    resized = F.interpolate(grid_map.float()[None, None], size=(grid, grid), mode="bilinear", align_corners=False)
    return resized[0, 0]  # (1, 1, grid, grid) -> (grid, grid)


def _as_share(grid_map: Tensor) -> Tensor:
    """(grid, grid) -> (grid, grid) summing to 1: each patch's share of the map (an all-zero map stays zero)."""
    total = grid_map.sum()
    return grid_map / total if total > 0 else torch.zeros_like(grid_map)
