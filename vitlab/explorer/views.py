"""One image in the attention explorer: one forward pass, cheap views read from it, and overlays to show them.

    loaded = load_model_source("demo")                    # vitlab.sources: the model, class names, images
    image = loaded.images.images[0]                       # uint8 (3, 32, 32)
    views = analyse_image(loaded.model, image)            # ONE forward pass: probabilities and every attention map
    views.cls_map(layer=3, head=0)                        # (grid, grid), cheap: no model call (what a slider does)
    views.rollout_map("max", discard_ratio=0.9)           # (grid, grid)
    relevance, target = class_map(loaded.model, image)    # forward + backward: why the predicted class
    picture = render_overlay(image, relevance, size=448)  # uint8 (448, 448, 3), ready for st.image

This is the explorer's non-UI work, as plain functions: `streamlit_app.py` is only the page around them. The
analyses themselves are vitlab.attention's; this module only selects and draws. Where the model comes from is
vitlab.sources's, and uploads (`preprocess_upload`) are vitlab.uploads's; both are re-exported here, so
`vitlab.explorer` still offers the whole explorer API.

Timings on this machine: `python -m vitlab.explorer --bench [--arch vit_tiny] [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import io
import pickle
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.attention import (
    HeadFusion,
    cls_attention,
    gradient_weighted_attention,
    mean_attention_distance,
    query_attention,
    rollout,
)
from vitlab.capture import Geometry, capture_forward, geometry
from vitlab.data import BatchTransform
from vitlab.explorer.sources import (  # noqa: F401 (re-exported)
    SOURCES,
    LoadedModel,
    imagenet_available,
    imagenet_hint,
    list_runs,
    load_model_source,
    resolve_checkpoint,
)
from vitlab.explorer.uploads import PreparedImage, UploadError, image_key, preprocess_upload  # noqa: F401 (re-exported)
from vitlab.model import build_model, weights_cache_file  # noqa: F401 (weights_cache_file re-exported)
from vitlab.plotting import plot_mean_distance, to_display, upsample_map

MAIN_VIEW_PX = 448  # side of the big views (image, class-token map, rollout, query, class-specific)
HEAD_VIEW_PX = 192  # side of each panel in the all-heads grid
VIEW_FORMAT = "JPEG"  # how the page sends views: a 448-px PNG takes ~27 ms to encode, a JPEG ~1.5 ms
DISTANCE_IMAGES = 16  # images the mean attention distance is averaged over, once per model


# capture() hooks the model object for one forward pass. Streamlit serves every browser tab from threads of one
# process, and cached models are shared between them, so two passes must not overlap on one model.
_MODEL_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------------------------
# One image: a forward pass, then cheap selectors
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageViews:
    """Everything one forward pass tells about one image; every slider reads from here without a model call."""

    probs: Tensor  # (classes,) softmax probabilities
    attentions: tuple[Tensor, ...]  # one (1, heads, tokens, tokens) per encoder block, CPU float32
    geometry: Geometry  # image_size, patch_size, grid_size of the model

    @property
    def num_layers(self) -> int:
        return len(self.attentions)

    @property
    def num_heads(self) -> int:
        return self.attentions[0].shape[1]

    def top_k(self, k: int = 5) -> list[tuple[int, float]]:
        """The k most likely classes as (class index, probability), most likely first."""
        values, indices = self.probs.topk(min(k, self.probs.numel()))
        return list(zip(indices.tolist(), values.tolist(), strict=True))

    def cls_map(self, layer: int, head: int) -> Tensor:
        """(grid, grid): where the class token looks in block `layer` (0-based), head `head`."""
        return cls_attention(self.attentions[layer], self.geometry)[0, head]

    def head_maps(self, layer: int) -> Tensor:
        """(heads, grid, grid): the class token's attention in every head of block `layer`."""
        return cls_attention(self.attentions[layer], self.geometry)[0]

    def query_map(self, layer: int, head: int, row: int, col: int) -> Tensor:
        """(grid, grid): where patch (row, col) looks in block `layer`, head `head`."""
        token = self.geometry.num_prefix_tokens + row * self.geometry.grid_size + col
        return query_attention(self.attentions[layer], self.geometry, token)[0, head]

    def rollout_map(self, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0) -> Tensor:
        """(grid, grid): attention rollout through all blocks (vitlab.attention.rollout)."""
        flow = rollout(self.attentions, head_fusion, discard_ratio, self.geometry.num_prefix_tokens)  # (1, patches)
        return flow[0].reshape(self.geometry.grid_size, self.geometry.grid_size)


