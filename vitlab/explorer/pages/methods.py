"""Which map? Every relevance method on the chosen image, side by side, with its deletion and insertion areas against
random maps (vitlab.explorer.methods). The tour's last step draws the same view."""

from __future__ import annotations

import streamlit as st
import torch

from vitlab.explorer.methods import MethodComparison, compare_methods
from vitlab.explorer.pages import common
from vitlab.explorer.pages.common import Display, show
from vitlab.explorer.sources import LoadedModel

COLUMNS = 4  # maps per row


@st.cache_data(max_entries=16, show_spinner="Explaining the image seven ways and scoring each map...")
def methods_for(model_key: str, image_key: str, _loaded: LoadedModel, _image: torch.Tensor) -> MethodComparison:
    return compare_methods(_loaded.model, _image)


def draw(loaded: LoadedModel, image: torch.Tensor, image_key: str, display: Display) -> None:
    """The maps in a grid, each captioned with its areas, then the table with the random maps' row."""
    found = methods_for(loaded.key, image_key, loaded, image)
    names = list(found.maps)
    for start in range(0, len(names), COLUMNS):
        for column, name in zip(st.columns(COLUMNS), names[start:start + COLUMNS], strict=False):
            with column:
                show(display.draw(image, found.maps[name]), common.export_file(loaded, image_key, f"map_{name}",
                                                                              "png"))
                st.caption(f"**{name}**: deletion {found.deletion[name]:.3f}, insertion {found.insertion[name]:.3f}")
    st.table(found.rows())
    st.caption(f"Every map explains **{loaded.classes[found.target]}**, the prediction. Deletion: the class's mean "
               f"probability as patches are removed most relevant first (lower is better; random maps "
               f"{found.random_deletion:.3f}); insertion: as they are revealed (higher is better; random "
               f"{found.random_insertion:.3f}).")
    for why in found.unavailable.values():
        st.info(why)


def page(loaded: LoadedModel, image: torch.Tensor, image_key: str, display: Display) -> None:
    """The "Which map?" mode for `image` uint8 (3, H, W)."""
    st.header("Which map should you trust?")
    st.markdown("Seven ways to ask which patches matter, on the same image. None is ground truth: a map is only as "
                "good as its deletion and insertion areas beat the random maps'. Lesson: "
                "`lessons/17_which_map_to_trust.py`.")
    draw(loaded, image, image_key, display)
