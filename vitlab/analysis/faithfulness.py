"""Does a map say what the model uses? Remove (or reveal) patches in the map's order and watch the target class.

- Deletion (Petsiuk, Das & Saenko 2018, RISE): remove patches from most to least relevant; a faithful map makes the
  target's probability drop at once, so the area under the curve (AUC) is low.
- Insertion (same paper): start from a removed image and reveal patches most relevant first; a faithful map makes
  the probability rise at once, so the AUC is high.
- ROAD (Rong et al. 2022, "remove and debias"): deletion where a removed pixel is filled by noisy linear imputation
  from its neighbours (pytorch-grad-cam's `NoisyLinearImputer`), so the fill does not betray the removed region's
  shape the way a flat colour does. Most relevant first (MoRF, low AUC is good) or least relevant first (LeRF, high
  AUC is good).

What a removed patch shows (`baseline`): "blur", the image blurred with a Gaussian of one patch's width as sigma;
"mean", the image's mean colour; "zero", the all-zero input (with normalised inputs, the normalisation's mean colour).

Every result carries its baseline: the mean curve and AUC of seeded random maps. A map is only informative where it
beats them; `tests/test_faithfulness.py` checks the random AUC against its closed form.

    result = deletion_curve(model, images, explain(model, images, "scorecam"), baseline="mean")
    result.mean_auc, result.random_auc          # 0.07 against 0.79 on docs/explain.md's shortcut model
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torchvision.transforms.functional as TF
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.explain import Target, borrowed, check_images, resolve_target
from vitlab.analysis.extras import require_extra
from vitlab.analysis.localization import random_maps
from vitlab.capture import geometry
from vitlab.errors import VitlabError

Baseline = Literal["blur", "mean", "zero"]
FORWARD_BATCH = 64  # perturbed images per forward pass
# Fills removed pixels: (images (N, 3, S, S), removed (N, S, S) bool, rows (N,): which input image each one is a
# copy of) -> perturbed images (N, 3, S, S).
Perturbation = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class CurveResult:
    """One perturbation curve per image, its area, and the same for random maps (the baseline to read it against)."""

    fractions: Tensor  # (points,) share of patches removed (deletion, ROAD) or revealed (insertion) at each point
    probabilities: Tensor  # (B, points) softmax probability of each image's target class at each point
    auc: Tensor  # (B,) area under each curve by the trapezoid rule, divided by the span of `fractions`
    random_curve: Tensor  # (points,) mean curve of the seeded random maps, over maps and images
    random_auc: float  # mean area of the random maps' curves: what a map that knows nothing scores

    @property
    def mean_auc(self) -> float:
        """The area under the curve, averaged over images."""
        return self.auc.mean().item()


def deletion_curve(model: VisionTransformer, images: Tensor, maps: Tensor, target: Target = None, steps: int = 16,
                   baseline: Baseline = "blur", random_count: int = 4, seed: int = 0) -> CurveResult:
    """Target probability as patches are removed, most relevant first: lower AUC = more faithful map.

    Args:
        images: (B, 3, S, S) normalised inputs.
        maps: (B, patches) relevance, higher = more relevant (ties keep patch order).
        target: None for each image's prediction, one class, or one per image (B,).
        steps: the curve has steps + 1 points, 0 to all patches removed.
        baseline: what a removed patch shows: "blur", "mean" or "zero" (see the module docstring).
        random_count: how many seeded random maps make the baseline curve.
    Returns:
        A `CurveResult` with fractions 0, 1/steps, ..., 1.
    """
    check_images(model, images)
    with torch.no_grad():
        fill = _fill(images, baseline, geometry(model).patch_size)  # (B, 3, S, S)
    return _curve(model, images, maps, target, (steps, True), _replace_with(fill), reveal=False,
                  random_count=random_count, seed=seed)


def insertion_curve(model: VisionTransformer, images: Tensor, maps: Tensor, target: Target = None, steps: int = 16,
                    baseline: Baseline = "blur", random_count: int = 4, seed: int = 0) -> CurveResult:
    """Target probability as patches are revealed on the baseline, most relevant first: higher AUC = more faithful.

    Args and returns as `deletion_curve`; fractions are the share of patches revealed.
    """
    check_images(model, images)
    with torch.no_grad():
        fill = _fill(images, baseline, geometry(model).patch_size)  # (B, 3, S, S)
    return _curve(model, images, maps, target, (steps, True), _replace_with(fill), reveal=True,
                  random_count=random_count, seed=seed)


def road_curve(model: VisionTransformer, images: Tensor, maps: Tensor, target: Target = None, steps: int = 8,
               order: Literal["most", "least"] = "most", random_count: int = 4, seed: int = 0) -> CurveResult:
    """ROAD: target probability as patches are removed and imputed from their neighbours (noisy linear imputation).

    Args:
        order: "most" removes the most relevant patches first (MoRF: lower AUC = more faithful), "least" the least
            relevant first (LeRF: higher AUC = more faithful).
        steps: fractions 0, 1/steps, ..., (steps - 1)/steps removed; never all, which leaves nothing to impute from.
        Others as `deletion_curve`. The imputation's noise is seeded by `seed`; torch's global generator is untouched.
    Raises:
        VitlabError: pytorch-grad-cam is not installed (`pip install "vitlab[explain]"`).
    """
    if order not in ("most", "least"):
        raise VitlabError(f"order must be 'most' (MoRF) or 'least' (LeRF), got {order!r}.")
    road = require_extra("pytorch_grad_cam.metrics.road", "ROAD")
    ordered = maps if order == "most" else -maps  # (B, patches): least relevant first is the reversed ranking
    return _curve(model, images, ordered, target, (steps, False), _imputed(road.NoisyLinearImputer(), seed),
                  reveal=False, random_count=random_count, seed=seed)


def _counts(maps: Tensor, steps: int, last: bool) -> Tensor:
    """How many patches each step perturbs: round(k * patches / steps), k = 0..steps (0..steps-1 if not `last`)."""
    patches = maps.shape[-1]
    if not 1 <= steps <= patches:
        raise VitlabError(f"steps must be between 1 and the number of patches ({patches}), got {steps}.")
    ks = torch.arange(steps + 1 if last else steps, dtype=torch.float64)  # (points,): steps + 1, or steps
    return torch.round(ks * patches / steps).long()


def _curve(model: VisionTransformer, images: Tensor, maps: Tensor, target: Target, steps: tuple[int, bool],
           perturb: Perturbation, reveal: bool, random_count: int, seed: int) -> CurveResult:
    """The curves of `maps` and of `random_count` seeded random maps, for the perturbation `perturb`.

    `steps` is (steps, whether the last point perturbs every patch), checked after the maps."""
    check_images(model, images)
    if maps.ndim != 2 or maps.shape[0] != images.shape[0] or maps.shape[1] != geometry(model).num_patches:
        raise VitlabError(f"maps must be (B, patches) = ({images.shape[0]}, {geometry(model).num_patches}), got "
                          f"{tuple(maps.shape)}: one relevance value per patch, as explain() returns.")
    if random_count < 1:
        raise VitlabError(f"random_count must be at least 1 (the random-map baseline), got {random_count}.")
    counts = _counts(maps, *steps)  # (points,)
    with torch.no_grad(), borrowed(model):
        targets = resolve_target(model, images, target)  # (B,)
        curves = [_probabilities(model, images, targets, maps.to(images.device), counts, perturb, reveal)]
        for index in range(random_count):
            random = random_maps(maps.shape, seed=seed + index).to(images.device)  # (B, patches)
            curves.append(_probabilities(model, images, targets, random, counts, perturb, reveal))
    fractions = counts.double() / maps.shape[-1]  # (points,)
    areas = [_area(curve, fractions) for curve in curves]  # each (B,)
    random_curves = torch.stack(curves[1:])  # (random_count, B, points)
    return CurveResult(fractions=fractions.float(), probabilities=curves[0], auc=areas[0],
                       random_curve=random_curves.mean(dim=(0, 1)), random_auc=torch.stack(areas[1:]).mean().item())


def _probabilities(model: VisionTransformer, images: Tensor, targets: Tensor, maps: Tensor, counts: Tensor,
                   perturb: Perturbation, reveal: bool) -> Tensor:
    """(B, points): the target's probability after perturbing the first counts[k] patches of each map's order.

    Images go in groups whose perturbed copies (group, points) fill about one forward pass of FORWARD_BATCH.
    """
    geo = geometry(model)
    ranks = maps.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # (B, patches): 0 = most relevant
    chosen = ranks[:, None, :] < counts.to(ranks.device)[None, :, None]  # (B, points, patches) perturbed or revealed
    removed = ~chosen if reveal else chosen
    pixels = removed.view(*removed.shape[:2], geo.grid_size, geo.grid_size)  # (B, points, grid, grid)
    pixels = pixels.repeat_interleave(geo.patch_size, 2).repeat_interleave(geo.patch_size, 3)  # (B, points, S, S)
    group = max(1, FORWARD_BATCH // len(counts))
    probabilities = []
    for start in range(0, images.shape[0], group):
        part = slice(start, start + group)
        rows = torch.arange(images.shape[0], device=images.device)[part].repeat_interleave(len(counts))  # (b*points,)
        perturbed = perturb(images[rows], pixels[part].flatten(0, 1), rows)  # (b * points, 3, S, S)
        probabilities.append(_target_probability(model, perturbed, targets[rows]).view(-1, len(counts)))  # (b, points)
    return torch.cat(probabilities).float().cpu()  # (B, points)


def _target_probability(model: VisionTransformer, images: Tensor, targets: Tensor) -> Tensor:
    """(N,): softmax probability of each image's target class, in forward passes of FORWARD_BATCH images."""
    logits = torch.cat([model(chunk) for chunk in images.split(FORWARD_BATCH)])  # (N, classes)
    return logits.softmax(dim=-1).gather(1, targets[:, None])[:, 0]


