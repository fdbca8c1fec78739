"""What a pretrained ViT has learned, in three numbers: position-embedding locality, local heads early, global late.

These are the ViT paper's Fig. 7 findings turned into measurements, used to check the shipped pretrained base:

    position_embedding_spearman(model)          # < 0: nearby positions have similar embeddings (random init: ~0)
    distance_ratios(model, images)              # (blocks, heads): mean attention distance / uniform attention's

A ratio of 1 is a head that looks as far as uniform attention would; 0.5 is a head that looks half as far (a local
head, like a convolution); the ViT paper finds local heads in the first blocks and only global heads at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.attention import mean_attention_distance, patch_distances
from vitlab.capture import capture, geometry


def ranks(values: Tensor) -> Tensor:
    """Ranks 0..n-1 of a 1-D tensor, ties sharing their average rank (what Spearman's correlation needs)."""
    order = values.argsort()
    sorted_values = values[order]
    # Each run of equal values gets the mean of the positions it spans.
    _, inverse, counts = sorted_values.unique_consecutive(return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)  # (groups,)
    mean_position = ends - (counts.to(torch.float64) + 1) / 2  # (groups,) average 0-based position of each run
    result = torch.empty_like(values, dtype=torch.float64)
    result[order] = mean_position[inverse]
    return result


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors of equal length: Pearson's r of their (tie-averaged) ranks."""
    rx, ry = ranks(x.flatten()), ranks(y.flatten())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


def position_embedding_spearman(model: VisionTransformer) -> float:
    """Spearman correlation between two patch positions' embedding similarity and their distance on the grid.

    Every pair of distinct patch positions counts once. -1: the closer two positions, the more alike their
    embeddings, without exception; 0: no relation (a random initialisation). The class token is left out.
    """
    grid = geometry(model).grid_size
    similarity = position_embedding_similarity(model).reshape(grid**2, grid**2)  # (P, P) cosine similarities
    distance = patch_distances(grid, 1)  # (P, P) in patch units
    upper = torch.triu_indices(grid**2, grid**2, offset=1)  # each pair of distinct positions once
    return spearman(similarity[upper[0], upper[1]], distance[upper[0], upper[1]])


def uniform_distance(model: VisionTransformer) -> float:
    """The mean attention distance (pixels) of uniform attention over the patches: the farthest 'typical' reach."""
    geo = geometry(model)
    return float(patch_distances(geo.grid_size, geo.patch_size).mean())


@torch.no_grad()
def distance_ratios(model: VisionTransformer, images: Tensor, batch_size: int = 250) -> Tensor:
    """Each head's mean attention distance over `images` (normalised, (N, 3, S, S)) / uniform attention's.

    Patch-to-patch attention only (the class token is dropped as query and key), averaged over queries and images.
    Returns (blocks, heads).
    """
    model.eval()
    total = None
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        with capture(model) as cap:
            model(batch)
        distances = mean_attention_distance(cap.attentions, model.patch_size) * len(batch)  # (blocks, heads)
        total = distances if total is None else total + distances
    return total / len(images) / uniform_distance(model)


def position_embedding_similarity(model: VisionTransformer) -> Tensor:
    """Cosine similarity of each patch position's learned embedding with every other (ViT paper, Fig. 7 centre).

    Returns:
        (grid, grid, grid, grid): entry [r, c] is the (grid, grid) similarity map of position (r, c) with all
        positions. The class token's embedding (index 0) is left out.
    """
    prefix = 1  # torchvision's ViT: one class token before the patches
    embeddings = model.encoder.pos_embedding[0, prefix:].detach()  # (1, T, D) -> (patches, D)
    embeddings = F.normalize(embeddings, dim=-1)
    similarity = embeddings @ embeddings.T  # (patches, patches)
    grid = int(round(embeddings.shape[0] ** 0.5))
    return rearrange(similarity, "(r c) (gr gc) -> r c gr gc", r=grid, gr=grid)


def patch_filter_components(model: VisionTransformer, num_components: int = 28) -> tuple[Tensor, Tensor]:
    """Principal components of the patch-embedding filters, as images (ViT paper, Fig. 7 left).

    The patch projection `conv_proj` has one (3, p, p) filter per hidden unit. PCA over those filters shows the
    basis the model uses to describe a patch.

    Returns:
        components (k, 3, p, p), each scaled to [0, 1] for display, and explained_variance_ratio (k,).
    """
    filters = model.conv_proj.weight.detach().float()  # (D, 3, p, p)
    flat = rearrange(filters, "d c h w -> d (c h w)")
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, singular_values, right_vectors = torch.linalg.svd(flat, full_matrices=False)  # (3p^2, 3p^2)
    k = min(num_components, right_vectors.shape[0])
    components = rearrange(right_vectors[:k], "k (c h w) -> k c h w", c=3, h=filters.shape[-2])
    low = components.amin(dim=(1, 2, 3), keepdim=True)
    high = components.amax(dim=(1, 2, 3), keepdim=True)
    components = (components - low) / (high - low).clamp(min=1e-12)
    variance = singular_values**2
    return components, (variance / variance.sum())[:k]
