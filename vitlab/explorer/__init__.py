"""The attention explorer's non-UI work, as plain functions: `streamlit_app.py` is only the page around them.

    loaded = load_model_source("demo")                    # sources: the model, class names, images to browse
    image = loaded.images.images[0]                       # uint8 (3, 32, 32)
    views = analyse_image(loaded.model, image)            # views: ONE forward pass, probabilities and every map
    views.cls_map(layer=3, head=0)                        # (grid, grid), cheap: no model call (what a slider does)
    views.rollout_map("max", discard_ratio=0.9)           # (grid, grid)
    relevance, target = class_map(loaded.model, image)    # forward + backward: why the predicted class
    picture = render_overlay(image, relevance, size=448)  # drawing: uint8 (448, 448, 3), ready for st.image
    prepared = preprocess_upload(data, image_size=32)     # uploads: any PNG/JPEG bytes -> uint8 (3, 32, 32)
    gallery = build_gallery(loaded.model, loaded.images, "misclassified", "rollout")  # 16 images, maps (16, g, g)
    compare_maps(views, analyse_image(base.model, image), "cls").difference           # (grid, grid)
    png_bytes(picture), maps_npz(views, rollout, relevance)  # export: what the download buttons hand out
    before, after = top_k_ablated(loaded.model, image, {3: [0]}); lens_top(loaded.model, image)  # live

One concept per module:

    views.py    one image, one forward pass: ImageViews and the maps read from it, class_map, mean_distances
    drawing.py  render_overlay (numpy, cheap enough for every slider move; smooth or patch-exact, grid thickness,
                projector colours), the mean-distance figure
    figures.py  the guided tour's per-model figures (patch filters, position embeddings) and token views
    tour.py     the guided tour's steps, as data (TourStep), in the lessons' order
    pages/      the page sections (Streamlit code) streamlit_app.py calls; not imported here
    sources.py  where the model comes from: the demo model, a vitlab checkpoint, ImageNet ViT-B/16 (+ the base)
    runs_folder.py  the one folder whose checkpoints the page may read (`--runs DIR`); paths outside are refused
    uploads.py  uploaded files made safe: any PNG, JPEG, GIF or WebP in, a model input or an UploadError out
    gallery.py  a grid of test images (a class, the misclassified, the least confident), one batched map each
    compare.py  one view of two models on the same image, on a common grid, and their difference
    export.py   downloads: a view as PNG, the raw maps as .npz, a safe file name
    live.py     head ablation and the logit lens, live on one image
    methods.py  every relevance method on one image with its deletion and insertion areas (the "Which map?" mode)

The analyses themselves are vitlab.analysis.attention's. Every failure is a VitlabError whose message says what to do
next. This package exports the functions above; everything else (constants, types, helpers) is imported from its
module, as streamlit_app.py and the pages do. How fast the explorer answers is a row of the benchmark,
`python -m vitlab.bench --rows explorer`, which this package does not import.
"""

from vitlab.explorer.compare import compare_maps
from vitlab.explorer.drawing import render_overlay
from vitlab.explorer.export import maps_npz, png_bytes
from vitlab.explorer.gallery import build_gallery
from vitlab.explorer.live import lens_top, top_k_ablated
from vitlab.explorer.sources import load_model_source
from vitlab.explorer.uploads import preprocess_upload
from vitlab.explorer.views import analyse_image, class_map

__all__ = [
    "analyse_image", "build_gallery", "class_map", "compare_maps", "lens_top", "load_model_source", "maps_npz",
    "png_bytes", "preprocess_upload", "render_overlay", "top_k_ablated",
]