def model_inputs(model: VisionTransformer, image: Tensor) -> Tensor:
    """uint8 (3, H, W) -> float (1, 3, S, S), resized and normalised as the model expects."""
    return BatchTransform(model.image_size, train=False)(image[None])


@torch.no_grad()
def analyse_image(model: VisionTransformer, image: Tensor) -> ImageViews:
    """One forward pass of `model` (eval mode) on `image` uint8 (3, H, W), recording every block's attention."""
    inputs = model_inputs(model, image)  # (1, 3, S, S)
    with _MODEL_LOCK:
        logits, captured = capture_forward(model, inputs)  # (1, classes)
    return ImageViews(
        probs=logits[0].float().softmax(dim=-1).cpu(),
        attentions=tuple(a.detach().float().cpu() for a in captured.attentions),  # (1, heads, T, T) each
        geometry=captured.geometry,
    )


def class_map(model: VisionTransformer, image: Tensor, target_class: int | None = None) -> tuple[Tensor, int]:
    """Gradient-weighted attention (vitlab.attention) for one class: which patches made the model say it.

    Args:
        image: uint8 (3, H, W).
        target_class: a class index, or None for the predicted class.
    Returns:
        relevance (grid, grid) and the class it explains.
    """
    with _MODEL_LOCK:
        relevance, target = gradient_weighted_attention(model, model_inputs(model, image), target_class)
    grid = geometry(model).grid_size
    return relevance[0].detach().cpu().reshape(grid, grid), int(target[0])


@torch.no_grad()
def mean_distances(model: VisionTransformer, images: Tensor, batch_size: int = 4) -> Tensor:
    """Mean attention distance (layers, heads) in pixels over `images` uint8 (N, 3, H, W), a few at a time."""
    total, count = None, 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        inputs = BatchTransform(model.image_size, train=False)(batch)  # (b, 3, S, S)
        with _MODEL_LOCK:
            _, captured = capture_forward(model, inputs)
        distances = mean_attention_distance(captured.attentions, model.patch_size) * len(batch)  # (layers, heads)
        total, count = (distances if total is None else total + distances), count + len(batch)
    return total / count


def distance_figure_png(distances: Tensor, patch_size: int) -> bytes:
    """vitlab.plotting's mean-distance figure as PNG bytes (rendered once per model, not per slider move)."""
    buffer = io.BytesIO()
    plot_mean_distance(distances, patch_size).savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Drawing: numpy overlays, cheap enough for every slider move (no matplotlib figure)
# ---------------------------------------------------------------------------------------------------------------


