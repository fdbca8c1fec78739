"""What the explorer's download buttons hand out: a view as PNG, the raw maps as .npz, and a safe file name.

    png_bytes(render_overlay(image, relevance))                  # lossless, the exact pixels on the page
    maps_npz(views, rollout=views.rollout_map(), class_specific=relevance)
    export_name("demo", "test-0042", "rollout", "png")           # "demo_test-0042_rollout.png"

The .npz holds numbers only (no pickled objects), so `np.load(path, allow_pickle=False)` reads it anywhere:
`attention` (blocks, heads, tokens, tokens) with the class token at index 0, `rollout` (grid, grid),
`class_specific` (grid, grid) when one was computed, and `probs` (classes,).
"""

from __future__ import annotations

import io
import re
import unicodedata

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vitlab.errors import VitlabError
from vitlab.explorer.views import ImageViews

NAME_PART_CHARS = 60  # longest part of an exported file name: the whole name stays far below any file system's 255


def png_bytes(picture: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) picture as PNG bytes (lossless: decoding gives back the same pixels)."""
    if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[-1] != 3:
        raise VitlabError(f"png_bytes needs a uint8 (H, W, 3) picture, got {picture.dtype} {picture.shape}: "
                          f"draw it with render_overlay first.")
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def maps_npz(views: ImageViews, rollout: Tensor, class_specific: Tensor | None = None) -> bytes:
    """One image's analysis as .npz bytes: every block's attention, the rollout and class-specific maps, probs.

    Args:
        views: analyse_image's result (its attentions are (1, heads, tokens, tokens) per block).
        rollout: (grid, grid), as shown (views.rollout_map(...)).
        class_specific: (grid, grid) from class_map, or None to leave it out.
    Returns:
        The bytes of an uncompressed .npz with float32 arrays `attention` (blocks, heads, tokens, tokens),
        `rollout` (grid, grid), `probs` (classes,) and, if given, `class_specific` (grid, grid).
    """
    grid = views.geometry.grid_size
    maps = {"rollout": rollout} if class_specific is None else {"rollout": rollout, "class_specific": class_specific}
    for name, grid_map in maps.items():
        if tuple(grid_map.shape) != (grid, grid):
            raise VitlabError(f"The {name} map is {tuple(grid_map.shape)}, but this model's grid is {grid}x{grid}: "
                              f"export the map computed for the same model and image.")
    arrays = {
        "attention": torch.cat(views.attentions).numpy(),  # (blocks, heads, tokens, tokens): the batch of 1 dropped
        "probs": views.probs.numpy(),
        **{name: grid_map.numpy() for name, grid_map in maps.items()},
    }
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(array, dtype=np.float32) for name, array in arrays.items()})
    return buffer.getvalue()


def export_name(model: str, image: str, view: str, ext: str) -> str:
    """A readable file name made only of [A-Za-z0-9._-]: "<model>_<image>_<view>.<ext>".

    Accents are dropped (é -> e), every other character outside the set becomes "-" (so "../x" cannot climb
    out of a folder and no part starts with a dot), runs of "-" or "." shrink to one, and each part is cut to
    NAME_PART_CHARS. An empty part becomes "unnamed".

    Raises:
        VitlabError: `ext` holds no letter or digit.
    """
    suffix = re.sub(r"[^A-Za-z0-9]", "", ext).lower()
    if not suffix:
        raise VitlabError(f"The file extension {ext!r} has no letters or digits: use one such as 'png' or 'npz'.")
    return "_".join(_safe_part(part) for part in (model, image, view)) + "." + suffix


def _safe_part(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    safe = re.sub(r"[^A-Za-z0-9.-]+", "-", ascii_text)  # "_" too: it separates the parts
    safe = re.sub(r"[-.]*\.[-.]*", ".", safe)  # ".." and "-.-" -> "."
    safe = re.sub(r"-+", "-", safe).strip(".-")[:NAME_PART_CHARS].strip(".-")
    return safe or "unnamed"
