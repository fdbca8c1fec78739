"""ROAD's noisy linear imputation (Rong et al. 2022): a removed pixel becomes the weighted mean of its 8 neighbours.

Every removed pixel i gives one equation in the unknown values u of the removed pixels, x being the kept ones:

    sum_j w_ij u_j  -  (sum of i's weights) u_i  =  - sum_k w_ik x_k

with weight 1/6 for each of the 4 edge neighbours and 1/12 for each of the 4 corner ones (neighbours outside the image
left out): j runs over i's removed neighbours, k over its kept ones. One sparse system (a row per removed pixel, at
most 9 entries each) is solved for all channels at once, then a little Gaussian noise (0.01) is added to the filled
pixels, so that the fill carries no exact, recognisable pattern of its own.

This is the system of pytorch-grad-cam's `NoisyLinearImputer`, which copies the ROAD authors' code: it sets the
matrix up entry by entry in a `lil_matrix`, which takes longer than solving it (0.30 s against 0.26 s for 90% of a
224 x 224 image removed, on 2 cores). Here the matrix is assembled from arrays in one call (0.02 s), and
tests/test_imputation.py checks that the two fill an image alike, noise included. The solver releases Python's
lock, so `vitlab.analysis.faithfulness` fills several images at once, one per thread.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vitlab.analysis.extras import require_extra

# (row offset, column offset, weight) of each neighbour: edges 1/6, corners 1/12, summing to 1.
NEIGHBOURS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12),
              (0, -1, 1 / 6), (-1, -1, 1 / 12), (1, 0, 1 / 6), (-1, 0, 1 / 6))
NOISE = 0.01  # standard deviation of the noise added to every imputed value


def noisy_linear_imputation(image: Tensor, kept: Tensor, noise: float = NOISE,
                            generator: torch.Generator | None = None) -> Tensor:
    """Fill the removed pixels of `image` from their neighbours, plus noise.

    Args:
        image: (C, H, W) on the CPU.
        kept: (H, W), 1 where a pixel is kept and 0 where it is removed; at least one pixel must be kept.
        noise: the noise's standard deviation.
        generator: where the noise comes from (None: torch's global generator). A generator seeded with s draws what
            the global one draws after `torch.manual_seed(s)`; a generator of its own lets fills run in threads.
    Returns:
        (C, H, W) float32: `image` with its removed pixels imputed; the kept ones unchanged.
    """
    linalg = require_extra("scipy.sparse.linalg", "ROAD")
    channels, height, width = image.shape
    values = image.reshape(channels, height * width).double().numpy()  # (C, H*W)
    removed = np.flatnonzero(kept.reshape(-1).numpy() == 0)  # (N,) flat indices of the unknowns
    if removed.size == 0:
        return image.float().clone()
    matrix, right = _system(values, removed, height, width)  # (N, N) sparse, (N, C)
    solution = torch.from_numpy(np.asarray(linalg.spsolve(matrix, right)).reshape(removed.size, channels))
    filled = image.reshape(channels, height * width).float().clone()  # (C, H*W)
    imputed = solution.float().t()  # (C, N)
    filled[:, torch.from_numpy(removed)] = imputed + noise * torch.randn(imputed.shape, generator=generator)
    return filled.view(channels, height, width)


def _system(values: np.ndarray, removed: np.ndarray, height: int, width: int) -> tuple[object, np.ndarray]:
    """The sparse matrix (N, N) in CSC form and the right-hand side (N, C) of the imputation's equations."""
    sparse = require_extra("scipy.sparse", "ROAD")
    count = removed.size
    unknown = np.full(height * width, -1)
    unknown[removed] = np.arange(count)  # flat pixel index -> its unknown's index, -1 for a kept pixel
    rows, columns = np.divmod(removed, width)  # (N,) each
    diagonal = np.zeros(count)
    right = np.zeros((count, values.shape[0]))  # (N, C)
    entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for row_offset, column_offset, weight in NEIGHBOURS:
        row, column = rows + row_offset, columns + column_offset  # (N,) each
        inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
        equation = np.flatnonzero(inside)  # the unknowns that have this neighbour
        neighbour = row[inside] * width + column[inside]
        diagonal[equation] -= weight
        is_unknown = unknown[neighbour] >= 0
        entries.append((equation[is_unknown], unknown[neighbour[is_unknown]], np.full(is_unknown.sum(), weight)))
        right[equation[~is_unknown]] -= weight * values[:, neighbour[~is_unknown]].T
    entries.append((np.arange(count), np.arange(count), diagonal))
    equations, unknowns, weights = (np.concatenate(parts) for parts in zip(*entries, strict=True))
    return sparse.csc_matrix((weights, (equations, unknowns)), shape=(count, count)), right
