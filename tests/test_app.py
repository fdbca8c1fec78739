"""The attention explorer: the vitlab.explorer package, its benchmark, and streamlit_app.py driven by AppTest."""

from __future__ import annotations

import ast
import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from vitlab import explorer
from vitlab.analysis.attention import cls_attention, rollout
from vitlab.bench.explorer import benchmark_explorer
from vitlab.errors import CheckpointError, VitlabError, WeightsUnavailableError
from vitlab.explorer import uploads
from vitlab.explorer.sources import imagenet_available, source_stamp
from vitlab.explorer.uploads import UploadError
from vitlab.model import weights_cache_file

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
TIMEOUT = 300  # seconds per AppTest run (its default is 3): a first run loads the model, and the CPU may be shared


@pytest.fixture(autouse=True)
def app_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app reads its own flags from sys.argv (`streamlit run streamlit_app.py -- --runs DIR`); under pytest
    sys.argv is pytest's, which the app would refuse: give it none, as a plain `streamlit run` does."""
    monkeypatch.setattr(sys, "argv", [str(APP)])


# ---------------------------------------------------------------------------------------------------------------
# Files to upload
# ---------------------------------------------------------------------------------------------------------------


def encode(picture: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=format, **options)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    values = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(values.squeeze(-1) if channels == 1 else values, mode)


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A 70-byte PNG whose header claims width x height pixels: decoding it would need gigabytes."""
    data = bytearray(encode(noise(1, 1)))
    data[16:24] = struct.pack(">II", width, height)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # keep the chunk's checksum valid
    return bytes(data)


BAD_UPLOADS = {
    # name: (file name, content, a phrase the message must contain)
    "not an image": ("notes.png", b"these are my lecture notes, not a picture\n" * 20, "not a PNG, JPEG"),
    "empty": ("empty.png", b"", "empty"),
    "truncated PNG": ("cut.png", encode(noise(64, 64))[:600], "truncated or damaged"),
    "truncated JPEG": ("cut.jpg", encode(noise(256, 256), "JPEG")[:3000], "truncated or damaged"),
    "decompression bomb": ("bomb.png", bomb_png(), "decompression bomb"),
    "tiny": ("dot.png", encode(noise(4, 4)), "at least 8x8"),
}

ODD_UPLOADS = {
    # name: (content, a phrase the notes must contain, or None for no note)
    "grayscale": (encode(noise(48, 48, "L")), "grayscale"),
    "RGBA": (encode(noise(48, 48, "RGBA")), "Transparent parts"),
    "palette": (encode(noise(48, 48).convert("P")), "palette"),
    "16-bit grayscale": (encode(Image.fromarray(np.full((40, 40), 40000, np.uint16))), "16-bit"),
    "small": (encode(noise(12, 12)), "Upscaled"),
    "wide JPEG": (encode(noise(600, 200), "JPEG"), "Cropped from 600x200"),
    "big JPEG": (encode(noise(3000, 2000), "JPEG"), "Cropped from 3000x2000"),
    "plain RGB": (encode(noise(64, 64)), None),
}


# ---------------------------------------------------------------------------------------------------------------
# vitlab.explorer
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ODD_UPLOADS)
def test_preprocess_upload_makes_any_png_or_jpeg_a_model_input(name):
    content, phrase = ODD_UPLOADS[name]
    prepared = explorer.preprocess_upload(content, image_size=32)
    assert prepared.image.dtype == torch.uint8 and prepared.image.shape == (3, 32, 32)
    if phrase is None:
        assert prepared.notes == ()
    else:
        assert any(phrase in note for note in prepared.notes), prepared.notes


def test_preprocess_upload_keeps_colours_and_follows_exif_rotation():
    picture = Image.new("RGB", (40, 20), (200, 30, 30))  # landscape, red
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned, show it rotated 90 degrees
    prepared = explorer.preprocess_upload(encode(picture, "JPEG", exif=exif, quality=95), image_size=16)
    assert any("from 20x40" in note for note in prepared.notes), prepared.notes  # portrait after rotation
    red, green, blue = prepared.image.float().mean(dim=(1, 2)).tolist()
    assert red > 150 and green < 80 and blue < 80


def test_preprocess_upload_leaves_white_where_an_rgba_image_is_transparent():
    picture = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent black
    prepared = explorer.preprocess_upload(encode(picture), image_size=16)
    assert prepared.image.min() == 255


@pytest.mark.parametrize("name", BAD_UPLOADS)
def test_preprocess_upload_refuses_bad_files_with_a_clear_message(name):
    _, content, phrase = BAD_UPLOADS[name]
    with pytest.raises(UploadError, match=phrase):
        explorer.preprocess_upload(content, image_size=224)


def test_preprocess_upload_refuses_files_over_the_size_limit(monkeypatch):
    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(UploadError, match="smaller copy"):
        explorer.preprocess_upload(encode(noise(64, 64)), image_size=32)


def test_image_views_select_from_one_forward_pass(demo_model):
    model, splits = demo_model
    image = splits.test.images[0]  # (3, 32, 32)
    views = explorer.analyse_image(model, image)
    assert views.num_layers == len(model.encoder.layers) and views.num_heads == 4
    assert torch.isclose(views.probs.sum(), torch.tensor(1.0))
    assert views.top_k(5)[0][0] == int(views.probs.argmax()) and len(views.top_k(5)) == 5  # of the 10 classes
    assert len(views.top_k(20)) == len(splits.classes)  # never more than there are classes
    grid = views.geometry.grid_size
    assert torch.equal(views.cls_map(2, 1), cls_attention(views.attentions[2], views.geometry)[0, 1])
    assert views.head_maps(2).shape == (4, grid, grid)
    # patch (2, 5) is token 1 + 2 * grid + 5; its row over the patch keys is the query map
    expected = views.attentions[1][0, 3, 1 + 2 * grid + 5, 1:].reshape(grid, grid)
    assert torch.equal(views.query_map(1, 3, 2, 5), expected)
    assert torch.allclose(views.rollout_map("max", 0.5).flatten(), rollout(views.attentions, "max", 0.5)[0])


def test_class_map_explains_the_predicted_or_a_chosen_class(demo_model):
    model, splits = demo_model
    image = splits.test.images[0]
    predicted = int(explorer.analyse_image(model, image).probs.argmax())
    relevance, target = explorer.class_map(model, image)
    assert target == predicted and relevance.shape == (8, 8)
    _, chosen = explorer.class_map(model, image, target_class=(predicted + 1) % 4)
    assert chosen == (predicted + 1) % 4
    assert not any(p.grad is not None for p in model.parameters())  # the shared model is left as it was


def test_render_overlay_draws_maps_grids_and_the_query_patch():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    grid_map = torch.zeros(8, 8)
    grid_map[2, 3] = 1.0
    picture = explorer.render_overlay(image, grid_map, size=128, patch_grid=8, highlight=(7, 0))
    assert picture.dtype == np.uint8 and picture.shape == (128, 128, 3)
    assert picture[2 * 16 + 8, 3 * 16 + 8].sum() > picture[100, 100].sum()  # the hot patch is brighter
    assert tuple(picture[16, 5]) != (0, 0, 0)  # a grid line
    assert tuple(picture[127, 8]) == (0, 229, 255)  # the outline of patch (7, 0)


def test_checkpoint_source_gives_clear_errors(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="No checkpoint at"):
        explorer.load_model_source("checkpoint", tmp_path / "missing.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a vitlab checkpoint"):
        explorer.load_model_source("checkpoint", tmp_path / "plain.pt")
    torch.save({"format": "vitlab-checkpoint-v1", "payload": Payload()}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="pickled code"):
        explorer.load_model_source("checkpoint", tmp_path / "code.pt")
    assert "ran code" not in capsys.readouterr().out  # weights_only=True refused it before anything ran
    torch.save({"format": "vitlab-checkpoint-v1", "model": {}}, tmp_path / "incomplete.pt")
    with pytest.raises(CheckpointError, match="incomplete"):
        explorer.load_model_source("checkpoint", tmp_path / "incomplete.pt")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="without best.pt"):
        explorer.load_model_source("checkpoint", tmp_path / "empty_run")


class Payload:
    """Pickles as a call to print: what a malicious checkpoint would hide (vitlab must never run it)."""

    def __reduce__(self):
        return print, ("ran code from a checkpoint",)


def test_imagenet_source_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert not imagenet_available()
    with pytest.raises(WeightsUnavailableError, match="vit_b_16-c867db91.pth"):
        explorer.load_model_source("imagenet")


def test_benchmark_returns_medians_for_both_interactions():
    result = benchmark_explorer("vit_tiny", repeats=1)
    assert set(result) == {"new_image_seconds", "slider_seconds"}
    assert all(seconds > 0 for seconds in result.values())


def test_source_stamp_changes_when_the_checkpoint_file_changes(tmp_path):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"first")
    os.utime(checkpoint, ns=(1_000_000_000, 1_000_000_000))
    first = source_stamp("checkpoint", checkpoint)
    assert first == f"checkpoint:{checkpoint.resolve()}:1000000000"
    os.utime(checkpoint, ns=(2_000_000_000, 2_000_000_000))
    assert source_stamp("checkpoint", checkpoint) != first
    assert source_stamp("imagenet") == f"imagenet:{weights_cache_file()}"
    with pytest.raises(CheckpointError, match="Choose a run"):
        source_stamp("checkpoint")
    with pytest.raises(VitlabError, match="Unknown model source"):
        source_stamp("webcam")


def test_the_app_imports_only_the_explorer_package_and_the_package_not_the_bench():
    tree = ast.parse(APP.read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [
        f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        for alias in node.names
    ]
    vitlab_names = [name for name in imported if name.startswith("vitlab")]
    assert "vitlab.explorer.pages.explore" in vitlab_names  # the page sections, and the package's modules
    allowed = ("vitlab.explorer.", "vitlab.errors.", "vitlab.model.weights_cache_file")  # and where the errors and
    assert all(name.startswith(allowed) for name in vitlab_names), vitlab_names  # the ImageNet file are defined
    check = "import sys, vitlab.explorer; assert not [m for m in sys.modules if m.startswith('vitlab.bench')]"
    subprocess.run([sys.executable, "-c", check], check=True)


# ---------------------------------------------------------------------------------------------------------------
# streamlit_app.py through AppTest
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def app(demo_cache, tmp_path, monkeypatch) -> AppTest:
    """The app after its first run on the demo model, in an empty folder (no runs/, no ./data, no ImageNet)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()


