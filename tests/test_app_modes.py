"""The explorer's modes (tour, gallery, compare, live panel, export, projector) and their pieces.

Gallery, Compare, the live panel and the downloads use vitlab.explorer.gallery, .compare, .live and .export.
"""

from __future__ import annotations

import io
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from matplotlib import colormaps
from streamlit.testing.v1 import AppTest

from vitlab import explorer
from vitlab.analysis.explain import METHODS
from vitlab.capture import capture_forward
from vitlab.explorer import export, figures, gallery, live
from vitlab.explorer.drawing import PROJECTOR_CMAP, PROJECTOR_GRID_PX, jpeg_bytes, overlay_values
from vitlab.explorer.pages import common as common_page
from vitlab.explorer.pages import gallery as gallery_page
from vitlab.explorer.sources import source_stamp
from vitlab.explorer.tour import TOUR, step_index
from vitlab.explorer.views import model_inputs

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "streamlit_app.py"
TIMEOUT = 300  # seconds per AppTest run: a first run loads the model, and the CPU may be shared


@pytest.fixture(autouse=True)
def app_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app reads its own flags from sys.argv (`streamlit run streamlit_app.py -- --runs DIR`); under pytest
    sys.argv is pytest's, which the app would refuse: give it none, as a plain `streamlit run` does."""
    monkeypatch.setattr(sys, "argv", [str(APP)])


# ---------------------------------------------------------------------------------------------------------------
# Drawing: patch-exact overlays, grid thickness, fixed value ranges
# ---------------------------------------------------------------------------------------------------------------


def test_patch_exact_overlay_is_constant_within_each_patch_and_smooth_is_not():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    grid_map = torch.arange(16.0).reshape(4, 4)  # 16 distinct values: every patch its own colour
    exact = explorer.render_overlay(image, grid_map, 64, smooth=False, alpha=1.0)
    blocks = exact.reshape(4, 16, 4, 16, 3)  # (row, y, col, x, rgb)
    assert (blocks == blocks[:, :1, :, :1]).all()  # each 16x16 patch is one colour
    colours = {tuple(blocks[r, 0, c, 0]) for r in range(4) for c in range(4)}
    assert len(colours) == 16
    expected = (np.array(colormaps["inferno"](15 / 15)[:3]) * 255).round()  # the largest value: the map's top end
    assert tuple(blocks[3, 0, 3, 0]) == tuple(expected.astype(np.uint8))
    smooth = explorer.render_overlay(image, grid_map, 64, smooth=True, alpha=1.0).reshape(4, 16, 4, 16, 3)
    assert not (smooth == smooth[:, :1, :, :1]).all()


def test_patch_grid_lines_sit_on_patch_borders_with_the_given_thickness():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)  # black: every lightened pixel is a grid line
    for grid_px, expected_rows in ((1, [16, 32, 48]), (3, [15, 16, 17, 31, 32, 33, 47, 48, 49])):
        picture = explorer.render_overlay(image, None, 64, patch_grid=4, grid_px=grid_px)
        lit_rows = np.flatnonzero(picture[:, 5].any(axis=-1))  # column 5 crosses no vertical line
        lit_cols = np.flatnonzero(picture[5, :].any(axis=-1))
        assert lit_rows.tolist() == expected_rows and lit_cols.tolist() == expected_rows
        assert tuple(picture[16, 5]) == (178, 178, 178)  # 0.3 * black + 0.7 * white


def test_value_range_keeps_zero_at_a_diverging_maps_middle():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    difference = torch.zeros(4, 4)
    difference[0, 0], difference[3, 3] = 0.5, -0.1  # not symmetric: min-max scaling would move zero off-centre
    picture = explorer.render_overlay(image, difference, 64, smooth=False, alpha=1.0, cmap="RdBu_r",
                                      value_range=(-0.5, 0.5))
    middle = (np.array(colormaps["RdBu_r"](0.5)[:3]) * 255).round().astype(np.uint8)
    assert tuple(picture[20, 40]) == tuple(middle)  # a zero patch: the neutral colour
    top = (np.array(colormaps["RdBu_r"](1.0)[:3]) * 255).round().astype(np.uint8)
    assert tuple(picture[0, 0]) == tuple(top)


