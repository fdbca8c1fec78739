"""Explore: free exploration of one image, every view, the live head ablation and logit lens, the .npz export."""

from __future__ import annotations

import streamlit as st
import torch

from vitlab.explorer.drawing import HEAD_VIEW_PX, jpeg_bytes
from vitlab.explorer.export import maps_npz
from vitlab.explorer.live import lens_top, top_k_ablated
from vitlab.explorer.pages import common
from vitlab.explorer.pages.common import Display, keep_in, show
from vitlab.explorer.sources import LoadedModel
from vitlab.explorer.views import DISTANCE_IMAGES, ImageViews

FUSIONS = ("mean", "max", "min")
PREDICTED = -1  # the class selector's "explain the predicted class"


def page(loaded: LoadedModel, image: torch.Tensor, image_key: str, image_lines: list[str],
         display: Display) -> None:
    """The explore page for `image` uint8 (3, H, W) under `loaded`'s model."""
    views = common.analyse(loaded.key, image_key, loaded, image)
    geometry, classes = views.geometry, loaded.classes
    name = lambda view, ext="png": common.export_file(loaded, image_key, view, ext)  # noqa: E731
    picture, prediction, why = st.columns(3, gap="large")
    with picture:
        st.subheader("Image")
        show(display.draw(image, None), name("image"))
        st.markdown("  \n".join(image_lines))
        st.caption(
            f"What the model sees: {geometry.image_size}x{geometry.image_size} pixels cut into a "
            f"{geometry.grid_size}x{geometry.grid_size} grid of {geometry.patch_size}-pixel patches."
        )
    with prediction:
        st.subheader("Prediction")
        for index, probability in views.top_k(5):
            st.progress(min(max(probability, 0.0), 1.0), text=f"**{classes[index]}**: {probability:.1%}")
        st.caption("The five most likely classes and their softmax probabilities.")
    with why:
        st.subheader("Class-specific")
        keep_in("target_class", range(PREDICTED, len(classes)), PREDICTED, scope=loaded.key)
        # The predicted class's entry names no class: Chromium kept showing the selected entry's old text when only
        # the options changed (seen on a change of model); the caption below names the class explained.
        target = st.selectbox(
            "Explain the class", range(PREDICTED, len(classes)), key="target_class",
            format_func=lambda c: "the predicted class" if c == PREDICTED else classes[c],
        )
        target = None if target == PREDICTED else target
        relevance, explained = common.explain(loaded.key, image_key, target, loaded, image)
        show(display.draw(image, relevance), name("class_specific"))
        st.caption(
            f"Gradient-weighted attention (Chefer et al. 2021) for **{classes[explained]}** "
            f"({float(views.probs[explained]):.1%}): the patches whose attention raised that class's score."
        )

    st.divider()
    # Two fragments side by side: a layer or head move reruns only the left one; rollout does not depend on them.
    left, right = st.columns([2, 1], gap="large")
    with left:
        attention_views(loaded, image, image_key, views, display)
    with right:
        rollout_view(loaded, image_key, image, views, display, relevance)
    st.divider()
    live_panel(loaded, image, image_key, views)
    st.divider()
    distance_view(loaded, image, image_key)


def distance_view(loaded: LoadedModel, image: torch.Tensor, image_key: str) -> None:
    st.subheader("Mean attention distance")
    if loaded.images is not None:
        sample, sample_key = loaded.images.images[: DISTANCE_IMAGES], "dataset"
    else:
        sample, sample_key = image[None], image_key
    left, _ = st.columns([3, 2])
    with left:
        st.image(common.distance_png(loaded.key, sample_key, loaded, sample), width="stretch")
    st.caption(
        f"How far, in pixels, each head looks on average in every block, over {len(sample)} "
        f"image{'s' if len(sample) > 1 else ''}: the ViT paper's measure of local versus global attention."
    )


