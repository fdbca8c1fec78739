"""One interface to every relevance map vitlab draws: `explain(model, images, method, target) -> (B, patches)`.

    maps = explain(model, images, "gradcam")            # (B, patches), one value per patch, row-major
    maps = explain(model, images, "rollout")            # class-agnostic: `target` is not used

The methods (`METHODS`), each answering "which patches matter?" in its own way:

    attention               the last block's class-token attention, heads averaged (`cls_attention`)
    rollout                 attention rollout, mean over heads, nothing discarded (Abnar & Zuidema 2020)
    chefer                  gradient-weighted attention rollout (Chefer, Gur & Wolf 2021)
    gradcam                 Grad-CAM on the tokens (Selvaraju et al. 2017), through pytorch-grad-cam
    scorecam                ScoreCAM, gradient-free (Wang et al. 2020), through pytorch-grad-cam
    integrated_gradients    integrated gradients (Sundararajan et al. 2017), through Captum, summed per patch
    input_x_gradient        input x gradient (Shrikumar et al. 2016), summed per patch

None of them is ground truth: `vitlab.analysis.faithfulness` and `vitlab.analysis.randomization` test whether a map
says what the model uses. Every method takes normalised model inputs (B, 3, S, S), works under `torch.no_grad()` and
`torch.inference_mode()`, and hands the model back as it found it (`borrowed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from vitlab.analysis.attention import cls_attention, gradient_weighted_attention, rollout
from vitlab.analysis.cams import grad_cam, score_cam
from vitlab.analysis.gradients import input_x_gradient, integrated_gradients
from vitlab.capture import capture, geometry
from vitlab.capture_grad import autograd_on, grad_ready
from vitlab.errors import VitlabError
from vitlab.matmul_attention import matmul_attention

# A relevance method: (model, images (B, 3, S, S), targets (B,) long) -> relevance (B, patches).
MapFunction = Callable[[VisionTransformer, Tensor, Tensor], Tensor]
Target = Tensor | int | None


def last_block_attention(model: VisionTransformer, images: Tensor, targets: Tensor) -> Tensor:
    """The last block's class-token attention over the patches, heads averaged: (B, patches). Class-agnostic."""
    with torch.no_grad(), capture(model) as captured:
        model(images)
    per_head = cls_attention(captured.attentions[-1], captured.geometry)  # (B, heads, grid, grid)
    return per_head.mean(dim=1).flatten(1)  # (B, patches)


def rollout_map(model: VisionTransformer, images: Tensor, targets: Tensor) -> Tensor:
    """Attention rollout with vitlab's defaults (mean over heads, no discard): (B, patches). Class-agnostic."""
    with torch.no_grad(), capture(model) as captured:
        model(images)
    return rollout(captured.attentions)  # (B, patches)


def chefer_map(model: VisionTransformer, images: Tensor, targets: Tensor) -> Tensor:
    """Chefer et al.'s gradient-weighted attention for `targets`: (B, patches)."""
    return gradient_weighted_attention(model, images, targets)[0]


METHODS: dict[str, MapFunction] = {
    "attention": last_block_attention,
    "rollout": rollout_map,
    "chefer": chefer_map,
    "gradcam": grad_cam,
    "scorecam": score_cam,
    "integrated_gradients": integrated_gradients,
    "input_x_gradient": input_x_gradient,
}
# The optional library (vitlab.analysis.extras) each method needs beyond torch, by import name.
METHOD_EXTRAS = {"gradcam": "pytorch_grad_cam", "scorecam": "pytorch_grad_cam", "integrated_gradients": "captum"}


def explain(model: VisionTransformer, images: Tensor, method: str | MapFunction, target: Target = None) -> Tensor:
    """Relevance of every patch for each image's target class, by `method`.

    Args:
        model: a torchvision `VisionTransformer` (every arch `vitlab.build_model` makes). Its train/eval modes,
            `requires_grad` flags, `.grad`s and hooks are as before when this returns.
        images: (B, 3, S, S) normalised model inputs, S = model.image_size.
        method: a name in `METHODS`, or any function (model, images, targets (B,)) -> (B, patches).
        target: None for each image's predicted class, one class for all images, or one per image (B,).
            The attention methods ("attention", "rollout") are class-agnostic and ignore it.
    Returns:
        (B, patches) float32 on the images' device; patch (r, c) at index r * grid + c. Higher = more relevant.
    Raises:
        VitlabError: an unknown method, images of the wrong shape, a target out of range, or a missing extra.
    """
    function = method_function(method)
    check_images(model, images)
    with autograd_on(), borrowed(model):  # gradient methods need autograd, whatever the caller's context
        images = grad_ready(images)  # (B, 3, S, S), a plain copy if made under inference mode
        targets = resolve_target(model, images, target)  # (B,)
        maps = function(model, images, targets)  # (B, patches)
    return maps.detach().to(images.device, torch.float32)


