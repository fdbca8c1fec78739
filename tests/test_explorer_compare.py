"""vitlab.explorer.compare and the "base" model source: two models on one image, and the base the demo came from."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import VisionTransformer

from vitlab.errors import VitlabError
from vitlab.explorer import analyse_image, compare_maps, load_model_source
from vitlab.explorer.sources import BASE_HEAD_SEED, DEMO_BASE, SOURCES, source_stamp
from vitlab.model import build_model, load_state_dict_file
from vitlab.shipped import shipped_base_file

# Small tensors on a shared 2-core machine: one thread is faster (see conftest.single_thread).
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def base():
    return load_model_source("base")


def test_the_base_source_is_the_shipped_base_on_the_demos_images_with_an_honest_head(base, demo_model):
    model, splits = demo_model
    assert not base.head_trained and "head is random" in base.description
    assert base.classes == splits.classes
    assert torch.equal(base.images.images, splits.test.images) and torch.equal(base.images.labels, splits.test.labels)
    shipped = load_state_dict_file(shipped_base_file(name=DEMO_BASE))  # the base the demo preset fine-tunes
    body = {name: value for name, value in base.model.state_dict().items() if not name.startswith("heads.")}
    assert body.keys() == shipped.keys() and all(torch.equal(body[n], shipped[n]) for n in body)
    torch.manual_seed(BASE_HEAD_SEED)  # the head is the seeded one: every load of the page shows the same
    expected_head = build_model("vit_tiny", num_classes=len(splits.classes), pretrained=False).heads.head
    assert torch.equal(base.model.heads.head.weight, expected_head.weight)
    assert base.key == source_stamp("base") == f"base:{shipped_base_file(name=DEMO_BASE)}"
    assert not base.model.training
    assert "base" in SOURCES  # the sidebar offers it, labelled as the untrained-head base


def test_the_difference_is_exactly_second_minus_first(base, demo_model):
    model, splits = demo_model
    image = splits.test.images[0]
    demo_views, base_views = analyse_image(model, image), analyse_image(base.model, image)
    for view, layer, head in (("cls", None, None), ("cls", 2, 1), ("rollout", None, None)):
        comparison = compare_maps(base_views, demo_views, view, layer, head)
        assert torch.equal(comparison.difference, comparison.second - comparison.first)
        torch.testing.assert_close(comparison.first.sum(), torch.tensor(1.0))
        assert comparison.difference.abs().max() > 1e-3  # fine-tuning changed where the model looks
    # The demo fine-tuned only its last 2 blocks: blocks 0 and 1 are the base's, and so is their attention.
    frozen = compare_maps(base_views, demo_views, "cls", layer=1)
    torch.testing.assert_close(frozen.difference, torch.zeros(8, 8), atol=1e-6, rtol=0)
    head_maps = demo_views.head_maps(3)  # layer None: the last block; head None: the mean of the heads
    torch.testing.assert_close(compare_maps(base_views, demo_views, "cls").second,
                               head_maps.mean(0) / head_maps.mean(0).sum())
    same = compare_maps(demo_views, demo_views, "cls", layer=2, head=1)
    assert torch.equal(same.difference, torch.zeros(8, 8))
    torch.testing.assert_close(same.first, demo_views.cls_map(2, 1) / demo_views.cls_map(2, 1).sum())


def test_a_coarser_grid_is_resampled_bilinearly_to_the_finer_one(demo_model):
    model, splits = demo_model
    torch.manual_seed(0)
    coarse = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                               num_classes=4).eval()  # a 4x4 grid against the demo's 8x8
    image = splits.test.images[3]
    coarse_views, fine_views = analyse_image(coarse, image), analyse_image(model, image)
    comparison = compare_maps(coarse_views, fine_views, "rollout")
    assert comparison.first.shape == comparison.second.shape == (8, 8)
    # Scale 2, align_corners=False: output cell 1 samples input coordinate 0.25, i.e. 3/4 of cell 0 and 1/4 of 1.
    m = coarse_views.rollout_map("mean", 0.0)  # (4, 4)
    by_hand = (0.75 * (0.75 * m[0, 0] + 0.25 * m[0, 1]) + 0.25 * (0.75 * m[1, 0] + 0.25 * m[1, 1]))
    # The corner output cell samples coordinate -0.25, clamped to the corner cell: it is m[0, 0]. Both are then
    # divided by the same total (the share), so their ratio is the by-hand one.
    torch.testing.assert_close(comparison.first[1, 1] / comparison.first[0, 0], by_hand / m[0, 0])
    torch.testing.assert_close(comparison.first.sum(), torch.tensor(1.0))
    flipped = compare_maps(fine_views, coarse_views, "rollout")
    torch.testing.assert_close(flipped.difference, -comparison.difference)


def test_layers_and_heads_that_one_model_lacks_are_refused(demo_model):
    model, splits = demo_model
    views = analyse_image(model, splits.test.images[0])
    cases = [(("cls", 4, None), "Block 4 does not exist in the first model"), (("cls", 0, 9), "Head 9"),
             (("rollout", 1, None), "leave layer and head unset"), (("query", None, None), "Unknown comparison")]
    for (view, layer, head), message in cases:
        with pytest.raises(VitlabError, match=message):
            compare_maps(views, views, view, layer, head)
