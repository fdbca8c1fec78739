"""Principal component analysis of token features: class tokens by block, and DINO-style RGB maps of patches.

    result = pca(features, k=2)                  # features (N, D) -> components (2, D), explained_variance (2,)
    points = result.project(features)            # (N, 2): each row's coordinates along the components
    class_separation(points, labels)             # share of the points' variance that the class means explain
    rgb = patch_pca_rgb(patch_states, grid)      # (B, patches, hidden) -> (B, grid, grid, 3) colours in [0, 1]

PCA here is the SVD of the centred data: X - mean = U S V^T; the rows of V^T are the components, S^2 / (N - 1) the
variance along each. Each component's sign is arbitrary (v and -v explain the same variance), so one is fixed:
the entry of largest magnitude is made positive. The same data then always give the same picture.

The RGB map is the figure of Caron et al. 2021 (DINO) and Oquab et al. 2023 (DINOv2): fit PCA on the patch tokens,
project each patch on the first three components and show them as red, green and blue. Patches the model
describes alike get alike colours, so the object's parts often stand out from the background without any label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vitlab.errors import VitlabError


@dataclass(frozen=True)
class PCAResult:
    """A fitted PCA: orthonormal components ordered by the variance they explain."""

    components: Tensor  # (k, D), orthonormal rows
    explained_variance: Tensor  # (k,) variance along each component, descending
    mean: Tensor  # (D,) of the data it was fitted on
    total_variance: float  # sum of the variances of all D dimensions of the fitted data

    @property
    def explained_ratio(self) -> Tensor:
        """(k,) share of the total variance along each component."""
        return self.explained_variance / max(self.total_variance, 1e-30)

    def project(self, x: Tensor) -> Tensor:
        """(N, D) -> (N, k): coordinates of each centred row along the components."""
        if x.ndim != 2 or x.shape[1] != self.components.shape[1]:
            raise VitlabError(f"project needs rows of {self.components.shape[1]} features (N, "
                              f"{self.components.shape[1]}), got shape {tuple(x.shape)}.")
        return (x - self.mean) @ self.components.T


def pca(x: Tensor, k: int) -> PCAResult:
    """The first `k` principal components of x (N, D), via torch.linalg.svd of the centred data (float64 inside).

    k can be at most min(N - 1, D): N centred rows span at most N - 1 directions.
    """
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise VitlabError(f"pca needs data (N, D) with at least 2 rows and 1 column, got shape {tuple(x.shape)}.")
    largest = min(x.shape[0] - 1, x.shape[1])
    if not 1 <= k <= largest:
        raise VitlabError(f"pca: k={k} components asked of {x.shape[0]} rows of {x.shape[1]} features; choose k "
                          f"from 1 to {largest} (at most min(N - 1, D)).")
    data = x.detach().double()
    mean = data.mean(dim=0)  # (D,)
    centred = data - mean  # (N, D)
    _, singular, right = torch.linalg.svd(centred, full_matrices=False)  # (min(N, D),), (min(N, D), D)
    components = right[:k]  # (k, D)
    largest_entry = components.abs().argmax(dim=1, keepdim=True)  # (k, 1)
    signs = components.gather(1, largest_entry).sign()  # (k, 1): +1 or -1, never 0 for a unit vector
    components = components * signs
    variance = singular.pow(2) / (x.shape[0] - 1)  # (min(N, D),)
    total = centred.pow(2).sum().item() / (x.shape[0] - 1)
    return PCAResult(components.to(x.dtype), variance[:k].to(x.dtype), mean.to(x.dtype), total)


def class_separation(points: Tensor, labels: Tensor) -> float:
    """Share of the total variance of points (N, k) explained by their class means (labels (N,)), in [0, 1].

    1: every class collapses onto its own point; 0: all class means coincide. (R^2 of predicting each point by its
    class mean, the between-class over the total sum of squares.)
    """
    if points.ndim != 2 or len(points) < 2 or labels.shape != (len(points),):
        raise VitlabError(f"class_separation needs points (N, k) with N >= 2 and labels (N,), got shapes "
                          f"{tuple(points.shape)} and {tuple(labels.shape)}.")
    data = points.double()
    total = (data - data.mean(dim=0)).pow(2).sum()
    if total == 0:
        return 0.0
    class_means = torch.stack([data[labels == c].mean(dim=0) for c in labels.unique()])  # (classes, k)
    _, index = labels.unique(return_inverse=True)  # (N,) row of each point's class mean
    within = (data - class_means[index]).pow(2).sum()
    return (1 - within / total).item()


def patch_pca_rgb(patch_states: Tensor, grid_size: int, per_image: bool = False) -> Tensor:
    """DINO-style colours: (B, patches, hidden) -> (B, grid, grid, 3) in [0, 1], the first 3 components as RGB.

    By default PCA is fitted on the patches of the whole batch, so a colour means the same in every image; with
    `per_image` each image gets its own PCA (sharper contrast, colours not comparable). Each component is scaled
    to [0, 1] by its minimum and maximum over the patches it was fitted on.
    """
    if patch_states.ndim != 3 or patch_states.shape[0] == 0 or patch_states.shape[1] != grid_size**2:
        raise VitlabError(f"patch_pca_rgb needs patch states (B, {grid_size}^2 = {grid_size**2}, hidden) with "
                          f"B >= 1, got shape {tuple(patch_states.shape)}. Drop the class token first "
                          f"(states[:, 1:]).")
    groups = list(patch_states) if per_image else [patch_states.flatten(0, 1)]  # each (rows, hidden)
    colours = []
    for group in groups:
        projected = pca(group, 3).project(group)  # (rows, 3)
        low, high = projected.amin(dim=0), projected.amax(dim=0)  # (3,) each
        colours.append((projected - low) / (high - low).clamp(min=1e-12))
    rgb = torch.cat(colours)  # (B * patches, 3), in the order of patch_states
    return rgb.reshape(patch_states.shape[0], grid_size, grid_size, 3).clamp(0, 1)