# ---------------------------------------------------------------------------------------------------------------
# The tour as data, and the tour's token views
# ---------------------------------------------------------------------------------------------------------------


def test_every_tour_step_names_a_lesson_file_in_the_lessons_order():
    lesson_files = sorted(path.name for path in (ROOT / "lessons").glob("[0-9][0-9]_*.py"))
    for step in TOUR:
        assert (ROOT / step.lesson_path).is_file(), step.lesson_path
    named = [step.lesson for step in TOUR]
    assert named == [name for name in lesson_files if name in named]  # the order of lessons/
    assert [step.lesson_number for step in TOUR] == [1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 17]
    assert len({step.key for step in TOUR}) == len(TOUR)
    assert all(step.question.endswith("?") and step.text and step.answer for step in TOUR)
    assert step_index("rollout") == 6
    with pytest.raises(KeyError, match="no tour step"):
        step_index("webcam")


def test_the_tour_page_has_a_view_for_every_step():
    from vitlab.explorer.pages import tour

    assert set(tour.VIEWS) == {step.key for step in TOUR}


def test_token_views_are_each_blocks_norms_and_pca_colours(demo_model):
    model, splits = demo_model
    image = splits.test.images[0]
    found = figures.token_views(model, image)
    with torch.no_grad():
        _, captured = capture_forward(model, model_inputs(model, image))
    last = captured.hidden_states[-1][0]  # (T, hidden)
    assert torch.allclose(found.norms[-1].flatten(), last[1:].norm(dim=-1))
    assert torch.isclose(found.class_norms[-1], last[0].norm())
    assert found.norms.shape == (4, 8, 8) and found.pca_rgb.shape == (4, 8, 8, 3)
    assert found.pca_rgb.min() >= 0 and found.pca_rgb.max() <= 1
    assert found.pca_rgb[-1].amax(dim=(0, 1)).tolist() == [1.0, 1.0, 1.0]  # each component scaled to [0, 1]


