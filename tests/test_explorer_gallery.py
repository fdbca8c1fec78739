"""vitlab.explorer.gallery: which images a gallery picks, and that its batched maps are the single-image views'."""

from __future__ import annotations

import pytest
import torch

from vitlab.data import BatchTransform
from vitlab.errors import VitlabError
from vitlab.explorer import analyse_image, build_gallery, class_map
from vitlab.explorer.gallery import GALLERY_VIEWS, predict, scale_each, select_images
from vitlab.model import build_model

# Small tensors on a shared 2-core machine: one thread is faster (see conftest.single_thread).
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def random_tiny():
    """A random vit_tiny with a 10-class head: it gets many photos wrong, with low confidence."""
    torch.manual_seed(0)
    return build_model("vit_tiny", num_classes=10, pretrained=False).eval()


def plain_probs(model, images):
    """(N, classes): the model's probabilities, written out without vitlab.explorer."""
    with torch.no_grad():
        return model(BatchTransform(model.image_size, train=False)(images)).softmax(dim=-1)


def single_image_map(model, image, view):
    """(grid, grid): the map the explorer's single-image page shows for `view`, before scaling for display."""
    views = analyse_image(model, image)
    if view == "cls":
        return views.head_maps(views.num_layers - 1).mean(dim=0)
    if view == "rollout":
        return views.rollout_map("mean", 0.0)
    return class_map(model, image)[0]


@pytest.mark.parametrize("view", GALLERY_VIEWS)
def test_the_gallerys_maps_are_the_single_image_views(demo_model, view):
    model, splits = demo_model
    gallery = build_gallery(model, splits.test, "class", view, count=4, class_index=2)
    assert gallery.indices == (splits.test.labels == 2).nonzero()[:4, 0].tolist()
    assert (gallery.labels == 2).all()
    for position, index in enumerate(gallery.indices):
        image = splits.test.images[index]
        expected = single_image_map(model, image, view)
        torch.testing.assert_close(gallery.maps[position], scale_each(expected[None])[0], atol=1e-4, rtol=1e-4)
        probs = analyse_image(model, image).probs
        assert gallery.predicted[position] == probs.argmax()
        torch.testing.assert_close(gallery.confidence[position], probs.max(), atol=1e-5, rtol=1e-5)
    assert gallery.maps.amin(dim=(1, 2)).eq(0).all() and gallery.maps.amax(dim=(1, 2)).eq(1).all()


def test_misclassified_images_are_the_first_ones_the_model_gets_wrong(demo_model, random_tiny):
    dataset = demo_model[1].test.take(64)
    wrong = (plain_probs(random_tiny, dataset.images).argmax(dim=-1) != dataset.labels).nonzero()[:, 0]
    assert len(wrong) > 10  # a random head gets most shapes wrong: the gallery has something to pick from
    gallery = build_gallery(random_tiny, dataset, "misclassified", "rollout", count=10)
    assert gallery.indices == wrong[:10].tolist()
    assert (gallery.predicted != gallery.labels).all()
    of_class = select_images(random_tiny, dataset, "misclassified", count=64, class_index=1)
    assert of_class == [i for i in wrong.tolist() if dataset.labels[i] == 1]


def test_least_confident_are_the_true_minimum_in_ascending_order(demo_model, random_tiny):
    dataset = demo_model[1].test.take(64)
    confidence = plain_probs(random_tiny, dataset.images).max(dim=-1).values  # (64,)
    gallery = build_gallery(random_tiny, dataset, "least_confident", "cls", count=8)
    assert gallery.indices == torch.sort(confidence, stable=True).indices[:8].tolist()
    assert torch.all(gallery.confidence[1:] >= gallery.confidence[:-1])
    assert gallery.confidence.max() <= confidence[[i for i in range(64) if i not in gallery.indices]].min()
    torch.testing.assert_close(gallery.confidence, confidence[gallery.indices], atol=1e-5, rtol=1e-5)
    # Cached predictions (what the app keeps per model) give the same gallery without the scan.
    cached = build_gallery(random_tiny, dataset, "least_confident", "cls", count=8,
                           predictions=predict(random_tiny, dataset.images))
    assert cached.indices == gallery.indices
    torch.testing.assert_close(cached.maps, gallery.maps)


def test_bad_choices_and_empty_galleries_are_explained(demo_model, random_tiny):
    dataset = demo_model[1].test.take(32)
    all_right = (dataset.labels.clone(), torch.ones(32))  # predictions as if every image were classified right
    cases = [
        (dict(kind="best"), "Unknown gallery 'best'"),
        (dict(kind="class"), "needs a class"),
        (dict(kind="class", class_index=10), "Class 10 does not exist"),
        (dict(kind="misclassified", count=0), "at least one image"),
        (dict(kind="misclassified", predictions=all_right), "correctly"),
        (dict(kind="least_confident", predictions=(torch.zeros(5), torch.ones(5))), "predictions cover 5"),
    ]
    for options, message in cases:
        with pytest.raises(VitlabError, match=message):
            select_images(random_tiny, dataset, **options)
    with pytest.raises(VitlabError, match="Unknown gallery view 'gradcam'"):
        build_gallery(random_tiny, dataset, "class", "gradcam", class_index=0)
    empty = dataset.subset(torch.tensor([i for i in range(32) if dataset.labels[i] != 3]))
    with pytest.raises(VitlabError, match=f"No test image of class '{dataset.classes[3]}'"):
        select_images(random_tiny, empty, "class", class_index=3)


def test_the_bench_reports_every_row_with_its_target(demo_model, capsys):
    from vitlab.bench.cli import main

    assert main(["--rows", "explorer", "--arch", "vit_tiny", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("explorer "))
    assert "new image <= 1 s, gallery <= 3 s" in row
    for name in ("new image", "slider", "gallery", "gallery cached"):
        assert f"{name} " in out.split("notes:")[1]
    assert main(["--rows", "explorer", "--repeats", "0"]) == 2
