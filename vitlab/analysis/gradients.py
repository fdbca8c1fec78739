"""Pixel attributions, summed per patch: integrated gradients (through Captum) and input x gradient.

- Integrated gradients (Sundararajan, Taly & Yan 2017): (x - x0) times the mean gradient of the target logit along
  the straight path from a baseline x0 to the image x. Its attributions add up to logit(x) - logit(x0)
  ("completeness"), up to the error of the path integral's quadrature. x0 is the all-zero input: with normalised
  inputs, the normalisation's mean colour.
- Input x gradient (Shrikumar et al. 2016): x times the gradient of the target logit at x, one backward pass.

A pixel attribution (B, 3, S, S) becomes a patch map by summing over the channels and the patch's pixels, signs kept:
a patch's value is its share of the logit, so the IG patch map still adds up to logit(x) - logit(x0).
"""

from __future__ import annotations

import torch
from einops import reduce
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.extras import require_extra

IG_STEPS = 16  # points on the path (Gauss-Legendre, Captum's default rule): maps rank patches as 64 points do
# (Spearman >= 0.999 on the demo model's first 16 test images; docs/explain.md)
IG_BATCH = 32  # inputs per forward pass: path points times images (at least one point for every image)


def integrated_gradients(model: VisionTransformer, images: Tensor, targets: Tensor) -> Tensor:
    """Integrated gradients of each image's target logit from the all-zero input, summed per patch.

    Args:
        images: (B, 3, S, S) normalised inputs.
        targets: (B,) the class each map explains.
    Returns:
        (B, patches), signed; each row sums to about logit(image) - logit(zeros).
    """
    captum_attr = require_extra("captum.attr", "Integrated gradients")
    method = captum_attr.IntegratedGradients(model)
    attributions = method.attribute(images, baselines=torch.zeros_like(images), target=targets, n_steps=IG_STEPS,
                                    internal_batch_size=max(IG_BATCH, images.shape[0]))  # (B, 3, S, S)
    return pool_to_patches(attributions.detach(), model.patch_size)


def input_x_gradient(model: VisionTransformer, images: Tensor, targets: Tensor) -> Tensor:
    """The input times the gradient of each image's target logit, summed per patch.

    Args:
        images: (B, 3, S, S) normalised inputs.
        targets: (B,) the class each map explains.
    Returns:
        (B, patches), signed.
    """
    inputs = images.detach().requires_grad_(True)  # (B, 3, S, S)
    logits = model(inputs)  # (B, classes)
    (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), inputs)  # (B, 3, S, S)
    return pool_to_patches(inputs.detach() * gradient, model.patch_size)


def pool_to_patches(pixel_map: Tensor, patch_size: int) -> Tensor:
    """Sum a pixel attribution over channels and each patch's pixels: (B, C, S, S) -> (B, patches), row-major."""
    return reduce(pixel_map, "b c (gh p1) (gw p2) -> b (gh gw)", "sum", p1=patch_size, p2=patch_size)
