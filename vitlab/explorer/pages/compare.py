"""Compare: one image through two models, views aligned, with the difference map (vitlab.explorer.compare)."""

from __future__ import annotations

import sys

import streamlit as st
import torch

from vitlab.errors import VitlabError
from vitlab.explorer.compare import compare_maps
from vitlab.explorer.pages import common
from vitlab.explorer.pages.common import Display, show
from vitlab.explorer.runs_folder import runs_folder
from vitlab.explorer.sources import SOURCES, LoadedModel, imagenet_available, resolve_checkpoint, source_stamp

DIFFERENCE_CMAP = "RdBu_r"  # diverging: red where the second model attends more, blue where less, white equal
VIEW_LABELS = {"cls": "Class token", "rollout": "Rollout"}


def choose_second(first: LoadedModel) -> LoadedModel | None:
    """The model to compare with: another source, or a checkpoint typed by path; None (with a message) if none."""
    sources = [s for s in SOURCES if s != "imagenet" or imagenet_available()]
    default = "base" if "base" in sources else "checkpoint"
    common.keep_in("compare_source", sources, default)
    source = st.selectbox("Compare with", sources, key="compare_source")
    path = None
    if source == "checkpoint":
        path = st.text_input("Checkpoint file or run folder to compare with", key="compare_path").strip()
        if not path:
            st.info("Type the path of a vitlab checkpoint or run folder to compare with.")
            return None
    try:
        root = runs_folder(sys.argv[1:])  # a typed path is fenced to the runs folder, as in the sidebar
        checkpoint = None if path is None else resolve_checkpoint(path, root=root)
        stamp = source_stamp(source, checkpoint)
        return common.load_source(source, None if checkpoint is None else str(checkpoint), stamp)
    except (VitlabError, RuntimeError) as error:
        st.error(str(error))
        return None


def page(first: LoadedModel, image: torch.Tensor, image_key: str, display: Display) -> None:
    """`image` uint8 (3, H, W) through the sidebar's model and a second one, side by side."""
    second = choose_second(first)
    if second is None:
        return
    if second.model.image_size != first.model.image_size or second.model.patch_size != first.model.patch_size:
        st.error(f"These two models cut images differently ({first.model.image_size} px in "
                 f"{first.model.patch_size}-px patches against {second.model.image_size} px in "
                 f"{second.model.patch_size}-px patches), so their maps cannot be aligned. Choose models of one "
                 "architecture.")
        return
    one, two = (common.analyse(m.key, image_key, m, image) for m in (first, second))
    view_column, block_column, head_column = st.columns(3)
    view = view_column.selectbox("View", tuple(VIEW_LABELS), format_func=VIEW_LABELS.get, key="compare_view")
    common.keep_in("compare_layer", range(1, one.num_layers + 1), one.num_layers)
    layer = block_column.slider("Block", 1, one.num_layers, key="compare_layer", disabled=view != "cls") - 1
    head = head_column.slider("Head", 0, one.num_heads - 1, 0, key="compare_head", disabled=view != "cls")
    at = {"layer": layer, "head": head} if view == "cls" else {}  # rollout runs through every block and head
    found = compare_maps(one, two, view, **at)
    name = lambda which: common.export_file(first, image_key, f"compare_{view}_{which}", "png")  # noqa: E731
    columns = st.columns(3, gap="large")
    for column, title, model, grid_map, views in ((columns[0], "First", first, found.first, one),
                                                  (columns[1], "Second", second, found.second, two)):
        with column:
            st.subheader(f"{title}: {common.model_label(model)}")
            show(display.draw(image, grid_map), name(title.lower()))
            top, probability = views.top_k(1)[0]
            st.caption(f"{model.description} Predicts **{model.classes[top]}** ({probability:.1%}).")
    with columns[2]:
        st.subheader("Difference (second - first)")
        largest = max(float(found.difference.abs().max()), 1e-12)
        show(display.draw(image, found.difference, cmap=DIFFERENCE_CMAP, value_range=(-largest, largest)),
             name("difference"))
        st.caption(f"Red: the second model attends more; blue: less; white: the same. Ends at +/-{largest:.3f}.")
