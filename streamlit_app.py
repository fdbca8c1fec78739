"""vitlab's attention explorer: choose a model and an image, and watch where the Vision Transformer looks.

    streamlit run streamlit_app.py

Widgets and caches only: everything else is the vitlab.explorer package's (the per-image views, the drawing, the
model sources and the uploads), and the analyses are vitlab.analysis.attention's. The sidebar chooses the mode:

- Explore: every view of one image (vitlab.explorer.pages.explore), the live head ablation and logit lens;
- Guided tour: the course's ideas one step per screen (vitlab.explorer.tour, drawn by pages.tour);
- Gallery: a grid of test images with one overlay each; a click opens one in Explore (pages.gallery);
- Compare: one image through two models, with the difference map (pages.compare);
- Which map?: every relevance method on one image with its deletion and insertion areas (pages.methods).

The model is cached with st.cache_resource (shared by every session, never mutated) and each image's forward pass
with st.cache_data (vitlab.explorer.pages.common), so a slider redraws from cached attention without running the
model again; those sliders live in a fragment, so moving one reruns and redraws only the views it changes.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import streamlit as st
import torch

from vitlab.errors import VitlabError
from vitlab.explorer import uploads
from vitlab.explorer.pages import common, compare, explore, gallery, methods, tour
from vitlab.explorer.pages.common import keep_in, load_source, prepare_upload
from vitlab.explorer.runs_folder import runs_folder
from vitlab.explorer.sources import (
    SOURCES,
    LoadedModel,
    imagenet_available,
    imagenet_hint,
    list_runs,
    resolve_checkpoint,
    source_stamp,
)
from vitlab.model import weights_cache_file

SOURCE_LABELS = {
    "demo": "Demo model (photos of clothing, offline)",
    "base": "Pretrained base (no labels, offline)",
    "checkpoint": "A vitlab checkpoint",
    "imagenet": "ImageNet ViT-B/16",
}
MODES = ("Explore", "Guided tour", "Gallery", "Compare", "Which map?")


def pick_random_image(count: int) -> None:
    st.session_state["image_index"] = random.randrange(count)


# ---------------------------------------------------------------------------------------------------------------
# Controls in the sidebar: the model and the image
# ---------------------------------------------------------------------------------------------------------------


def choose_model() -> LoadedModel:
    st.sidebar.header("Model")
    available = imagenet_available()
    labels = {**SOURCE_LABELS, "imagenet": SOURCE_LABELS["imagenet"] + ("" if available else " (unavailable)")}
    keep_in("model_source", SOURCES, "demo")
    source = st.sidebar.selectbox("Model source", SOURCES, format_func=labels.get, key="model_source")
    if not available:
        cache_file = weights_cache_file()
        st.sidebar.caption(f"ImageNet ViT-B/16 is unavailable: put {cache_file.name} in {cache_file.parent}.")

    checkpoint = None
    if source == "imagenet" and not available:
        st.warning(f"The ImageNet ViT-B/16 weights are not on this machine. {imagenet_hint()}")
        st.stop()
    if source == "checkpoint":
        checkpoint = choose_checkpoint()
    try:
        stamp = source_stamp(source, checkpoint)
        loaded = load_source(source, None if checkpoint is None else str(checkpoint), stamp)
    except (VitlabError, RuntimeError) as error:  # RuntimeError: training the demo model failed
        st.error(str(error))
        st.stop()
    st.sidebar.caption(loaded.description)
    return loaded


def choose_checkpoint() -> Path:
    """A run under the runs folder or a typed path inside it, as the checkpoint file it means; stops the page with a
    message if none, or if the path is outside the runs folder (`streamlit run streamlit_app.py -- --runs DIR`)."""
    root = runs_folder(sys.argv[1:])
    runs = [str(run) for run in list_runs(root)]
    keep_in("run_choice", [""] + runs, "")
    run = st.sidebar.selectbox(
        f"Run under {root}/", [""] + runs, key="run_choice", format_func=lambda r: r or "(choose a run)"
    )
    if not runs:
        st.sidebar.caption(f"No runs under {root}/ yet: python -m vitlab.finetune --preset demo --out {root}/demo")
    typed = st.sidebar.text_input(f"...or a checkpoint file or run folder under {root}/", key="checkpoint_path").strip()
    if not (typed or run):
        st.info(f"Choose a run under {root}/ in the sidebar, or type the path of a vitlab checkpoint in it.")
        st.stop()
    try:
        return resolve_checkpoint(typed or run, root=root)
    except VitlabError as error:
        st.error(str(error))
        st.stop()


def choose_image(loaded: LoadedModel) -> tuple[torch.Tensor, str, list[str]]:
    """The image uint8 (3, H, W), its cache key, and lines to show under it."""
    st.sidebar.header("Image")
    image_sources = ["dataset", "upload"] if loaded.images is not None else ["upload"]
    keep_in("image_source", image_sources, image_sources[0])
    names = {"dataset": "Browse the dataset", "upload": "Upload an image"}
    source = st.sidebar.radio("Image source", image_sources, format_func=names.get, key="image_source", horizontal=True)
    if loaded.images is None:
        st.sidebar.caption(loaded.images_note)

    if source == "dataset":
        images = loaded.images
        count = len(images)
        keep_in("image_index", range(count), 0)
        index = st.sidebar.number_input(f"Image index (0 to {count - 1})", 0, count - 1, step=1, key="image_index")
        st.sidebar.button("Random image", key="random_image", on_click=pick_random_image, args=(count,))
        st.sidebar.caption(loaded.images_note)
        label = images.classes[int(images.labels[index])]
        line = f"True label: **{label}**" if images.classes == loaded.classes else f"Dataset label: {label}"
        return images.images[index], f"dataset:{index}", [line]

    upload = st.sidebar.file_uploader("PNG, JPEG, GIF or WebP image", type=list(uploads.EXTENSIONS), key="upload")
    if upload is None:
        st.info("Upload a PNG, JPEG, GIF or WebP image in the sidebar to see where the model looks.")
        st.stop()
    data = upload.getvalue()
    key = uploads.image_key(data)
    try:
        prepared = prepare_upload(key, loaded.model.image_size, data)
    except VitlabError as error:
        st.error(f"{upload.name}: {error}")
        st.stop()
    return prepared.image, f"upload:{key}", [f"Uploaded: {upload.name}", *prepared.notes]


# ---------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    st.set_page_config(page_title="vitlab attention explorer", layout="wide")
    # Less empty space above the title: on a projector every row counts.
    st.html("<style>[data-testid='stMainBlockContainer'] {padding-top: 2.5rem}</style>")
    st.title("Where does the Vision Transformer look?")
    try:  # the app's own flags (`-- --runs DIR`): a mistake there stops the page before anything loads
        runs_folder(sys.argv[1:])
    except VitlabError as error:
        print(f"vitlab: {error}", file=sys.stderr)  # for whoever started the app, in their terminal
        st.error(str(error))
        st.stop()
    keep_in("mode", MODES, MODES[0])
    mode = st.sidebar.radio("Mode", MODES, key="mode")
    loaded = choose_model()
    if mode == "Gallery":
        display = common.choose_display(loaded.model.image_size // loaded.model.patch_size)
        gallery.page(loaded, display)
        return
    image, image_key, image_lines = choose_image(loaded)
    display = common.choose_display(loaded.model.image_size // loaded.model.patch_size)
    if mode == "Guided tour":
        tour.page(loaded, image, image_key, display)
    elif mode == "Compare":
        compare.page(loaded, image, image_key, display)
    elif mode == "Which map?":
        methods.page(loaded, image, image_key, display)
    else:
        explore.page(loaded, image, image_key, image_lines, display)


main()