def test_model_figures_are_pngs(demo_model):
    model, _ = demo_model
    for draw in (figures.filter_components_png, figures.position_similarity_png):
        assert draw(model)[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------------------
# The app through AppTest
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def app(demo_cache, tmp_path, monkeypatch) -> AppTest:
    """The app after its first run on the demo model, in an empty folder (no runs/, no ./data, no ImageNet)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()


def assert_healthy(at: AppTest, images: int = 1) -> None:
    assert not at.exception, "\n".join(e.message for e in at.exception)
    assert not at.error, [e.value for e in at.error]
    assert sum(len(element.proto.imgs) for element in at.image) >= images


def test_the_tour_walks_every_step_with_its_question_view_and_lesson(app):
    app.radio(key="mode").set_value("Guided tour").run()
    for index, step in enumerate(TOUR):
        assert_healthy(app, images=0)
        assert app.header[0].value == step.title
        assert f"Step {index + 1} of {len(TOUR)}" in app.get("progress")[0].proto.text
        text = " ".join(m.value for m in app.markdown)
        assert step.question in text and step.lesson_path in text
        assert not app.success  # the answer waits for the student's prediction
        app.toggle(key=f"reveal:{step.key}").set_value(True).run()
        assert_healthy(app, images=0)
        assert step.answer in app.success[0].value
        assert app.button(key="tour_back").disabled == (index == 0)
        if index < len(TOUR) - 1:
            app.button(key="tour_next").click().run()
    assert app.button(key="tour_next").disabled
    app.button(key="tour_back").click().run()
    assert app.header[0].value == TOUR[-2].title


def test_projector_mode_and_patch_exact_overlays_reach_every_drawing(app, monkeypatch):
    calls = []
    render = explorer.render_overlay

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return render(*args, **kwargs)

    monkeypatch.setattr(common_page, "render_overlay", recording)  # where the page draws
    app.toggle(key="projector").set_value(True).run()
    app.radio(key="overlay").set_value("patch-exact").run()
    app.toggle(key="patch_grid").set_value(True).run()
    assert_healthy(app, images=10)
    assert any("font-size: 1.3rem" in element.proto.body for element in app.get("html"))
    last_run = calls[-9:]  # the fragment's 3 views and 4 heads, and the page's image and class-specific views
    assert all(c["cmap"] == PROJECTOR_CMAP and c["grid_px"] == PROJECTOR_GRID_PX
               and c["smooth"] is False and c["patch_grid"] == 8 for c in last_run), last_run
    app.toggle(key="projector").set_value(False).run()
    assert_healthy(app, images=10)
    assert not any("font-size: 1.3rem" in element.proto.body for element in app.get("html"))
    assert calls[-1]["cmap"] == "inferno" and calls[-1]["grid_px"] == 1


def test_the_model_loads_once_for_every_session(demo_cache, tmp_path, monkeypatch):
    import streamlit as st

    from vitlab.explorer.pages import common

    monkeypatch.chdir(tmp_path)
    st.cache_resource.clear()
    loads = []
    load = explorer.load_model_source
    monkeypatch.setattr(common, "load_model_source", lambda *args: loads.append(args) or load(*args))
    sessions = [AppTest.from_file(str(APP), default_timeout=TIMEOUT).run() for _ in range(2)]
    for session in sessions:
        assert_healthy(session, images=10)
    assert loads == [("demo", None)]  # two sessions, one load
    stamp = source_stamp("demo")
    assert common.load_source("demo", None, stamp) is common.load_source("demo", None, stamp)


def test_gallery_opens_an_image_in_explore(app):
    app.radio(key="mode").set_value("Gallery").run()
    assert_healthy(app, images=16)
    from vitlab.explorer.pages.gallery import KIND_LABELS

    assert app.selectbox(key="gallery_kind").options == [KIND_LABELS[kind] for kind in gallery.GALLERY_KINDS]
    captions = [c.value for c in app.caption if c.value.startswith("#")]
    assert len(captions) == 16
    index = int(re.match(r"#(\d+)", captions[5]).group(1))
    app.selectbox(key="gallery_view").set_value("rollout").run()
    assert_healthy(app, images=16)
    app.button(key=f"gallery_open:{index}").click().run()
    assert_healthy(app, images=10)
    assert app.radio(key="mode").value == "Explore" and app.number_input(key="image_index").value == index
    app.radio(key="mode").set_value("Gallery").run()
    app.selectbox(key="gallery_kind").set_value("class").run()
    app.selectbox(key="gallery_class").set_value(2).run()
    assert_healthy(app, images=1)
    wanted = app.selectbox(key="gallery_class").format_func(2)
    assert all(f": {wanted}," in c.value for c in app.caption if c.value.startswith("#"))


def test_the_gallery_scans_once_per_model_and_says_when_nothing_matches(demo_cache, demo_model, tmp_path,
                                                                       monkeypatch):
    """The test set is classified once per model, whatever kind, view or class follows; a gallery with no image
    (a model that gets every test image right has none misclassified) is a message, not an exception."""
    _, splits = demo_model
    scans = []

    def perfect(model, images, batch_size=64):  # every prediction right, at 90%
        scans.append(len(images))
        return splits.test.labels.clone(), torch.full((len(images),), 0.9)

    st.cache_data.clear()  # no scan cached by an earlier test of this process
    monkeypatch.setattr(gallery_page, "predict", perfect)  # where the gallery page scans
    monkeypatch.chdir(tmp_path)
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    app.radio(key="mode").set_value("Gallery").run()
    app.selectbox(key="gallery_kind").set_value("misclassified").run()
    assert not app.exception and "correctly" in app.info[0].value
    app.selectbox(key="gallery_kind").set_value("least_confident").run()
    app.selectbox(key="gallery_view").set_value("rollout").run()
    assert_healthy(app, images=16)
    assert scans == [len(splits.test)]  # one scan for the three galleries


def test_compare_shows_both_models_and_their_difference(app, demo_cache, tmp_path):
    app.radio(key="mode").set_value("Compare").run()
    assert not app.exception
    app.selectbox(key="compare_source").set_value("base").run()
    assert_healthy(app, images=3)
    subheaders = [s.value for s in app.subheader]
    assert subheaders[0] == "First: demo" and subheaders[2] == "Difference (second - first)", subheaders
    app.slider(key="compare_layer").set_value(1).run()
    app.slider(key="compare_head").set_value(3).run()
    assert_healthy(app, images=3)
    app.selectbox(key="compare_view").set_value("rollout").run()
    assert_healthy(app, images=3)
    assert app.slider(key="compare_layer").disabled  # rollout has no block or head
    app.selectbox(key="compare_source").set_value("checkpoint").run()
    app.text_input(key="compare_path").set_value(str(tmp_path / "runs" / "missing.pt")).run()
    assert "No checkpoint at" in app.error[0].value  # a bad second model: its clear error, nothing else breaks
    shutil.copytree(demo_cache / "demo", tmp_path / "elsewhere")
    app.text_input(key="compare_path").set_value(str(tmp_path / "elsewhere")).run()
    assert "outside the runs folder" in app.error[0].value  # typed paths are fenced here too, as in the sidebar
    shutil.copytree(demo_cache / "demo", tmp_path / "runs" / "other")
    app.text_input(key="compare_path").set_value(str(tmp_path / "runs" / "other")).run()
    assert_healthy(app, images=3)


def test_which_map_shows_every_method_with_its_areas_and_the_random_maps(app):
    app.radio(key="mode").set_value("Which map?").run()
    assert_healthy(app, images=len(METHODS))
    captions = " ".join(c.value for c in app.caption)
    rows = app.table[0].value  # one row per method, then the random maps
    assert list(rows["method"]) == [*METHODS, "random maps"]
    for name, deletion, insertion in zip(rows["method"], rows["deletion AUC"], rows["insertion AUC"], strict=True):
        assert 0.0 <= float(deletion) <= 1.0 and 0.0 <= float(insertion) <= 1.0
        if name != "random maps":
            assert f"**{name}**: deletion {deletion}, insertion {insertion}" in captions
    assert f"random maps {rows['deletion AUC'].iloc[-1]}" in captions


def test_live_panel_switches_heads_off_and_reads_the_lens(app, demo_model):
    model, splits = demo_model
    image = splits.test.images[0]
    classes = list(splits.classes)
    table = app.table[0].value
    before = [f"{classes[c]} {p:.1%}" for c, p in explorer.analyse_image(model, image).top_k(5)]
    assert table["before"].tolist() == before and table["after"].tolist() == before  # nothing switched off
    app.selectbox(key="ablate_block").set_value(4).run()
    app.multiselect(key="ablate_heads").set_value([0, 1, 2, 3]).run()
    assert_healthy(app, images=10)
    _, after = live.top_k_ablated(model, image, {3: [0, 1, 2, 3]}, k=5)
    assert app.table[0].value["after"].tolist() == [f"{classes[c]} {p:.1%}" for c, p in after]
    assert app.table[0].value["after"].tolist() != before
    lens = app.table[1].value
    assert lens["block"].tolist() == [1, 2, 3, 4]
    final = live.lens_top(model, image, k=3)[-1]
    assert lens["top 3"].tolist()[-1] == ", ".join(f"{classes[c]} {p:.0%}" for c, p in final)


def test_every_figure_has_a_png_download_and_the_image_an_npz(app):
    buttons = app.get("download_button")
    labels = [b.proto.label for b in buttons]
    assert labels.count("Download PNG") == 5 and labels.count("Download the raw maps (.npz)") == 1, labels
    names = {b.proto.id for b in buttons}
    assert len(names) == 6  # one button per view, none sharing a key
    expected = export.export_name("demo", "dataset:0", "class_specific", "png")
    assert any(expected in b.proto.id for b in buttons), [b.proto.id for b in buttons]


def test_smooth_overlay_values_equal_torchs_bilinear_upsampling():
    from vitlab.plotting import upsample_map

    for grid, size in ((8, 448), (14, 448), (14, 192), (3, 64)):
        grid_map = torch.rand(grid, grid, generator=torch.Generator().manual_seed(grid))
        assert np.allclose(overlay_values(grid_map, size), upsample_map(grid_map, size), atol=1e-5)


def test_views_are_sent_as_jpeg_at_the_views_quality():
    from PIL import Image

    picture = np.zeros((64, 64, 3), dtype=np.uint8)
    picture[:, 32:] = 255
    decoded = np.asarray(Image.open(io.BytesIO(jpeg_bytes(picture))))
    assert decoded.shape == (64, 64, 3) and np.abs(decoded.astype(int) - picture).max() < 40
    assert len(jpeg_bytes(picture, quality=50)) < len(jpeg_bytes(picture, quality=100))
