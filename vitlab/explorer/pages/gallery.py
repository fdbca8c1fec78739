"""Gallery: a grid of test images, each with one overlay (vitlab.explorer.gallery); a click opens it in Explore."""

from __future__ import annotations

import streamlit as st

from vitlab.errors import VitlabError
from vitlab.explorer.drawing import HEAD_VIEW_PX, jpeg_bytes
from vitlab.explorer.gallery import GALLERY_KINDS, GALLERY_VIEWS, build_gallery, predict
from vitlab.explorer.pages import common
from vitlab.explorer.pages.common import Display
from vitlab.explorer.sources import LoadedModel

COLUMNS = 4
KIND_LABELS = {"class": "One class", "misclassified": "Misclassified", "least_confident": "Least confident"}
VIEW_LABELS = {"cls": "Class token (last block)", "rollout": "Rollout", "class_specific": "Class-specific"}


@st.cache_data(max_entries=4, show_spinner="Classifying every test image (once per model)...")
def predictions(model_key: str, _loaded: LoadedModel):
    """(predicted, confidence) for every test image: the scan the misclassified and least-confident galleries
    need, kept per model so that changing the kind, class or view does not repeat it."""
    return predict(_loaded.model, _loaded.images.images)


@st.cache_data(max_entries=16, show_spinner="Building the gallery (one forward pass per image)...")
def build(model_key: str, kind: str, view: str, count: int, class_index: int | None, _loaded: LoadedModel):
    scanned = None if kind == "class" else predictions(model_key, _loaded)  # a class gallery needs no scan
    return build_gallery(_loaded.model, _loaded.images, kind, view, count=count, class_index=class_index,
                                  predictions=scanned)


def open_in_explore(index: int) -> None:
    """The button under an image: show it in Explore (a callback, so it runs before the widgets are drawn)."""
    st.session_state.update(mode="Explore", image_source="dataset", image_index=index)


def page(loaded: LoadedModel, display: Display) -> None:
    """A grid of `loaded`'s test images, each with the chosen view over it."""
    if loaded.images is None:
        st.info(f"The gallery shows the model's test images, and there are none here ({loaded.images_note}).")
        return
    kind_column, class_column, view_column = st.columns(3)
    kind = kind_column.selectbox("Images", GALLERY_KINDS, key="gallery_kind",
                                 format_func=lambda k: KIND_LABELS.get(k, k))
    common.keep_in("gallery_class", range(len(loaded.classes)), 0, scope=loaded.key)
    class_index = class_column.selectbox("Class", range(len(loaded.classes)), key="gallery_class",
                                         format_func=loaded.classes.__getitem__, disabled=kind != "class")
    view = view_column.selectbox("Overlay", GALLERY_VIEWS, key="gallery_view",
                                 format_func=lambda v: VIEW_LABELS.get(v, v))
    try:
        found = build(loaded.key, kind, view, 16, class_index if kind == "class" else None, loaded)
    except VitlabError as error:  # nothing matches (a model with no misclassified test image)
        st.info(str(error))
        return
    classes = loaded.classes
    columns = st.columns(COLUMNS)
    for slot, index in enumerate(found.indices):
        with columns[slot % COLUMNS]:
            picture = display.draw(loaded.images.images[index], found.maps[slot], HEAD_VIEW_PX)
            st.image(jpeg_bytes(picture), width="stretch")
            st.caption(f"#{index}: {classes[int(found.labels[slot])]}, predicted {classes[int(found.predicted[slot])]}"
                       f" ({float(found.confidence[slot]):.0%})")
            st.button("Open in Explore", key=f"gallery_open:{index}", on_click=open_in_explore, args=(index,))