def method_function(method: str | MapFunction) -> MapFunction:
    """The function behind a method name (a function is its own)."""
    if callable(method):
        return method
    if method not in METHODS:
        raise VitlabError(f"Unknown explanation method {method!r}. Choose one of: {', '.join(METHODS)}.")
    return METHODS[method]


def check_images(model: VisionTransformer, images: Tensor) -> None:
    """Refuse anything but a batch of normalised inputs (B, 3, S, S) at the model's size, before any work."""
    size = geometry(model).image_size
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size) or not images.is_floating_point():
        raise VitlabError(
            f"Explanations take normalised model inputs of shape (B, 3, {size}, {size}), got {images.dtype} "
            f"{tuple(images.shape)}. Turn uint8 images into inputs with "
            f"vitlab.BatchTransform({size}, train=False)(images)."
        )


def resolve_target(model: VisionTransformer, images: Tensor, target: Target) -> Tensor:
    """(B,) long on the images' device: each image's predicted class for None, else `target` checked and expanded.

    Raises:
        VitlabError: a class outside 0..num_classes-1, or a per-image target whose length is not B.
    """
    batch = images.shape[0]
    if target is None:
        with torch.no_grad():
            return model(images).argmax(dim=-1)  # (B, classes) -> (B,)
    targets = torch.as_tensor(target, device=images.device).long().clone()  # a plain copy, never an inference tensor
    if targets.ndim == 0:
        targets = targets.expand(batch).clone()  # (B,)
    if targets.shape != (batch,):
        raise VitlabError(f"target must be None, one class, or one class per image ({batch}), got shape "
                          f"{tuple(targets.shape)}.")
    if bool(((targets < 0) | (targets >= model.num_classes)).any()):
        raise VitlabError(f"target classes must lie in 0..{model.num_classes - 1} (the model's classes), "
                          f"got {targets.tolist()}.")
    return targets


@contextmanager
def borrowed(model: nn.Module) -> Iterator[None]:
    """Lend `model` to an explanation: eval mode and frozen parameters inside (not under autocast, see below), exactly
    as it was afterwards.

    Frozen, because an explanation needs gradients with respect to the input or the attention, never the weights:
    nothing accumulates in a parameter's `.grad`. Under `torch.autocast` the parameters require grad inside instead:
    autocast keeps its low-precision copy of a weight from one pass to the next only for weights that require grad
    and casts every other weight again on every pass (ViT-B/16 in bfloat16 on 2 CPU cores: a forward and backward
    pass for one image 205 ms frozen, 155 ms with the copies kept). vitlab's methods still take gradients only with
    respect to inputs and attention (`torch.autograd.grad`); what a library's `backward()` leaves in `.grad` is
    discarded, and the kept copies are dropped on exit, so a weight changed afterwards is never read stale. Under a
    CPU's autocast the attention also runs as plain matrix products inside (`vitlab.matmul_attention`: PyTorch's
    fused CPU kernel is several times slower in bfloat16, most of all backward).

    On exit, also when the block raises, every module's train/eval flag, every parameter's `requires_grad` and every
    `.grad` are restored.
    """
    modes = [(module, module.training) for module in model.modules()]
    parameters = [(param, param.requires_grad, param.grad) for param in model.parameters()]
    device_type = parameters[0][0].device.type if parameters else "cpu"
    autocast = torch.is_autocast_enabled(device_type)
    model.eval()
    for param, _, _ in parameters:
        param.requires_grad_(autocast)
    try:
        with matmul_attention(model) if autocast and device_type == "cpu" else nullcontext():
            yield
    finally:
        if autocast:
            torch.clear_autocast_cache()
        for param, requires_grad, grad in parameters:
            param.requires_grad_(requires_grad)
            param.grad = grad
        for module, training in modes:
            module.training = training