def pictures(at: AppTest) -> int:
    """How many pictures the page shows (one st.image element can hold a list of them: the heads)."""
    return sum(len(element.proto.imgs) for element in at.image)


def assert_healthy(at: AppTest, images: int = 10) -> None:
    """No exception and no error on the page, and at least `images` pictures drawn."""
    assert not at.exception, "\n".join(e.message for e in at.exception)
    assert not at.error, [e.value for e in at.error]
    assert pictures(at) >= images


def test_app_shows_every_view_for_the_demo_model(app):
    assert_healthy(app, images=10)  # image, class token, rollout, query, class-specific, 4 heads, distance
    subheaders = " | ".join(s.value for s in app.subheader)
    for view in ("Image", "Class token", "Prediction", "Rollout", "Query patch", "Class-specific", "heads",
                 "attention distance"):
        assert view in subheaders, subheaders
    assert len(app.get("progress")) == 5  # the top 5 of the 10 classes
    assert len(app.caption) >= 8  # one sentence under every view
    grid = next(element for element in app.image if len(element.proto.imgs) > 1)
    heads = [picture.caption for picture in grid.proto.imgs]
    assert heads == ["head 0 (chosen)", "head 1", "head 2", "head 3"]
    assert "True label" in app.markdown[0].value


CONTROLS = [
    ("slider", "layer", 1),
    ("slider", "head", 3),
    ("selectbox", "fusion", "max"),
    ("selectbox", "fusion", "min"),
    ("slider", "discard_ratio", 0.9),
    ("slider", "query_row", 0),
    ("slider", "query_col", 7),
    ("selectbox", "target_class", 2),
    ("toggle", "patch_grid", True),
    ("number_input", "image_index", 17),
]