def render_overlay(
    image: Tensor,
    grid_map: Tensor | None,
    size: int = MAIN_VIEW_PX,
    *,
    patch_grid: int | None = None,
    highlight: tuple[int, int] | None = None,
    alpha: float = 0.55,
    cmap: str = "inferno",
) -> np.ndarray:
    """Draw `image` uint8 (3, H, W) at size x size with a (grid, grid) map over it, like plotting.draw_overlay.

    Args:
        grid_map: scaled to [0, 1] for display (plotting.upsample_map) and coloured with `cmap`; None: image only.
        patch_grid: draw the boundaries of a patch_grid x patch_grid patch layout.
        highlight: (row, col) of a patch of grid_map's grid to outline (the query patch).
    Returns:
        uint8 (size, size, 3).
    """
    pixels = torch.from_numpy(to_display(image)).permute(2, 0, 1)[None]  # (1, 3, H, W) float in [0, 1]
    small = image.shape[-1] < size // 4  # tiny images (32 px) stay crisp, so their patches stay visible
    mode = "nearest-exact" if small else "bilinear"
    pixels = F.interpolate(pixels, size=(size, size), mode=mode, antialias=not small and image.shape[-1] > size)
    picture = pixels[0].permute(1, 2, 0).clamp(0, 1).numpy()  # (size, size, 3)
    if grid_map is not None:
        colours = colormaps[cmap](upsample_map(grid_map, size))[..., :3]  # (size, size, 3)
        picture = (1 - alpha) * picture + alpha * colours
    picture = (picture * 255).round().astype(np.uint8)
    if patch_grid:
        edges = np.round(np.arange(1, patch_grid) * size / patch_grid).astype(int)
        picture[edges, :] = (0.3 * picture[edges, :] + 0.7 * 255).astype(np.uint8)
        picture[:, edges] = (0.3 * picture[:, edges] + 0.7 * 255).astype(np.uint8)
    if highlight is not None and grid_map is not None:
        step = size / grid_map.shape[-1]
        top, left = round(highlight[0] * step), round(highlight[1] * step)
        bottom, right = round((highlight[0] + 1) * step) - 1, round((highlight[1] + 1) * step) - 1
        width = max(2, size // 90)  # about 5 px at 448: still visible when the page shrinks the picture
        cyan = np.array([0, 229, 255], dtype=np.uint8)
        picture[top : top + width, left : right + 1] = cyan
        picture[bottom - width + 1 : bottom + 1, left : right + 1] = cyan
        picture[top : bottom + 1, left : left + width] = cyan
        picture[top : bottom + 1, right - width + 1 : right + 1] = cyan
    return picture


# ---------------------------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------------------------


def benchmark_explorer(arch: str = "vit_b_16", repeats: int = 5) -> dict[str, float]:
    """Time the explorer's two interactions with random weights (nothing is downloaded); medians in seconds.

    - "new_image_seconds": a new image until all its views are ready: `analyse_image`, `class_map` for the
      predicted class, and drawing every per-image view (image, class-token map, all heads, rollout, query patch,
      class-specific map), as the app does.
    - "slider_seconds": a layer or head slider move: read the cached analysis back (unpickling, as st.cache_data
      does on a hit) and redraw the views that depend on layer and head (the app's fragment). No model call.

    Drawing includes encoding each view as st.image does. Not included: the mean attention distance (once per
    model), Streamlit's own messaging and the browser's rendering.
    """
    model = build_model(arch, num_classes=1000 if arch == "vit_b_16" else 100, pretrained=False, progress=False)
    model.eval()
    size = model.image_size
    generator = torch.Generator().manual_seed(0)
    new_image, slider = [], []
    for repeat in range(repeats + 1):  # the first round warms up the kernels and is not counted
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
        started = time.perf_counter()
        views = analyse_image(model, image)
        relevance, _ = class_map(model, image)
        _draw_views(image, views, relevance, layer=views.num_layers - 1, head=0)
        if repeat:
            new_image.append(time.perf_counter() - started)
        blob = pickle.dumps(views)
        started = time.perf_counter()
        views = pickle.loads(blob)
        _draw_views(image, views, None, layer=repeat % views.num_layers, head=repeat % views.num_heads)
        if repeat:
            slider.append(time.perf_counter() - started)
    return {"new_image_seconds": statistics.median(new_image), "slider_seconds": statistics.median(slider)}


def _draw_views(image: Tensor, views: ImageViews, relevance: Tensor | None, layer: int, head: int) -> None:
    """Draw and encode what the page shows for one image (relevance None: a slider move, which redraws only the
    views that depend on layer and head, as the app's fragment does)."""
    grid = views.geometry.grid_size
    pictures = [
        render_overlay(image, views.cls_map(layer, head)),
        render_overlay(image, views.query_map(layer, head, grid // 2, grid // 2), highlight=(grid // 2, grid // 2)),
        render_overlay(image, views.rollout_map("mean", 0.0)),
        *(render_overlay(image, head_map, HEAD_VIEW_PX) for head_map in views.head_maps(layer)),
    ]
    if relevance is not None:
        pictures += [render_overlay(image, None), render_overlay(image, relevance)]
    for picture in pictures:  # what st.image does with an array: encode it for the browser
        Image.fromarray(picture).save(io.BytesIO(), format=VIEW_FORMAT, quality=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitlab.explorer", description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="time a new image and a slider move, print medians")
    parser.add_argument("--arch", default="vit_b_16", choices=("vit_b_16", "vit_tiny"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 0
    result = benchmark_explorer(args.arch, args.repeats)
    print(f"{args.arch} on {torch.get_num_threads()} CPU threads, median of {args.repeats}: "
          f"new image {result['new_image_seconds']:.3f} s, slider move {result['slider_seconds']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
