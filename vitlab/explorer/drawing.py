"""Drawing the explorer's views: a map over its image as a numpy picture, and the mean-distance figure.

    picture = render_overlay(image, grid_map, size=448)   # uint8 (448, 448, 3), ready for st.image
    png = distance_figure_png(distances, patch_size=16)   # bytes: vitlab.plotting's figure, rendered once

Overlays are plain numpy (no matplotlib figure, no torch call: on a shared CPU a small torch op costs milliseconds
of thread start-up) so that every slider move can afford to redraw them; colour comes from a matplotlib colour
map's lookup table. Nothing here runs a model: the maps come from vitlab.explorer.views.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image
from torch import Tensor

from vitlab.plotting import plot_mean_distance, to_display

MAIN_VIEW_PX = 448  # side of the big views (image, class-token map, rollout, query, class-specific)
HEAD_VIEW_PX = 192  # side of each panel in the all-heads grid
VIEW_FORMAT = "JPEG"  # how the page sends views: a 448-px PNG takes ~27 ms to encode, a JPEG ~1.5 ms
# st.image encodes arrays at JPEG quality 100: 57 kB and 2.8 ms for a 448-px view; quality 90 is 18 kB in 0.7 ms
# (measured on the shared 2-core CPU) and looks the same on a projector, so the page sends jpeg_bytes instead.
VIEW_QUALITY = 90
QUERY_OUTLINE = (0, 229, 255)  # cyan: visible over every colour of the inferno map
PROJECTOR_CMAP = "turbo"  # projector mode: a high-contrast map that survives a washed-out projector
PROJECTOR_GRID_PX = 3  # projector mode: patch borders thick enough to see from the back of a room


def render_overlay(
    image: Tensor,
    grid_map: Tensor | None,
    size: int = MAIN_VIEW_PX,
    *,
    patch_grid: int | None = None,
    highlight: tuple[int, int] | None = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
    smooth: bool = True,
    grid_px: int = 1,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Draw `image` uint8 (3, H, W) at size x size with a (grid, grid) map over it, like plotting.draw_overlay.

    Args:
        grid_map: scaled to [0, 1] for display (overlay_values) and coloured with `cmap`; None: image only.
        patch_grid: draw the boundaries of a patch_grid x patch_grid patch layout.
        highlight: (row, col) of a patch of grid_map's grid to outline (the query patch).
        smooth: True: the map upsampled bilinearly (like plotting.upsample_map); False: patch-exact, one constant
            colour per patch (nearest), which shows that attention lives on patches, not pixels.
        grid_px: thickness in pixels of the patch-grid lines, centred on the patch borders.
        value_range: (low, high) mapped to the colour map's ends instead of the map's own minimum and maximum:
            a difference map drawn with (-m, m) keeps zero at a diverging map's neutral middle.
    Returns:
        uint8 (size, size, 3).
    """
    picture = _resized(image, size)  # (size, size, 3) float in [0, 1]
    if grid_map is not None:
        values = overlay_values(grid_map, size, smooth, value_range)  # (size, size) in [0, 1]
        # matplotlib's own lookup: entry floor(256 x), the top end kept in the last entry (as Colormap.__call__)
        entries = np.minimum((values * 256).astype(np.int32), 255)  # (size, size)
        colours = np.take(_colour_table(cmap), entries, axis=0)  # (size, size, 3)
        picture = (1 - alpha) * picture + alpha * colours
    picture = (picture * 255).round().astype(np.uint8)
    if patch_grid:
        _draw_patch_grid(picture, patch_grid, grid_px)
    if highlight is not None and grid_map is not None:
        _outline_patch(picture, highlight, grid_map.shape[-1])
    return picture


