"""vitlab.explorer.export: what the download buttons hand out reads back exactly, under a safe file name."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.errors import VitlabError
from vitlab.explorer import analyse_image, class_map, maps_npz, png_bytes, render_overlay
from vitlab.explorer.export import export_name

# Small tensors on a shared 2-core machine: one thread is faster (see conftest.single_thread).
pytestmark = pytest.mark.usefixtures("single_thread")


def test_png_bytes_decode_to_the_same_pixels(demo_model):
    model, splits = demo_model
    picture = render_overlay(splits.test.images[0], analyse_image(model, splits.test.images[0]).cls_map(3, 0), 96)
    rng = np.random.default_rng(0)
    for pixels in (picture, rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)):
        decoded = Image.open(io.BytesIO(png_bytes(pixels)))
        assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded.convert("RGB")), pixels)
    with pytest.raises(VitlabError, match=r"uint8 \(H, W, 3\)"):
        png_bytes(picture.astype(np.float32))


def test_maps_npz_loads_back_without_pickle_with_every_array(demo_model):
    model, splits = demo_model
    image = splits.test.images[5]
    views = analyse_image(model, image)
    rollout, (relevance, _) = views.rollout_map("max", 0.5), class_map(model, image)
    with np.load(io.BytesIO(maps_npz(views, rollout, relevance)), allow_pickle=False) as saved:
        assert sorted(saved.files) == ["attention", "class_specific", "probs", "rollout"]
        assert saved["attention"].shape == (4, 4, 65, 65)  # blocks, heads, 1 + 8x8 tokens
        assert np.array_equal(saved["attention"][2, 1], views.attentions[2][0, 1].numpy())
        assert np.array_equal(saved["rollout"], rollout.numpy()) and saved["rollout"].shape == (8, 8)
        assert np.array_equal(saved["class_specific"], relevance.numpy())
        assert np.array_equal(saved["probs"], views.probs.numpy()) and saved["probs"].shape == (model.num_classes,)
    with np.load(io.BytesIO(maps_npz(views, rollout, None)), allow_pickle=False) as saved:
        assert "class_specific" not in saved.files
    with pytest.raises(VitlabError, match="grid is 8x8"):
        maps_npz(views, torch.zeros(14, 14), None)


def test_export_names_are_readable_and_safe():
    assert export_name("demo", "test-0042", "rollout", "png") == "demo_test-0042_rollout.png"
    readable = export_name("vit_tiny run", "my cat.JPG", "class specific", ".NPZ")
    assert readable == "vit-tiny-run_my-cat.JPG_class-specific.npz"
    assert export_name("../x", "/etc/passwd", "..", "png") == "x_etc-passwd_unnamed.png"
    assert export_name("café", "日本 photo", "", "png") == "cafe_photo_unnamed.png"
    hostile = ["../../x", "a\\b", "..hidden", "nul\x00byte", "\u202eevil", "x" * 500, "~/.ssh/id", "C:\\tmp", ". . ."]
    for text in hostile:
        name = export_name(text, text, text, "png")
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name
        assert not name.startswith((".", "-")) and ".." not in name and len(name) < 200
    with pytest.raises(VitlabError, match="extension"):
        export_name("demo", "x", "cls", "../")
