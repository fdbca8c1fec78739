"""How fast the explorer answers: `python -m vitlab.explorer --bench [--arch vit_tiny] [--repeats 5]`.

Times the explorer's two interactions with random weights (nothing is downloaded) and prints their medians:
a new image until all its views are ready, and a layer or head slider move. The work timed is the explorer's own
(vitlab.explorer's analyse_image, class_map and render_overlay), done as streamlit_app.py does it.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time

import torch
from torch import Tensor

from vitlab.explorer import HEAD_VIEW_PX, ImageViews, analyse_image, class_map, jpeg_bytes, render_overlay
from vitlab.model import build_model


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


def main(argv: list[str] | None = None) -> int:
    """`python -m vitlab.explorer`: with --bench, time both interactions and print their medians."""
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
