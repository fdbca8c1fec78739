"""How fast the explorer answers: `python -m vitlab.bench --rows explorer [--arch vit_tiny] [--repeats 5]`.

Times the explorer's interactions and prints their medians next to the issue's targets (reported, never enforced):

    row                              model                       target
    new image, all views             --arch, random weights      <= 1 s (ViT-B/16 on 2 cores)
    slider move                      --arch, random weights      report
    16-image gallery                 the demo model              <= 3 s
    16-image gallery, cached scan    the demo model              <= 3 s

The work timed is the explorer's own (vitlab.explorer's analyse_image, class_map, build_gallery, render_overlay),
done as streamlit_app.py does it. The gallery rows use the demo model (trained on first use, then cached) on its
1000 shapes test images: the least-confident gallery with class-specific maps, the costliest (every test image
classified to find the 16, then one forward and one backward pass for the 16), drawn as 16 thumbnails.
"""

from __future__ import annotations

import pickle
import statistics
import time

import torch
from torch import Tensor

from vitlab.bench.measure import Settings, row_result
from vitlab.explorer import (
    HEAD_VIEW_PX,
    Gallery,
    ImageViews,
    analyse_image,
    build_gallery,
    class_map,
    jpeg_bytes,
    predict,
    render_overlay,
)
from vitlab.model import build_model
from vitlab.training.demo import load_demo_model

TARGETS = {"new_image_seconds": 1.0, "gallery_seconds": 3.0, "gallery_cached_seconds": 3.0}  # the issue's, in s
GALLERY_SIZE = 16


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
        flow = views.rollout_map("mean", 0.0)  # (grid, grid): the app caches it per image and rollout setting
        _draw_views(image, views, flow, relevance, layer=views.num_layers - 1, head=0)
        if repeat:
            new_image.append(time.perf_counter() - started)
        blob = pickle.dumps(views)
        started = time.perf_counter()
        views = pickle.loads(blob)
        _draw_views(image, views, flow, None, layer=repeat % views.num_layers, head=repeat % views.num_heads)
        if repeat:
            slider.append(time.perf_counter() - started)
    return {"new_image_seconds": statistics.median(new_image), "slider_seconds": statistics.median(slider)}


def benchmark_gallery(repeats: int = 5) -> dict[str, float]:
    """Time a 16-image gallery on the demo model; medians in seconds.

    - "gallery_seconds": the least-confident gallery with class-specific maps from scratch: classify every test
      image (1000), build the gallery of the 16 least confident, draw and encode their thumbnails.
    - "gallery_cached_seconds": the same with the scan's predictions already cached (what the app keeps per
      model, so every later gallery and view of that model skips the scan).
    """
    model, splits = load_demo_model()
    dataset = splits.test
    fresh, cached = [], []
    for repeat in range(repeats + 1):  # the first round warms up the kernels and is not counted
        started = time.perf_counter()
        predictions = predict(model, dataset.images)
        _draw_gallery(dataset.images, build_gallery(model, dataset, "least_confident", "class_specific",
                                                    GALLERY_SIZE, predictions=predictions))
        middle = time.perf_counter()
        _draw_gallery(dataset.images, build_gallery(model, dataset, "least_confident", "class_specific",
                                                    GALLERY_SIZE, predictions=predictions))
        if repeat:
            fresh.append(middle - started)
            cached.append(time.perf_counter() - middle)
    return {"gallery_seconds": statistics.median(fresh), "gallery_cached_seconds": statistics.median(cached)}


def _draw_gallery(images: Tensor, gallery: Gallery) -> None:
    """Draw and encode the gallery's thumbnails as the page shows them (images uint8 (N, 3, H, W))."""
    for index, grid_map in zip(gallery.indices, gallery.maps, strict=True):
        picture = render_overlay(images[index], grid_map, HEAD_VIEW_PX)
        jpeg_bytes(picture)


def _draw_views(image: Tensor, views: ImageViews, flow: Tensor, relevance: Tensor | None, layer: int,
                head: int) -> None:
    """Draw and encode what the page shows for one image (relevance None: a slider move, which redraws the
    fragment's views, as the app does; `flow` (grid, grid) is the rollout, computed once per image as the app's
    cache does)."""
    grid = views.geometry.grid_size
    pictures = [
        render_overlay(image, views.cls_map(layer, head)),
        render_overlay(image, views.query_map(layer, head, grid // 2, grid // 2), highlight=(grid // 2, grid // 2)),
        render_overlay(image, flow),
        *(render_overlay(image, head_map, HEAD_VIEW_PX) for head_map in views.head_maps(layer)),
    ]
    if relevance is not None:
        pictures += [render_overlay(image, None), render_overlay(image, relevance)]
    for picture in pictures:  # what the page does before st.image: encode it for the browser
        jpeg_bytes(picture)


def bench_explorer(settings: Settings) -> dict:
    """The explorer row: a new image and a slider move on `settings.arch` (random weights), and the 16-image
    gallery on the demo model; medians of `settings.repeats` (default 5) in seconds."""
    repeats = settings.repeats or 5
    result = {**benchmark_explorer(settings.arch, repeats), **benchmark_gallery(repeats)}
    met = all(result[key] <= target for key, target in TARGETS.items())
    notes = ", ".join(f"{key[:-8].replace('_', ' ')} {value:.3f} s" for key, value in result.items())
    return row_result("explorer", settings, None, result["new_image_seconds"], "s", ratio=None, ratio_meaning="",
                      target="new image <= 1 s, gallery <= 3 s", met=met,
                      notes=f"{settings.arch}, median of {repeats}: {notes}", **result)
