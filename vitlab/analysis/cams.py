"""Class activation maps on a ViT's tokens, through pytorch-grad-cam: Grad-CAM and the gradient-free ScoreCAM.

A CAM weights the channels of a feature map (B, C, h, w) and sums them: Grad-CAM (Selvaraju et al. 2017) by each
channel's mean gradient of the target logit, ScoreCAM (Wang et al. 2020) by the softmax of the target logit when the
input is masked by that channel's (upsampled, min-max scaled) activation, one forward pass per channel. A ViT has
tokens (B, T, D) instead; pytorch-grad-cam's recipe for ViTs makes them a feature map by dropping the class token
and laying the patch tokens on their grid: (B, 1 + g*g, D) -> (B, D, g, g), the library's `vit_reshape_transform`.

The layer is the last block's first LayerNorm (`encoder.layers[-1].ln_1`), as in pytorch-grad-cam's ViT tutorial
(`blocks[-1].norm1` in timm). Not the last block's output: torchvision's head reads only the class token, so the
patch tokens that leave the last block reach no logit and their gradient is zero; at ln_1 they still feed the class
token through the last attention.

Maps come back at patch resolution, (B, patches): the library's map, ReLU and per-image min-max scaling included
(values in [0, 1]), before its resize to the image. That resize (bilinear to S x S, scaled again) is what the library
returns itself; `tests/test_explain.py` checks that the two agree.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from vitlab.analysis.extras import require_extra
from vitlab.capture import geometry

SCORECAM_BATCH = 16  # masked copies per pass (ViT-B/16, 2 cores, bfloat16: 0.061 s an image at 16, 0.067 at 32)
SCORECAM_CHANNELS = 64  # ScoreCAM weighs at most this many channels: those that vary most over the grid


def cam_target_layer(model: VisionTransformer) -> nn.Module:
    """The layer whose tokens the CAMs weight: the last encoder block's first LayerNorm (see the module docstring)."""
    return model.encoder.layers[-1].ln_1


def grad_cam(model: VisionTransformer, images: Tensor, targets: Tensor) -> Tensor:
    """Grad-CAM on the last block's normalised tokens.

    Args:
        images: (B, 3, S, S) normalised inputs.
        targets: (B,) the class each map explains.
    Returns:
        (B, patches) in [0, 1] on the CPU: ReLU of the gradient-weighted channel sum, scaled per image.
    """
    library = require_extra("pytorch_grad_cam", "Grad-CAM")
    # The ln_1 output must carry gradients even when every weight before it is frozen: let the input carry them.
    return _cam_maps(library.GradCAM, model, images.detach().requires_grad_(True), targets)


def score_cam(model: VisionTransformer, images: Tensor, targets: Tensor) -> Tensor:
    """ScoreCAM on the last block's normalised tokens: one forward pass per channel and image, no gradient.

    A channel becomes a mask; one that barely varies over the grid masks the image almost uniformly and carries no
    "where". Only the SCORECAM_CHANNELS channels that vary most over each image's grid are scored and summed: every
    channel of vit_tiny (64), 64 of ViT-B/16's 768 (12x fewer forward passes).

    Args:
        images: (B, 3, S, S) normalised inputs.
        targets: (B,) the class each map explains.
    Returns:
        (B, patches) in [0, 1] on the CPU.
    """
    library = require_extra("pytorch_grad_cam", "ScoreCAM")
    maps = []
    for image, target in zip(images, targets, strict=True):  # one image at a time: (channels, 3, S, S) masked copies
        with torch.no_grad():
            maps.append(_cam_maps(library.ScoreCAM, model, image[None], target[None], batch_size=SCORECAM_BATCH,
                                  channels=SCORECAM_CHANNELS))
    return torch.cat(maps)  # (B, patches)


def _cam_maps(cam_class: type, model: VisionTransformer, images: Tensor, targets: Tensor, channels: int | None = None,
              **settings: int) -> Tensor:
    """Run one pytorch-grad-cam class on the token grid (at most `channels` channels: `_most_varying`) and return its
    map per patch: (B, patches) on the CPU."""
    grid = geometry(model).grid_size
    transforms = require_extra("pytorch_grad_cam.utils.reshape_transforms", "CAMs on ViT tokens")
    model_targets = require_extra("pytorch_grad_cam.utils.model_targets", "CAMs on ViT tokens")
    to_grid = partial(transforms.vit_reshape_transform, height=grid, width=grid)  # (B, 1 + g*g, D) -> (B, D, g, g)
    reshape = to_grid if channels is None else lambda tokens: _most_varying(to_grid(tokens), channels)
    cam = cam_class(model, target_layers=[cam_target_layer(model)], reshape_transform=reshape)
    for name, value in settings.items():
        setattr(cam, name, value)  # e.g. batch_size, which ScoreCAM reads if set
    cam.get_target_width_height = lambda _: (grid, grid)  # keep one value per patch: no resize to the image
    try:
        with redirect_stderr(io.StringIO()):  # ScoreCAM draws a tqdm progress bar per image
            scaled = cam(images, [model_targets.ClassifierOutputTarget(int(t)) for t in targets])  # (B, g, g)
    finally:
        cam.activations_and_grads.release()  # its hooks, removed also when the call raises
    return torch.from_numpy(scaled).flatten(1)  # (B, g, g) -> (B, patches)


def _most_varying(feature_map: Tensor, count: int) -> Tensor:
    """(B, C, g, g) -> (B, min(C, count), g, g): the channels whose values vary most over the grid, summed over the
    batch; all of them, in order, when there are no more than `count`."""
    if feature_map.shape[1] <= count:
        return feature_map
    spread = feature_map.flatten(2).var(dim=2).sum(dim=0)  # (C,)
    return feature_map[:, spread.topk(count).indices.sort().values]  # (B, count, g, g)
