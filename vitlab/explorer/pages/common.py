"""What every mode of the explorer shares: the caches, the display options (projector mode) and `show`.

The model is cached with st.cache_resource (one object for every session, never mutated) and each image's work with
st.cache_data, keyed by (model key, image key): a slider move never runs the model again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from vitlab.explorer import figures
from vitlab.explorer.drawing import (
    MAIN_VIEW_PX,
    PROJECTOR_CMAP,
    PROJECTOR_GRID_PX,
    distance_figure_png,
    jpeg_bytes,
    render_overlay,
)
from vitlab.explorer.export import export_name, png_bytes
from vitlab.explorer.sources import LoadedModel, load_model_source
from vitlab.explorer.uploads import PreparedImage, preprocess_upload
from vitlab.explorer.views import ImageViews, analyse_image, class_map, mean_distances

# Projector mode: type large enough to read from the back of a classroom.
PROJECTOR_CSS = """<style>
html, body, [data-testid="stMarkdownContainer"] p, [data-testid="stCaptionContainer"], label, li {font-size: 1.3rem}
h1 {font-size: 3rem !important} h2, h3 {font-size: 2rem !important}
</style>"""


# ---------------------------------------------------------------------------------------------------------------
# Caches
# ---------------------------------------------------------------------------------------------------------------


@st.cache_resource(max_entries=3, show_spinner="Loading the model (the demo model trains once, on first use)...")
def load_source(source: str, path: str | None, stamp: str) -> LoadedModel:
    """`stamp` names the files behind the model (cache folder, modification time), so a changed file reloads."""
    return load_model_source(source, path)


@st.cache_data(max_entries=32, show_spinner=False)
def prepare_upload(upload_key: str, image_size: int, _data: bytes) -> PreparedImage:
    return preprocess_upload(_data, image_size)


@st.cache_data(max_entries=16, show_spinner="Running the model on this image...")  # ViT-B/16: 22 MB each
def analyse(model_key: str, image_key: str, _loaded: LoadedModel, _image: torch.Tensor):
    return analyse_image(_loaded.model, _image)


@st.cache_data(max_entries=64, show_spinner="Computing the class-specific map (forward and backward pass)...")
def explain(model_key: str, image_key: str, target: int | None, _loaded: LoadedModel, _image: torch.Tensor):
    return class_map(_loaded.model, _image, target)


@st.cache_data(max_entries=64, show_spinner=False)
def rollout(model_key: str, image_key: str, fusion: str, discard: float, _views: ImageViews) -> torch.Tensor:
    """(grid, grid) rollout, kept: it multiplies every block's attention (tens of ms for ViT-B/16), and a layer or
    head slider move reruns the fragment that shows it without changing it."""
    return _views.rollout_map(fusion, discard)


@st.cache_data(max_entries=8, show_spinner="Measuring how far each head looks (once per model)...")
def distance_png(model_key: str, images_key: str, _loaded: LoadedModel, _images: torch.Tensor) -> bytes:
    distances = mean_distances(_loaded.model, _images)  # (layers, heads)
    return distance_figure_png(distances, _loaded.model.patch_size)


@st.cache_data(max_entries=8, show_spinner=False)
def model_figure(model_key: str, figure: str, _loaded: LoadedModel) -> bytes:
    """One of the tour's per-model figures ("filters" or "positions") as PNG bytes, rendered once per model."""
    draw = {"filters": figures.filter_components_png, "positions": figures.position_similarity_png}[figure]
    return draw(_loaded.model)


@st.cache_data(max_entries=16, show_spinner=False)
def tokens(model_key: str, image_key: str, _loaded: LoadedModel, _image: torch.Tensor):
    return figures.token_views(_loaded.model, _image)


def keep_in(key: str, allowed, default, scope: str | None = None) -> None:
    """Reset a widget's remembered value when it no longer fits (another model has other layers, classes...).

    `scope` (a model key): also reset when it changes, for values whose meaning belongs to one model (class 2 of
    one model is not class 2 of another, even where both have a class 2).
    """
    if scope is not None and st.session_state.get(f"{key}:scope") != scope:
        st.session_state[f"{key}:scope"] = scope
        st.session_state[key] = default
    if st.session_state.get(key, default) not in allowed:
        st.session_state[key] = default
    st.session_state.setdefault(key, default)


def model_label(loaded: LoadedModel) -> str:
    """A short name for file names: the source, and a checkpoint's run folder ("checkpoint-demo")."""
    source, _, rest = loaded.key.partition(":")
    if source != "checkpoint":
        return source
    return f"checkpoint-{Path(rest.rsplit(':', 1)[0]).parent.name}"  # rest: "<file>:<modification time>"


def export_file(loaded: LoadedModel, image_key: str, view: str, ext: str) -> str | None:
    """The download's file name (vitlab.explorer.export_name): model, image and view."""
    return export_name(model_label(loaded), image_key, view, ext)


# ---------------------------------------------------------------------------------------------------------------
# Display: projector mode, smooth or patch-exact overlays
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Display:
    """How every view is drawn; the sidebar's Display section sets it."""

    grid: int | None  # patches per side when the patch grid is shown, else None
    smooth: bool  # bilinear overlays; False: patch-exact (nearest)
    cmap: str
    grid_px: int  # thickness of the patch-grid lines
    projector: bool

    def draw(self, image: torch.Tensor, grid_map: torch.Tensor | None, size: int = MAIN_VIEW_PX,
             **options) -> np.ndarray:
        """render_overlay with these settings: uint8 (size, size, 3)."""
        options = {"cmap": self.cmap, **options}
        return render_overlay(image, grid_map, size, patch_grid=self.grid, smooth=self.smooth,
                                       grid_px=self.grid_px, **options)


def choose_display(grid_size: int) -> Display:
    """The sidebar's Display section: projector mode, patch grid, smooth or patch-exact overlays."""
    st.sidebar.header("Display")
    projector = st.sidebar.toggle("Projector mode", key="projector",
                                  help="Larger type, thicker patch grid, a high-contrast colour map.")
    grid = st.sidebar.toggle("Show the patch grid", key="patch_grid")
    smooth = st.sidebar.radio("Overlay", ("smooth", "patch-exact"), key="overlay", horizontal=True,
                              help="Patch-exact draws one colour per patch: attention lives on patches.")
    if projector:
        st.html(PROJECTOR_CSS)
    return Display(
        grid=grid_size if grid else None, smooth=smooth == "smooth",
        cmap=PROJECTOR_CMAP if projector else "inferno",
        grid_px=PROJECTOR_GRID_PX if projector else 1, projector=projector,
    )


def show(picture: np.ndarray, name: str | None = None) -> None:
    """One view, `picture` uint8 (H, W, 3), sent as JPEG (cheap for every slider move), and under it a PNG
    download named `name` (if given). The PNG is encoded only when clicked."""
    st.image(jpeg_bytes(picture), width="stretch")
    if name is not None:
        st.download_button("Download PNG", data=lambda: png_bytes(picture), file_name=name,
                           mime="image/png", key=f"png:{name}", on_click="ignore", type="tertiary")
