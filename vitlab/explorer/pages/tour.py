"""The guided tour: one vitlab.explorer.tour step per screen, a question before the view, Back and Next."""

from __future__ import annotations

import dataclasses

import streamlit as st
import torch

from vitlab.explorer.drawing import HEAD_VIEW_PX, jpeg_bytes, render_overlay
from vitlab.explorer.pages import common, explore, methods
from vitlab.explorer.pages.common import Display, show
from vitlab.explorer.sources import LoadedModel
from vitlab.explorer.tour import TOUR, TourStep

STEP_KEY = "tour_step"  # session state: the index of the step on screen


def move(offset: int) -> None:
    """Back (-1) or Next (+1), kept inside the tour."""
    st.session_state[STEP_KEY] = min(max(st.session_state.get(STEP_KEY, 0) + offset, 0), len(TOUR) - 1)


def page(loaded: LoadedModel, image: torch.Tensor, image_key: str, display: Display) -> None:
    """The tour's current step for `image` uint8 (3, H, W) under `loaded`'s model."""
    common.keep_in(STEP_KEY, range(len(TOUR)), 0)
    index = st.session_state[STEP_KEY]
    step = TOUR[index]
    st.progress((index + 1) / len(TOUR), text=f"Step {index + 1} of {len(TOUR)}")
    st.header(step.title)
    st.markdown(step.text)
    st.markdown(f"**Predict before you look:** {step.question}")
    if st.toggle("I have my prediction: show me", key=f"reveal:{step.key}"):
        views = common.analyse(loaded.key, image_key, loaded, image)
        left, _ = st.columns([3, 2]) if step.key in WIDE else st.columns([1, 1])
        with left:
            VIEWS[step.key](loaded, image, image_key, views, display)
        st.success(f"**What to look for:** {step.answer}")
    st.markdown(f"Lesson: `{step.lesson_path}` (run it: `python {step.lesson_path}`)")
    back, _, forward = st.columns([1, 4, 1])
    back.button("Back", key="tour_back", on_click=move, args=(-1,), disabled=index == 0, width="stretch")
    forward.button("Next", key="tour_next", on_click=move, args=(1,), disabled=index == len(TOUR) - 1,
                   width="stretch")


def _patches(loaded, image, image_key, views, display: Display) -> None:
    grid = views.geometry
    show(dataclasses.replace(display, grid=grid.grid_size).draw(image, None))
    st.caption(f"{grid.grid_size}x{grid.grid_size} = {grid.grid_size**2} patches of {grid.patch_size}x"
               f"{grid.patch_size} pixels, plus one class token: {grid.grid_size**2 + 1} tokens.")


def _filters(loaded, image, image_key, views, display: Display) -> None:
    st.image(common.model_figure(loaded.key, "filters", loaded), width="stretch")


def _positions(loaded, image, image_key, views, display: Display) -> None:
    st.image(common.model_figure(loaded.key, "positions", loaded), width="stretch")


def _one_head(loaded, image, image_key, views, display: Display) -> None:
    last = views.num_layers - 1
    panels = [jpeg_bytes(display.draw(image, m, HEAD_VIEW_PX)) for m in views.head_maps(last)]
    st.image(panels, caption=[f"block {last + 1}, head {h}" for h in range(views.num_heads)],
             width=HEAD_VIEW_PX)


def _query(loaded, image, image_key, views, display: Display) -> None:
    middle = views.geometry.grid_size // 2
    first, last = st.columns(2)
    for column, layer in ((first, 0), (last, views.num_layers - 1)):
        with column:
            show(display.draw(image, views.query_map(layer, 0, middle, middle), highlight=(middle, middle)))
            st.caption(f"Block {layer + 1}, head 0: where the outlined patch looks.")


def _distance(loaded, image, image_key, views, display: Display) -> None:
    explore.distance_view(loaded, image, image_key)


def _rollout(loaded, image, image_key, views, display: Display) -> None:
    last, flow = st.columns(2)
    with last:
        show(display.draw(image, views.cls_map(views.num_layers - 1, 0)))
        st.caption(f"The class token in block {views.num_layers}, head 0.")
    with flow:
        show(display.draw(image, views.rollout_map("mean", 0.0)))
        st.caption("Rollout through all blocks (mean over heads).")


def _class_specific(loaded, image, image_key, views, display: Display) -> None:
    relevance, explained = common.explain(loaded.key, image_key, None, loaded, image)
    show(display.draw(image, relevance))
    st.caption(f"The evidence for the predicted class, {loaded.classes[explained]}.")


def _lens(loaded, image, image_key, views, display: Display) -> None:
    st.table(explore.lens_table(explore.lens_rows(loaded.key, image_key, loaded, image), loaded.classes))


def _probes(loaded, image, image_key, views, display: Display) -> None:
    st.info("A probe is trained on many images' features, so it is not computed here: the lesson fits one logistic "
            "regression per block on the training split and plots the held-out accuracy by depth, beside the "
            "logit lens' agreement with the final prediction.")


def _norms(loaded, image, image_key, views, display: Display) -> None:
    found = common.tokens(loaded.key, image_key, loaded, image)
    show(display.draw(image, found.norms[-1]))
    norms = found.norms.flatten(1)  # (blocks, patches)
    st.caption(f"Patch-token norms after the last block (bright: long): median {float(norms[-1].median()):.1f}, "
               f"largest {float(norms[-1].max()):.1f}; the class token's is {float(found.class_norms[-1]):.1f}.")


def _pca(loaded, image, image_key, views, display: Display) -> None:
    found = common.tokens(loaded.key, image_key, loaded, image)
    colours = (found.pca_rgb[-1] * 255).round().to(torch.uint8).permute(2, 0, 1)  # (grid, grid, 3) -> (3, g, g)
    first, second = st.columns(2)
    with first:
        show(display.draw(image, None))
    with second:
        show(render_overlay(colours, None))
    st.caption("Each patch's last-block features, first three principal components as red, green and blue.")


def _ablation(loaded, image, image_key, views, display: Display) -> None:
    last, heads = views.num_layers - 1, tuple(range(views.num_heads))
    before, after = explore.ablated(loaded.key, image_key, last, heads, loaded, image)
    st.table(explore.ablation_rows(before, after, loaded.classes, f"after (block {last + 1} off)"))


VIEWS = {
    "patches": _patches, "patch_embeddings": _filters, "position_embeddings": _positions, "one_head": _one_head,
    "query_patch": _query, "attention_distance": _distance, "rollout": _rollout, "class_specific": _class_specific,
    "logit_lens": _lens, "probes": _probes, "token_norms": _norms, "feature_pca": _pca, "head_ablation": _ablation,
    "which_map": lambda loaded, image, image_key, views, display: methods.draw(loaded, image, image_key, display),
}
WIDE = {"patches", "patch_embeddings", "position_embeddings", "attention_distance", "class_specific", "token_norms",
        "which_map"}


def _check(steps: tuple[TourStep, ...]) -> None:
    """Every step has a drawing: a step added to vitlab.explorer.tour without one fails here, at import."""
    missing = [step.key for step in steps if step.key not in VIEWS]
    if missing:
        raise KeyError(f"tour steps without a view on the page: {missing}")


_check(TOUR)
