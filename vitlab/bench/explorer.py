"""The explorer row: how long an explorer user waits, the work done as streamlit_app.py does it, on the CPU as the app
runs (views encoded as st.image does; not Streamlit's messaging or the browser). The notebook had no explorer."""

from __future__ import annotations

import pickle
import statistics
import time
from dataclasses import replace

import torch
from torch import Tensor

from vitlab.bench.measure import Settings, row_result
from vitlab.explorer.drawing import HEAD_VIEW_PX, MAIN_VIEW_PX, jpeg_bytes, render_overlay
from vitlab.explorer.gallery import build_gallery, predict
from vitlab.explorer.views import ImageViews, analyse_image, class_map
from vitlab.model import build_model
from vitlab.training.demo import load_demo_model

TARGETS = {"new_image_seconds": 1.0, "gallery_seconds": 3.0, "gallery_cached_seconds": 3.0}


def draw_layer_views(image: Tensor, views: ImageViews, rollout: Tensor, layer: int, head: int) -> None:
    """Draw and encode the views a layer or head slider redraws (`rollout` (grid, grid): cached per image)."""
    middle = views.geometry.grid_size // 2
    jpeg_bytes(render_overlay(image, views.query_map(layer, head, middle, middle), highlight=(middle, middle)))
    for grid_map, size in [(views.cls_map(layer, head), MAIN_VIEW_PX), (rollout, MAIN_VIEW_PX),
                           *((head_map, HEAD_VIEW_PX) for head_map in views.head_maps(layer))]:
        jpeg_bytes(render_overlay(image, grid_map, size))


def benchmark_explorer(arch: str = "vit_b_16", repeats: int = 5) -> dict[str, float]:
    """Median seconds, random weights: a new image until every view is drawn, and a slider move (the analysis unpickled
    as st.cache_data does on a hit, the layer's views redrawn)."""
    model = build_model(arch, num_classes=1000 if arch == "vit_b_16" else 100, pretrained=False, progress=False).eval()
    generator, new_image, slider = torch.Generator().manual_seed(0), [], []
    for repeat in range(repeats + 1):  # the first round warms up the kernels and is not counted
        image = torch.randint(0, 256, (3, model.image_size, model.image_size), dtype=torch.uint8, generator=generator)
        started = time.perf_counter()
        views, (relevance, _) = analyse_image(model, image), class_map(model, image)
        rollout = views.rollout_map("mean", 0.0)  # (grid, grid)
        draw_layer_views(image, views, rollout, views.num_layers - 1, 0)
        for grid_map in (None, relevance):  # the image itself, and the class-specific map
            jpeg_bytes(render_overlay(image, grid_map))
        new_image.append(time.perf_counter() - started)
        started, blob = time.perf_counter(), pickle.dumps(views)
        draw_layer_views(image, pickle.loads(blob), rollout, repeat % views.num_layers, repeat % views.num_heads)
        slider.append(time.perf_counter() - started)
    return {"new_image_seconds": statistics.median(new_image[1:]), "slider_seconds": statistics.median(slider[1:])}


def benchmark_gallery(repeats: int = 5) -> dict[str, float]:
    """Median seconds of the demo model's 16 least-confident test images, class-specific maps drawn: with its 1,000
    test images classified first ("gallery_seconds"), and with that scan cached ("gallery_cached_seconds")."""
    (model, splits), fresh, cached = load_demo_model(), [], []
    for _ in range(repeats + 1):  # the first round warms up the kernels and is not counted
        started = time.perf_counter()
        scan = predict(model, splits.test.images)
        for seconds in (fresh, cached):  # the second gallery reuses the scan
            gallery = build_gallery(model, splits.test, "least_confident", "class_specific", 16, predictions=scan)
            for index, grid_map in zip(gallery.indices, gallery.maps, strict=True):
                jpeg_bytes(render_overlay(splits.test.images[index], grid_map, HEAD_VIEW_PX))
            seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
    return {"gallery_seconds": statistics.median(fresh[1:]), "gallery_cached_seconds": statistics.median(cached[1:])}


def bench_explorer(settings: Settings) -> dict:
    """A new image and a slider move on `settings.arch`, a gallery on the demo model; medians, seconds."""
    repeats = settings.reps(3, 5)
    result = {**benchmark_explorer(settings.arch, repeats), **benchmark_gallery(repeats)}
    timings = ", ".join(f"{key[:-8].replace('_', ' ')} {value:.3f} s" for key, value in result.items())
    return row_result("explorer", replace(settings, device=torch.device("cpu")), None, result["new_image_seconds"],
                      "s", target="new image <= 1 s, gallery <= 3 s", notes=f"{settings.arch}, median of {repeats}: "
                      f"{timings}", met=all(result[key] <= limit for key, limit in TARGETS.items()), **result)
