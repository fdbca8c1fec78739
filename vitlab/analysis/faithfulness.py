"""Does a map say what the model uses? Remove (or reveal) patches in the map's order and watch the target class.

- Deletion (Petsiuk, Das & Saenko 2018, RISE): remove patches from most to least relevant; a faithful map makes the
  target's probability drop at once, so the area under the curve (AUC) is low.
- Insertion (same paper): start from a removed image and reveal patches most relevant first; a faithful map makes
  the probability rise at once, so the AUC is high.
- ROAD (Rong et al. 2022, "remove and debias"): deletion where a removed pixel is filled by noisy linear imputation
  from its neighbours (`vitlab.analysis.imputation`, the ROAD authors' equations), so the fill does not betray the
  removed region's shape the way a flat colour does. Most relevant first (MoRF, low AUC is good) or least relevant
  first (LeRF, high AUC is good).

What a removed patch shows (`baseline`): "blur", the image blurred with a Gaussian of one patch's width as sigma;
"mean", the image's mean colour; "zero", the all-zero input (with normalised inputs, the normalisation's mean colour).

Every result carries its baseline: the mean curve and AUC of seeded random maps. A map is only informative where it
beats them; `tests/test_faithfulness.py` checks the random AUC against its closed form.

    result = deletion_curve(model, images, explain(model, images, "scorecam"), baseline="mean")
    result.mean_auc, result.random_auc          # 0.07 against 0.79 on docs/explain.md's shortcut model

`perturbation_curves` computes many curves for many maps at once, which is how `vitlab.analysis.report` scores every
method: the random maps' curves are computed once for all maps, every perturbed image goes through the model in
batches, and an image two curves share (the untouched image, the fully removed one) is computed once.

Insertion reads the random maps backwards (a random order reversed is as random): revealing a random order's first k
patches shows what deletion shows after removing its first P - k. With the same baseline and points at complementary
counts (any grid with an even number of patches), the random maps' insertion curve is their deletion curve reversed
and costs no forward pass of its own; in expectation the two areas are equal anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import torch
import torchvision.transforms.functional as TF
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.explain import Target, borrowed, check_images, resolve_target
from vitlab.analysis.extras import require_extra
from vitlab.analysis.imputation import noisy_linear_imputation
from vitlab.analysis.localization import random_maps
from vitlab.capture import geometry
from vitlab.errors import VitlabError

Baseline = Literal["blur", "mean", "zero"]
CurveKind = Literal["deletion", "insertion", "road"]
Order = Literal["most", "least"]
FILLS: tuple[Baseline, ...] = ("blur", "mean", "zero")
UNTOUCHED, IMPUTED = -1, len(FILLS)  # fill codes besides FILLS' indices: nothing removed; ROAD's imputation
FORWARD_BATCH = 16  # perturbed images per pass (ViT-B/16, 2 cores, bfloat16: 0.061 s an image at 16, 0.080 at 64)


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


@dataclass(frozen=True)
class CurveSpec:
    """One kind of curve: what happens to the patches, how many steps, what fills a removed patch, in which order."""

    kind: CurveKind  # "deletion", "insertion" or "road"
    steps: int = 16  # deletion and insertion: steps + 1 points, 0 to all patches; ROAD: steps points, never all
    baseline: Baseline = "blur"  # deletion and insertion: what a removed patch shows; ROAD imputes instead
    order: Order = "most"  # "most": most relevant patches first; "least": least relevant first (ROAD's LeRF)

    @property
    def fill(self) -> int:
        """The fill code of a removed pixel: an index in FILLS, or IMPUTED for ROAD."""
        return IMPUTED if self.kind == "road" else FILLS.index(self.baseline)


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
    return _one_curve(model, images, maps, CurveSpec("deletion", steps, baseline), target, random_count, seed)


def insertion_curve(model: VisionTransformer, images: Tensor, maps: Tensor, target: Target = None, steps: int = 16,
                    baseline: Baseline = "blur", random_count: int = 4, seed: int = 0) -> CurveResult:
    """Target probability as patches are revealed on the baseline, most relevant first: higher AUC = more faithful.

    Args and returns as `deletion_curve`; fractions are the share of patches revealed.
    """
    return _one_curve(model, images, maps, CurveSpec("insertion", steps, baseline), target, random_count, seed)


def road_curve(model: VisionTransformer, images: Tensor, maps: Tensor, target: Target = None, steps: int = 8,
               order: Order = "most", random_count: int = 4, seed: int = 0) -> CurveResult:
    """ROAD: target probability as patches are removed and imputed from their neighbours (noisy linear imputation).

    Args:
        order: "most" removes the most relevant patches first (MoRF: lower AUC = more faithful), "least" the least
            relevant first (LeRF: higher AUC = more faithful).
        steps: fractions 0, 1/steps, ..., (steps - 1)/steps removed; never all, which leaves nothing to impute from.
        Others as `deletion_curve`. The imputation's noise is seeded by `seed`; torch's global generator is untouched.
    Raises:
        VitlabError: SciPy, whose sparse solver imputes, is not installed (`pip install "vitlab[explain]"`).
    """
    return _one_curve(model, images, maps, CurveSpec("road", steps, order=order), target, random_count, seed)


def perturbation_curves(model: VisionTransformer, images: Tensor, maps: Mapping[str, Tensor],
                        specs: Mapping[str, CurveSpec], target: Target = None, random_count: int = 4,
                        seed: int = 0) -> dict[str, dict[str, CurveResult]]:
    """Every curve of `specs` for every map of `maps`, against the same `random_count` seeded random maps.

    Each result equals the single-curve function's (`deletion_curve`, ...) for that map: a perturbed image depends
    only on its image, its removed patches and its fill (ROAD's noise is seeded per image), so sharing changes
    nothing but the time. Perturbed images that coincide are computed once.

    Args:
        images: (B, 3, S, S) normalised inputs.
        maps: name -> (B, patches) relevance, higher = more relevant.
        specs: name -> the curve to draw (`CurveSpec`).
    Returns:
        result[spec name][map name], a `CurveResult`.
    """
    check_images(model, images)
    patches = geometry(model).num_patches
    for name, relevance in maps.items():
        _check_maps(name, relevance, images.shape[0], patches, len(maps))
    if random_count < 1:
        raise VitlabError(f"random_count must be at least 1 (the random-map baseline), got {random_count}.")
    _check_specs(specs.values(), patches)
    shape = (images.shape[0], patches)
    ranked = [*(m.detach().float().cpu() for m in maps.values()),
              *(random_maps(shape, seed=seed + index) for index in range(random_count))]  # each (B, patches)
    with torch.no_grad(), borrowed(model):
        targets = resolve_target(model, images, target)  # (B,)
        fills = {code: _fill(images, FILLS[code], geometry(model).patch_size)
                 for code in {spec.fill for spec in specs.values() if spec.kind != "road"}}  # each (B, 3, S, S)
        jobs = _Jobs(images, ranked, specs.values(), random_count)
        probabilities = jobs.evaluate(model, targets, fills, seed)  # per spec: (maps, B, points)
    results = {}
    for (spec_name, spec), curves in zip(specs.items(), probabilities, strict=True):
        fractions = _counts(patches, spec).double() / patches  # (points,)
        areas = _area(curves, fractions)  # (maps, B)
        random_curve = curves[len(maps):].mean(dim=(0, 1))  # (points,)
        random_auc = areas[len(maps):].mean().item()
        results[spec_name] = {name: CurveResult(fractions.float(), curves[index], areas[index], random_curve,
                                                random_auc) for index, name in enumerate(maps)}
    return results


def _one_curve(model: VisionTransformer, images: Tensor, maps: Tensor, spec: CurveSpec, target: Target,
               random_count: int, seed: int) -> CurveResult:
    """One curve of one set of maps: `perturbation_curves` with one entry each."""
    results = perturbation_curves(model, images, {"map": maps}, {"curve": spec}, target, random_count, seed)
    return results["curve"]["map"]


def _check_maps(name: str, maps: Tensor, batch: int, patches: int, count: int) -> None:
    """Refuse a map that is not (B, patches)."""
    if maps.ndim != 2 or tuple(maps.shape) != (batch, patches):
        which = f"map {name!r}" if count > 1 else "maps"
        raise VitlabError(f"{which} must be (B, patches) = ({batch}, {patches}), got {tuple(maps.shape)}: one "
                          f"relevance value per patch, as explain() returns.")


def _check_specs(specs: object, patches: int) -> None:
    """Refuse a spec that cannot be drawn, before any work; ROAD without the library its imputation needs, too."""
    for spec in specs:
        if spec.order not in ("most", "least"):
            raise VitlabError(f"order must be 'most' (MoRF) or 'least' (LeRF), got {spec.order!r}.")
        if spec.kind not in ("deletion", "insertion", "road"):
            raise VitlabError(f"a curve is 'deletion', 'insertion' or 'road', got {spec.kind!r}.")
        if spec.kind != "road" and spec.baseline not in FILLS:
            raise VitlabError(f"baseline must be 'blur', 'mean' or 'zero', got {spec.baseline!r}.")
        if not 1 <= spec.steps <= patches:
            raise VitlabError(f"steps must be between 1 and the number of patches ({patches}), got {spec.steps}.")
        if spec.kind == "road":
            require_extra("scipy.sparse.linalg", "ROAD")


def _counts(patches: int, spec: CurveSpec) -> Tensor:
    """How many patches each point perturbs: round(k * patches / steps), k = 0..steps (ROAD: 0..steps-1)."""
    ks = torch.arange(spec.steps if spec.kind == "road" else spec.steps + 1, dtype=torch.float64)  # (points,)
    return torch.round(ks * patches / spec.steps).long()


class _Jobs:
    """Every perturbed image the curves need, as (fill code, image row, removed patches), each distinct one once."""

    def __init__(self, images: Tensor, ranked: list[Tensor], specs: object, random_count: int) -> None:
        """`ranked`: every map (B, patches), the last `random_count` of them the seeded random maps."""
        self.images = images
        keys, self.shapes = [], []
        for spec in specs:
            counts = _counts(ranked[0].shape[1], spec)  # (points,)
            for index, relevance in enumerate(ranked):
                order = relevance if spec.order == "most" else -relevance  # (B, patches)
                if spec.kind == "insertion" and index >= len(ranked) - random_count:
                    # A random order read backwards is as random, and revealing its first k patches is deletion
                    # removing its last P - k: the random maps' insertion images are their deletion images.
                    order = -order
                ranks = order.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # 0 = first perturbed
                chosen = ranks[:, None, :] < counts[None, :, None]  # (B, points, patches)
                removed = ~chosen if spec.kind == "insertion" else chosen
                keys.append(_keys(removed, spec.fill))  # (B * points, 2 + patches)
            self.shapes.append((len(ranked), images.shape[0], len(counts)))
        self.unique, self.inverse = torch.unique(torch.cat(keys), dim=0, return_inverse=True)

    def evaluate(self, model: VisionTransformer, targets: Tensor, fills: dict[int, Tensor],
                 seed: int) -> list[Tensor]:
        """The target's probability for each job, one list entry per spec: (maps, B, points)."""
        geo = geometry(model)
        probabilities = []
        for chunk in self.unique.split(FORWARD_BATCH):  # (n, 2 + patches): fill, row, removed patches
            fill, rows = chunk[:, 0], chunk[:, 1]
            removed = chunk[:, 2:].bool().view(-1, geo.grid_size, geo.grid_size).to(self.images.device)
            pixels = removed.repeat_interleave(geo.patch_size, 1).repeat_interleave(geo.patch_size, 2)  # (n, S, S)
            perturbed = self.images[rows.to(self.images.device)]  # (n, 3, S, S)
            for code, filled in fills.items():
                where = (fill == code).to(self.images.device)[:, None, None, None] & pixels[:, None]
                perturbed = torch.where(where, filled[rows.to(filled.device)], perturbed)
            imputed = (fill == IMPUTED).to(self.images.device)  # (n,) ROAD's jobs in this chunk
            if imputed.any():
                perturbed = _impute(perturbed, pixels, imputed, seed)
            logits = model(perturbed)  # (n, classes)
            chosen = targets[rows.to(targets.device)]  # (n,)
            probabilities.append(logits.float().softmax(dim=-1).gather(1, chosen[:, None])[:, 0].cpu())
        every = torch.cat(probabilities)[self.inverse]  # (jobs,) in the order the specs and maps were listed
        return [part.view(shape) for part, shape in zip(every.split([a * b * c for a, b, c in self.shapes]),
                                                         self.shapes, strict=True)]


def _keys(removed: Tensor, fill: int) -> Tensor:
    """(B, points, patches) removed patches -> (B * points, 2 + patches) long: fill code, image row, patches.

    An image with nothing removed is the same whatever would have filled it: its fill code is UNTOUCHED."""
    batch, points, patches = removed.shape
    rows = torch.arange(batch)[:, None].expand(batch, points)  # (B, points)
    codes = torch.where(removed.any(dim=-1), fill, UNTOUCHED)  # (B, points)
    return torch.cat([codes[..., None], rows[..., None], removed.long()], dim=-1).view(batch * points, 2 + patches)


def _impute(images: Tensor, pixels: Tensor, which: Tensor, seed: int) -> Tensor:
    """Fill the removed `pixels` (n, S, S) of the images `which` (n,) marks by `noisy_linear_imputation`.

    The noise is seeded per image by `seed`, so an imputed image depends only on the image and its removed pixels;
    torch's global generator is untouched. The images are filled on the CPU, one per thread: the sparse solver
    releases Python's lock, so the fills of a batch share the cores the model's forward pass uses next."""
    images = images.clone()
    indices = which.nonzero()[:, 0].tolist()

    def fill(index: int) -> Tensor:
        kept = (~pixels[index]).float().cpu()  # (S, S)
        generator = torch.Generator().manual_seed(seed)
        return noisy_linear_imputation(images[index].cpu(), kept, generator=generator)  # (3, S, S)

    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        for index, filled in zip(indices, pool.map(fill, indices), strict=True):
            images[index] = filled.to(images.device, images.dtype)
    return images


def _area(curves: Tensor, fractions: Tensor) -> Tensor:
    """(..., points) -> (...): trapezoid area over `fractions`, divided by their span (a mean probability)."""
    span = (fractions[-1] - fractions[0]).clamp(min=torch.finfo(torch.float64).tiny)
    return (torch.trapezoid(curves.double(), fractions, dim=-1) / span).float()


def _fill(images: Tensor, baseline: Baseline, patch_size: int) -> Tensor:
    """(B, 3, S, S): what removed pixels show for `baseline`."""
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    sigma = float(patch_size)  # "blur", one patch wide: a patch's content is spread over its neighbours
    size = min(2 * round(2 * sigma) + 1, 2 * (images.shape[-1] // 2) - 1)  # odd, padding inside the image
    return TF.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])