def _area(curve: Tensor, fractions: Tensor) -> Tensor:
    """(B, points) -> (B,): trapezoid area over `fractions`, divided by their span (a mean probability)."""
    span = (fractions[-1] - fractions[0]).clamp(min=torch.finfo(torch.float64).tiny)
    return (torch.trapezoid(curve.double(), fractions, dim=-1) / span).float()


def _fill(images: Tensor, baseline: Baseline, patch_size: int) -> Tensor:
    """(B, 3, S, S): what removed pixels show for `baseline`."""
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if baseline == "blur":
        sigma = float(patch_size)  # one patch wide: a patch's content is spread over its neighbours
        size = min(2 * round(2 * sigma) + 1, 2 * (images.shape[-1] // 2) - 1)  # odd, padding inside the image
        return TF.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])
    raise VitlabError(f"baseline must be 'blur', 'mean' or 'zero', got {baseline!r}.")


def _replace_with(fill: Tensor) -> Perturbation:
    """A perturbation that shows `fill` (B, 3, S, S), computed once per input image, at the removed pixels."""
    def perturb(images: Tensor, removed: Tensor, rows: Tensor) -> Tensor:
        return torch.where(removed[:, None], fill[rows], images)  # (N, 3, S, S)
    return perturb


def _imputed(imputer: Callable[[Tensor, Tensor], Tensor], seed: int) -> Perturbation:
    """A perturbation that fills removed pixels by `imputer(image (3, S, S), kept (S, S) float)`, on the CPU."""
    def perturb(images: Tensor, removed: Tensor, rows: Tensor) -> Tensor:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(seed)  # the imputation's noise: seeded, torch's global generator untouched
            warnings.simplefilter("ignore", DeprecationWarning)  # the imputer hands NumPy torch tensors
            filled = [imputer(image.cpu(), (~mask).float().cpu()) if mask.any() else image.cpu()
                      for image, mask in zip(images, removed, strict=True)]
        return torch.stack(filled).to(images.device, images.dtype)  # (N, 3, S, S)
    return perturb
