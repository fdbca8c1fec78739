"""The attention explorer's non-UI work, as plain functions: `streamlit_app.py` is only the page around them.

    loaded = load_model_source("demo")                    # sources: the model, class names, images to browse
    image = loaded.images.images[0]                       # uint8 (3, 32, 32)
    views = analyse_image(loaded.model, image)            # views: ONE forward pass, probabilities and every map
    views.cls_map(layer=3, head=0)                        # (grid, grid), cheap: no model call (what a slider does)
    views.rollout_map("max", discard_ratio=0.9)           # (grid, grid)
    relevance, target = class_map(loaded.model, image)    # forward + backward: why the predicted class
    picture = render_overlay(image, relevance, size=448)  # drawing: uint8 (448, 448, 3), ready for st.image
    prepared = preprocess_upload(data, image_size=32)     # uploads: any PNG/JPEG bytes -> uint8 (3, 32, 32)

One concept per module:

    views.py    one image, one forward pass: ImageViews and the maps read from it, class_map, mean_distances
    drawing.py  render_overlay (numpy, cheap enough for every slider move; smooth or patch-exact, grid thickness,
                projector colours), the mean-distance figure
    figures.py  the guided tour's per-model figures (patch filters, position embeddings) and token views
    tour.py     the guided tour's steps, as data (TourStep), in the lessons' order
    pages/      the page sections (Streamlit code) streamlit_app.py calls; not imported here
    sources.py  where the model comes from: the demo model, a vitlab checkpoint, ImageNet ViT-B/16
    uploads.py  uploaded files made safe: any PNG or JPEG in, a model input or an UploadError out

The analyses themselves are vitlab.attention's. Every failure is a VitlabError whose message says what to do next.
Timings: `python -m vitlab.explorer --bench [--arch vit_tiny] [--repeats 5]` (the benchmark is
vitlab.bench.explorer; this package does not import it).
"""

from vitlab.errors import VitlabError
from vitlab.explorer.drawing import (
    HEAD_VIEW_PX,
    MAIN_VIEW_PX,
    PROJECTOR_CMAP,
    PROJECTOR_GRID_PX,
    VIEW_FORMAT,
    distance_figure_png,
    jpeg_bytes,
    overlay_values,
    render_overlay,
)
from vitlab.explorer.sources import (
    SOURCES,
    LoadedModel,
    imagenet_available,
    imagenet_hint,
    list_runs,
    load_model_source,
    resolve_checkpoint,
    source_stamp,
)
from vitlab.explorer.uploads import PreparedImage, UploadError, image_key, preprocess_upload
from vitlab.explorer.views import DISTANCE_IMAGES, ImageViews, analyse_image, class_map, mean_distances, model_inputs

# Where the ImageNet source looks for its weights (torchvision's cache): the page names the file when it is missing.
from vitlab.model import weights_cache_file

__all__ = [
    "DISTANCE_IMAGES", "HEAD_VIEW_PX", "MAIN_VIEW_PX", "PROJECTOR_CMAP", "PROJECTOR_GRID_PX", "SOURCES",
    "VIEW_FORMAT", "ImageViews", "LoadedModel", "PreparedImage", "UploadError", "VitlabError", "analyse_image",
    "class_map", "distance_figure_png", "image_key", "imagenet_available", "jpeg_bytes", "imagenet_hint", "list_runs",
    "load_model_source", "mean_distances", "model_inputs", "overlay_values", "preprocess_upload", "render_overlay",
    "resolve_checkpoint", "source_stamp", "weights_cache_file",
]
