"""Tests for vitlab.analysis.explain: one interface to every relevance map, against known answers.

The known answers: a model whose class is set only by a marker at known patches (vitlab/teaching/shortcut.py), Captum's
completeness of integrated gradients, and pytorch-grad-cam's own call for the CAMs. Then the interface's promises:
batches equal one image at a time, target None is the prediction, no_grad and inference_mode change nothing, the
model comes back untouched, and a missing optional library is named with the command that installs it.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import Tensor

from vitlab import explain
from vitlab.analysis.cams import cam_target_layer
from vitlab.analysis.explain import METHODS, borrowed
from vitlab.errors import VitlabError
from vitlab.model import build_model
from vitlab.teaching.shortcut import marker_hits

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py

CLASS_SPECIFIC = ("chefer", "gradcam", "scorecam", "integrated_gradients", "input_x_gradient")


def tiny_model(seed: int = 0, num_classes: int = 5):
    torch.manual_seed(seed)
    return build_model("vit_tiny", num_classes=num_classes, pretrained=True, trainable_blocks=2).eval()


def tiny_images(batch: int, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
def test_faithful_methods_rank_the_shortcut_marker_first_and_the_methods_disagree(shortcut) -> None:
    images = shortcut.test_images[:60]
    shares = {method: marker_hits(explain(shortcut.model, images, method)) for method in METHODS}
    # ScoreCAM masks the input by each token channel and keeps what moves the target; integrated gradients adds up to
    # the logit. Both find the marker that alone sets the class.
    assert shares["scorecam"][1] >= 0.95, shares
    assert shares["integrated_gradients"][0] >= 0.95, shares
    # Not every map does: that is the lesson (input x gradient sits near 0.3 on seeds 0-2, Grad-CAM near 0.3-0.7).
    assert min(top1 for top1, _ in shares.values()) < 0.8, shares


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_cams_equal_pytorch_grad_cams_own_call(method: str) -> None:
    """The library's own call returns the map resized to the image; resizing vitlab's patch map the same way must
    give the same image: same layer, same ViT reshape, same target."""
    from pytorch_grad_cam import GradCAM, ScoreCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    model, images, targets = tiny_model(), tiny_images(3), [1, 3, 4]
    ours = explain(model, images, method, target=torch.tensor(targets))  # (3, 64)
    cam_class = {"gradcam": GradCAM, "scorecam": ScoreCAM}[method]
    with cam_class(model, [model.encoder.layers[-1].ln_1],
                   reshape_transform=lambda t: vit_reshape_transform(t, height=8, width=8)) as cam:
        theirs = cam(images, [ClassifierOutputTarget(t) for t in targets])  # (3, 32, 32)
    ours_resized = scale_cam_image(np.maximum(scale_cam_image(ours.view(3, 8, 8).numpy(), (32, 32)), 0))
    assert cam_target_layer(model) is model.encoder.layers[-1].ln_1
    np.testing.assert_allclose(ours_resized, theirs, atol=1e-5)
    assert ours.amax(dim=1).tolist() == pytest.approx([1.0] * 3, abs=1e-6)  # the library's per-image scaling


@pytest.mark.slow
def test_gradcam_on_vit_b16_equals_the_library_on_its_14x14_grid() -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    torch.manual_seed(0)
    model = build_model("vit_b_16", num_classes=10, pretrained=False).eval()
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ours = explain(model, image, "gradcam", target=3)  # (1, 196)
    cam = GradCAM(model, [model.encoder.layers[-1].ln_1], reshape_transform=vit_reshape_transform)  # 14 x 14
    cam.get_target_width_height = lambda _: (14, 14)  # the library's map before its resize to the image
    try:
        theirs = cam(image, [ClassifierOutputTarget(3)])  # (1, 14, 14)
    finally:
        cam.activations_and_grads.release()
    assert ours.shape == (1, 196)
    np.testing.assert_allclose(ours.view(1, 14, 14).numpy(), theirs, atol=1e-5)


def test_integrated_gradients_add_up_to_the_logit_difference() -> None:
    """Completeness (Sundararajan et al. 2017): the patch map sums to logit(image) - logit(all-zero input)."""
    model, images = tiny_model(), tiny_images(3)
    maps = explain(model, images, "integrated_gradients", target=2)  # (3, 64)
    with torch.no_grad():
        difference = model(images)[:, 2] - model(torch.zeros_like(images))[:, 2]  # (3,)
    assert maps.sum(dim=1).tolist() == pytest.approx(difference.tolist(), rel=0.02, abs=0.02)
    assert difference.abs().min() > 0.1  # the check has something to check


@pytest.mark.parametrize("method", list(METHODS))
def test_a_batch_equals_its_images_one_by_one(method: str) -> None:
    model, images = tiny_model(), tiny_images(3)
    together = explain(model, images, method)  # (3, 64)
    alone = torch.cat([explain(model, image[None], method) for image in images])  # (3, 64)
    assert together.shape == (3, 64) and together.dtype == torch.float32
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", CLASS_SPECIFIC)
def test_target_none_explains_the_prediction_and_a_target_is_used(method: str) -> None:
    model, images = tiny_model(), tiny_images(2)
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)  # (2,)
    torch.testing.assert_close(explain(model, images, method), explain(model, images, method, target=predicted))
    other = (predicted + 1) % model.num_classes
    assert not torch.allclose(explain(model, images, method, target=other), explain(model, images, method))


@pytest.mark.parametrize("method", list(METHODS))
def test_no_grad_and_inference_mode_give_the_same_maps(method: str) -> None:
    model, images = tiny_model(), tiny_images(2)
    plain = explain(model, images, method, target=1)
    with torch.no_grad():
        no_grad = explain(model, images, method, target=1)
    with torch.inference_mode():
        inference = explain(model, images, method, target=torch.tensor([1, 1]))
    torch.testing.assert_close(no_grad, plain)
    torch.testing.assert_close(inference.clone(), plain)


def model_state(model: torch.nn.Module) -> dict:
    """Everything an explanation must leave as it found it."""
    return {
        "classes": [type(m) for m in model.modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
        "weights": {name: value.clone() for name, value in model.state_dict().items()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["classes"] == before["classes"]
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    for old, new in zip(before["grads"], after["grads"], strict=True):
        assert (old is None and new is None) or torch.equal(old, new)
    for name, value in before["weights"].items():
        assert torch.equal(value, after["weights"][name]), name


def model_in_use() -> torch.nn.Module:
    """A model mid-training: train mode with one module in eval, a frozen stem, and grads on some parameters."""
    model = tiny_model().train()
    model.encoder.layers[0].eval()
    model(tiny_images(2)).sum().backward()
    return model


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16 autocast"])
@pytest.mark.parametrize("method", list(METHODS))
def test_the_model_comes_back_untouched(method: str, autocast: bool) -> None:
    model = model_in_use()
    before = model_state(model)
    assert any(g is not None for g in before["grads"]) and before["training"][0] and not all(before["training"])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        explain(model, tiny_images(2), method)
    assert_same_state(before, model_state(model))


def weight_casts(model: torch.nn.Module, images: Tensor) -> int:
    """How many float32 -> bfloat16 casts of a weight the shape of the first MLP layer's one forward pass makes."""
    shape = list(model.encoder.layers[0].mlp[0].weight.shape)
    with torch.profiler.profile(record_shapes=True) as profile:
        model(images)
    return sum(event.name == "aten::_to_copy" and event.input_shapes[:1] == [shape] for event in profile.events())