def test_every_control_reruns_and_only_a_new_image_runs_the_model(app, monkeypatch):
    import streamlit as st

    from vitlab.explorer.pages import common

    st.cache_data.clear()
    calls = {"analyse": 0}
    analyse_image = explorer.analyse_image

    def counting(*args, **kwargs):
        calls["analyse"] += 1
        return analyse_image(*args, **kwargs)

    monkeypatch.setattr(common, "analyse_image", counting)  # where the page calls it
    app.run()
    assert calls["analyse"] == 1
    for kind, key, value in CONTROLS:
        getattr(app, kind)(key=key).set_value(value).run()
        assert_healthy(app)
        assert getattr(app, kind)(key=key).value == value
        expected = 2 if key == "image_index" else 1  # layer, head, fusion... redraw from the cached forward pass
        assert calls["analyse"] == expected, f"changing {key} ran the model"
    app.button(key="random_image").click().run()
    assert_healthy(app)


def test_bad_uploads_show_an_error_and_the_app_keeps_working(app):
    app.radio(key="image_source").set_value("upload").run()
    assert not app.exception and app.info  # asks for a file
    for name, (file_name, content, phrase) in BAD_UPLOADS.items():
        app.file_uploader(key="upload").set_value((file_name, content, "image/png")).run()
        assert not app.exception, (name, [e.message for e in app.exception])
        assert len(app.error) == 1 and phrase in app.error[0].value, (name, [e.value for e in app.error])
    app.file_uploader(key="upload").set_value(("fine.png", ODD_UPLOADS["grayscale"][0], "image/png")).run()
    assert_healthy(app)
    assert any("grayscale" in m.value for m in app.markdown)  # the note on what was converted
    app.radio(key="image_source").set_value("dataset").run()
    assert_healthy(app)