@st.fragment
def attention_views(loaded: LoadedModel, image: torch.Tensor, image_key: str, views: ImageViews,
                    display: Display) -> None:
    """Everything the layer, head and query controls change. A fragment: moving one of them reruns only this part
    of the page, from the cached forward pass, so the browser redraws only these views."""
    keep_in("layer", range(1, views.num_layers + 1), views.num_layers)
    keep_in("head", range(views.num_heads), 0)
    block_column, head_column = st.columns(2, gap="large")
    layer = block_column.slider("Encoder block (layer)", 1, views.num_layers, key="layer") - 1
    head = head_column.slider("Head", 0, views.num_heads - 1, key="head")
    name = lambda view, ext="png": common.export_file(loaded, image_key, view, ext)  # noqa: E731

    attention, query = st.columns(2, gap="large")
    with attention:
        st.subheader("Class token")
        show(display.draw(image, views.cls_map(layer, head)), name(f"cls_block{layer + 1}_head{head}"))
        st.caption(
            f"Block {layer + 1}, head {head}: bright patches are where the class token looks, the token whose final "
            f"state the classifier reads."
        )
    with query:
        st.subheader("Query patch")
        size = views.geometry.grid_size
        keep_in("query_row", range(size), size // 2)
        keep_in("query_col", range(size), size // 2)
        rows, cols = st.columns(2)
        row = rows.slider("Patch row", 0, size - 1, key="query_row")
        col = cols.slider("Patch column", 0, size - 1, key="query_col")
        show(display.draw(image, views.query_map(layer, head, row, col), highlight=(row, col)),
             name(f"query_block{layer + 1}_head{head}_r{row}c{col}"))
        st.caption(f"Block {layer + 1}, head {head}: where the outlined patch looks, its own row of attention.")

    st.subheader(f"All {views.num_heads} heads of block {layer + 1}")
    panels = [jpeg_bytes(display.draw(image, m, HEAD_VIEW_PX)) for m in views.head_maps(layer)]
    names = [f"head {index}" + (" (chosen)" if index == head else "") for index in range(views.num_heads)]
    st.image(panels, caption=names, width=HEAD_VIEW_PX)  # one element
    st.caption("The class token's attention in every head of the chosen block: heads of one block look at different "
               "things.")


@st.fragment
def rollout_view(loaded: LoadedModel, image_key: str, image: torch.Tensor, views: ImageViews,
                 display: Display, relevance: torch.Tensor) -> None:
    """Rollout and its controls, a fragment of its own: its head fusion and discard ratio redraw only it."""
    name = lambda view, ext="png": common.export_file(loaded, image_key, view, ext)  # noqa: E731
    st.subheader("Rollout")
    fusions, discards = st.columns(2)
    fusion = fusions.selectbox("Head fusion", FUSIONS, key="fusion")
    discard = discards.slider("Discard ratio", 0.0, 0.9, 0.0, 0.05, key="discard_ratio")
    flow_map = common.rollout(loaded.key, image_key, fusion, discard, views)  # (grid, grid)
    show(display.draw(image, flow_map), name(f"rollout_{fusion}_{discard:.2f}"))
    st.caption(
        "All blocks at once: attention multiplied through the layers, plus the residual path; discarding the "
        "weakest links sharpens the map."
    )
    raw_maps_download(loaded, image_key, views, flow_map, relevance)


def raw_maps_download(loaded: LoadedModel, image_key: str, views: ImageViews,
                      flow_map: torch.Tensor, relevance: torch.Tensor) -> None:
    """The image's raw maps as .npz (vitlab.explorer.export.maps_npz), encoded only when the button is clicked."""
    st.download_button(
        "Download the raw maps (.npz)", data=lambda: maps_npz(views, flow_map, relevance),
        file_name=common.export_file(loaded, image_key, "maps", "npz"), mime="application/octet-stream",
        key="download_npz", on_click="ignore",
    )


def live_panel(loaded: LoadedModel, image: torch.Tensor, image_key: str, views: ImageViews) -> None:
    """Live head ablation (top-5 before and after) and the logit lens, block by block (vitlab.explorer.live)."""
    st.subheader("Switch heads off, and the logit lens")
    classes = loaded.classes
    ablation, lens = st.columns(2, gap="large")
    with ablation:
        keep_in("ablate_block", range(1, views.num_layers + 1), views.num_layers)
        block = st.selectbox("Block", range(1, views.num_layers + 1), key="ablate_block")
        heads = st.multiselect("Heads to switch off", list(range(views.num_heads)), key="ablate_heads")
        before, after = ablated(loaded.key, image_key, block - 1, tuple(heads), loaded, image)
        st.table(ablation_rows(before, after, classes))
        st.caption(f"Top 5 with heads {', '.join(map(str, heads)) or '(none)'} of block {block} switched off: their "
                   "output zeroed before the block's output projection (Michel et al. 2019).")
    with lens:
        st.table(lens_table(lens_rows(loaded.key, image_key, loaded, image), classes))
        st.caption("The logit lens: the final layer norm and classifier read each block's class token, as if the "
                   "model stopped there.")


def ablation_rows(before: list, after: list, classes: list[str], after_label: str = "after") -> list[dict]:
    """The table of top-5 (class, probability) before and after an ablation, one row per rank."""
    return [{"before": f"{classes[c]} {p:.1%}", after_label: f"{classes[d]} {q:.1%}"}
            for (c, p), (d, q) in zip(before, after, strict=True)]


def lens_table(rows: list, classes: list[str]) -> list[dict]:
    """The logit lens's top-3 per block (lens_rows) as a table, one row per block."""
    return [{"block": b + 1, "top 3": ", ".join(f"{classes[c]} {p:.0%}" for c, p in top)} for b, top in enumerate(rows)]


@st.cache_data(max_entries=64, show_spinner="Running the model with those heads switched off...")
def ablated(model_key: str, image_key: str, block: int, heads: tuple[int, ...], _loaded: LoadedModel,
            _image: torch.Tensor):
    return top_k_ablated(_loaded.model, _image, {block: list(heads)} if heads else {}, k=5)


@st.cache_data(max_entries=16, show_spinner=False)
def lens_rows(model_key: str, image_key: str, _loaded: LoadedModel, _image: torch.Tensor):
    return lens_top(_loaded.model, _image, k=3)