def test_under_autocast_a_borrowed_model_casts_its_weights_once_not_every_pass() -> None:
    model, images = tiny_model(), tiny_images(2)
    for param in model.parameters():
        param.requires_grad_(False)  # a frozen model: autocast alone would cast every weight on every pass
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        model(images)
        assert weight_casts(model, images) == len(model.encoder.layers)
        with borrowed(model):
            model(images)  # the first pass casts; autocast keeps the copies because the weights require grad here
            assert weight_casts(model, images) == 0
    assert not any(param.requires_grad for param in model.parameters())


def test_a_weight_changed_between_explanations_under_one_autocast_is_read_fresh() -> None:
    model, images = tiny_model(), tiny_images(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = explain(model, images, "input_x_gradient", target=1)
        with torch.no_grad():
            model.heads.head.weight.mul_(-1.0)  # in place: a cast kept from the first call would now be stale
        after = explain(model, images, "input_x_gradient", target=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = explain(model, images, "input_x_gradient", target=1)
    assert torch.equal(after, fresh) and not torch.allclose(after, before)


@pytest.mark.parametrize(("method", "module"), [("gradcam", "pytorch_grad_cam"), ("scorecam", "pytorch_grad_cam"),
                                                ("integrated_gradients", "captum")])
def test_a_missing_library_names_the_explain_extra(monkeypatch: pytest.MonkeyPatch, method: str, module: str) -> None:
    for name in [name for name in sys.modules if name == module or name.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError, as if not installed
    model = model_in_use()
    before = model_state(model)
    with pytest.raises(VitlabError, match=r'pip install "vitlab\[explain\]"'):
        explain(model, tiny_images(1), method)
    assert_same_state(before, model_state(model))


def test_methods_without_the_extra_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("pytorch_grad_cam", "captum"):
        monkeypatch.setitem(sys.modules, module, None)
    for method in ("attention", "rollout", "chefer", "input_x_gradient"):
        assert explain(tiny_model(), tiny_images(1), method).shape == (1, 64)


def test_bad_input_is_refused_with_a_message() -> None:
    model = tiny_model()
    with pytest.raises(VitlabError, match="Unknown explanation method 'lime'.*gradcam"):
        explain(model, tiny_images(1), "lime")
    with pytest.raises(VitlabError, match=r"\(B, 3, 32, 32\).*BatchTransform"):
        explain(model, torch.zeros(1, 3, 64, 64), "attention")
    with pytest.raises(VitlabError, match=r"0\.\.4"):
        explain(model, tiny_images(2), "chefer", target=5)
    with pytest.raises(VitlabError, match="one class per image"):
        explain(model, tiny_images(2), "chefer", target=torch.tensor([0, 1, 2]))


def test_a_function_is_a_method_too() -> None:
    model, images = tiny_model(), tiny_images(2)
    seen = []

    def brightness(model, images: Tensor, targets: Tensor) -> Tensor:
        seen.append(targets)
        return images.mean(dim=1).unfold(1, 4, 4).unfold(2, 4, 4).mean(dim=(-1, -2)).flatten(1)  # (B, 64)

    maps = explain(model, images, brightness, target=3)
    assert maps.shape == (2, 64) and seen[0].tolist() == [3, 3]