def test_model_sources_switch_and_explain_what_is_unavailable(app, demo_cache, tmp_path):
    app.selectbox(key="model_source").set_value("imagenet").run()
    assert not app.exception and "vit_b_16-c867db91.pth" in app.warning[0].value
    app.selectbox(key="model_source").set_value("checkpoint").run()
    assert not app.exception and app.info  # no runs yet: asks for one
    (tmp_path / "runs").mkdir()  # the app reads checkpoints only under its runs folder (test_explorer_exposure.py)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "runs" / "plain.pt")
    torch.save({"format": "vitlab-checkpoint-v1", "payload": Payload()}, tmp_path / "runs" / "code.pt")
    bad = {"missing.pt": "No checkpoint at", "plain.pt": "not a vitlab", "code.pt": "pickled code"}
    for name, phrase in bad.items():
        app.text_input(key="checkpoint_path").set_value(str(tmp_path / "runs" / name)).run()
        assert not app.exception and phrase in app.error[0].value, (name, [e.value for e in app.error])
    shutil.copytree(demo_cache / "demo", tmp_path / "runs" / "demo")
    app.text_input(key="checkpoint_path").set_value("").run()
    app.selectbox(key="run_choice").set_value(str(Path("runs") / "demo")).run()
    assert_healthy(app)
    assert "Checkpoint runs/demo/best.pt" in " ".join(c.value for c in app.sidebar.caption)
    app.selectbox(key="model_source").set_value("demo").run()
    assert_healthy(app)


@pytest.mark.slow
def test_imagenet_source_runs_when_its_weights_are_cached(app, tmp_path):
    """Random weights planted where torchvision looks: the ViT-B/16 path without any download."""
    from torchvision.models import ViT_B_16_Weights, vit_b_16

    torch.manual_seed(0)
    cache_file = weights_cache_file()  # under the fixture's TORCH_HOME
    cache_file.parent.mkdir(parents=True)
    torch.save(vit_b_16().state_dict(), cache_file)
    app.run()  # the sidebar now offers it
    app.selectbox(key="model_source").set_value("imagenet").run()
    assert_healthy(app, images=17)  # 5 views, 12 heads (the distance plot comes on top)
    categories = ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"]
    predictions = [p.proto.text.split("**")[1] for p in app.get("progress")]
    assert len(predictions) == 5 and set(predictions) <= set(categories)
    app.slider(key="layer").set_value(12).run()
    app.slider(key="head").set_value(11).run()
    app.slider(key="query_row").set_value(13).run()
    assert_healthy(app, images=17)