def overlay_values(
    grid_map: Tensor, size: int, smooth: bool = True, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """(grid, grid) map -> (size, size) array in [0, 1], ready for a colour map.

    Scaled by `value_range` (low, high), or by the map's own minimum and maximum (a flat map stays flat: rounding
    noise would otherwise be stretched to [0, 1]); then upsampled bilinearly (`smooth`, as plotting.upsample_map)
    or patch-exact, each patch one constant block (nearest). Scaling before upsampling gives the same picture
    as after: bilinear interpolation commutes with a linear rescale.
    """
    values = grid_map.detach().float().cpu().numpy()  # (grid, grid)
    low, high = value_range if value_range is not None else (float(values.min()), float(values.max()))
    if high <= low:
        return np.zeros((size, size), dtype=np.float32)
    scaled = np.clip((values - low) / (high - low), 0, 1).astype(np.float32)  # (grid, grid)
    if smooth:
        return np.clip(_bilinear(scaled, size), 0, 1)  # (size, size)
    cells = np.arange(size) * values.shape[0] // size  # the patch each pixel row (and column) falls in
    return scaled[np.ix_(cells, cells)]  # (size, size)


def _bilinear(cells: np.ndarray, size: int) -> np.ndarray:
    """(grid, grid) -> (size, size), as F.interpolate(mode="bilinear", align_corners=False): rows, then columns,
    each output pixel a mix of its two nearest cells. Elementwise on purpose: a matrix product this shape starts
    BLAS threads, which on a shared CPU costs tens of milliseconds per view."""
    grid = cells.shape[0]
    source = np.maximum((np.arange(size) + 0.5) * grid / size - 0.5, 0)  # (size,) position in cell units
    low = np.minimum(source.astype(np.int64), grid - 1)
    high = np.minimum(low + 1, grid - 1)
    weight = (source - low).astype(np.float32)  # (size,) share of the higher cell
    rows = cells[low] * (1 - weight)[:, None] + cells[high] * weight[:, None]  # (size, grid)
    return rows[:, low] * (1 - weight)[None, :] + rows[:, high] * weight[None, :]  # (size, size)


@lru_cache(maxsize=8)
def _colour_table(cmap: str) -> np.ndarray:
    """(256, 3) float32 read-only: colour map `cmap`'s own 256 entries."""
    table = colormaps[cmap](np.arange(256))[:, :3].astype(np.float32)  # integer input: the entries themselves
    table.flags.writeable = False
    return table


def _resized(image: Tensor, size: int) -> np.ndarray:
    """uint8 (3, H, W) -> float32 (size, size, 3) in [0, 1]."""
    small = image.shape[-1] < size // 4  # tiny images (32 px) stay crisp, so their patches stay visible
    if small:  # nearest-exact (source pixel floor((i + 0.5) * H / size)) as a numpy gather: no torch call
        rows = ((np.arange(size) + 0.5) * image.shape[-2] / size).astype(np.int64)
        cols = ((np.arange(size) + 0.5) * image.shape[-1] / size).astype(np.int64)
        return to_display(image)[np.ix_(rows, cols)].astype(np.float32)  # (size, size, 3)
    pixels = torch.from_numpy(to_display(image)).permute(2, 0, 1)[None]  # (1, 3, H, W) float in [0, 1]
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=image.shape[-1] > size)
    return pixels[0].permute(1, 2, 0).clamp(0, 1).numpy()  # (size, size, 3)


def _draw_patch_grid(picture: np.ndarray, patch_grid: int, grid_px: int = 1) -> None:
    """Lighten the pixel rows and columns between patches of `picture` uint8 (size, size, 3), in place:
    `grid_px` pixels per border, starting (grid_px // 2) pixels before it."""
    size = picture.shape[0]
    borders = np.round(np.arange(1, patch_grid) * size / patch_grid).astype(int)
    offsets = np.arange(grid_px) - grid_px // 2
    edges = np.unique(np.clip(borders[:, None] + offsets[None, :], 0, size - 1))  # (lines,)
    picture[edges, :] = (0.3 * picture[edges, :] + 0.7 * 255).astype(np.uint8)
    picture[:, edges] = (0.3 * picture[:, edges] + 0.7 * 255).astype(np.uint8)


def _outline_patch(picture: np.ndarray, patch: tuple[int, int], grid: int) -> None:
    """Draw a frame around patch (row, col) of a grid x grid layout on `picture` uint8 (size, size, 3), in place."""
    size = picture.shape[0]
    step = size / grid
    top, left = round(patch[0] * step), round(patch[1] * step)
    bottom, right = round((patch[0] + 1) * step) - 1, round((patch[1] + 1) * step) - 1
    width = max(2, size // 90)  # about 5 px at 448: still visible when the page shrinks the picture
    colour = np.array(QUERY_OUTLINE, dtype=np.uint8)
    picture[top : top + width, left : right + 1] = colour
    picture[bottom - width + 1 : bottom + 1, left : right + 1] = colour
    picture[top : bottom + 1, left : left + width] = colour
    picture[top : bottom + 1, right - width + 1 : right + 1] = colour


def jpeg_bytes(picture: np.ndarray, quality: int = VIEW_QUALITY) -> bytes:
    """`picture` uint8 (H, W, 3) as JPEG bytes, the way the page sends every view."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format=VIEW_FORMAT, quality=quality)
    return buffer.getvalue()


def distance_figure_png(distances: Tensor, patch_size: int) -> bytes:
    """vitlab.plotting's mean-distance figure for `distances` (layers, heads) in pixels, as PNG bytes.

    Rendered once per model (the app caches it), not per slider move.
    """
    buffer = io.BytesIO()
    plot_mean_distance(distances, patch_size).savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
