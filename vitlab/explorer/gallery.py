"""A grid of test images with one view each: the images of a class, the misclassified ones, the least confident.

    indices = select_images(model, dataset, "misclassified", count=16)       # which images (indices into dataset)
    gallery = build_gallery(model, dataset, "least_confident", "rollout")   # those images, predicted, one map each
    gallery.maps[0]                                                           # (grid, grid) in [0, 1]

The whole grid is analysed in one batch: one captured forward pass for the predictions and the class-token or
rollout maps, plus one forward and one backward pass for the class-specific maps. Each map is the one the
single-image view shows (vitlab.explorer.views: `cls_map` averaged over heads in the last block, `rollout_map`
with mean fusion, `class_map` for the predicted class), scaled to [0, 1] per image for display.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.attention import cls_attention, gradient_weighted_attention, rollout
from vitlab.capture import capture_forward
from vitlab.data import BatchTransform, ImageDataset
from vitlab.errors import VitlabError
from vitlab.explorer.views import model_lock

GALLERY_KINDS = ("class", "misclassified", "least_confident")  # which images a gallery shows
GALLERY_VIEWS = ("cls", "rollout", "class_specific")  # which map each image gets


@dataclass(frozen=True)
class Gallery:
    """Test images chosen by one rule, with what the model says about each and one map per image."""

    indices: list[int]  # positions in the dataset, in gallery order
    labels: Tensor  # int64 (N,): the true classes
    predicted: Tensor  # int64 (N,): the model's top-1 classes
    confidence: Tensor  # float (N,): the probability of the predicted class
    maps: Tensor  # float (N, grid, grid): each image's map scaled to [0, 1] by its own min and max (flat: all 0)


def predict(model: VisionTransformer, images: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """Top-1 class and its probability for uint8 `images` (N, 3, H, W), `batch_size` at a time, no gradients.

    Returns:
        predicted int64 (N,) and confidence float (N,).
    """
    transform = BatchTransform(model.image_size, train=False)
    predicted, confidence = [], []
    with torch.no_grad(), model_lock():
        for start in range(0, len(images), batch_size):
            probs = model(transform(images[start : start + batch_size])).float().softmax(dim=-1)  # (b, classes)
            best = probs.max(dim=-1)
            predicted.append(best.indices.cpu())
            confidence.append(best.values.cpu())
    return torch.cat(predicted), torch.cat(confidence)  # (N,), (N,)


def select_images(
    model: VisionTransformer, dataset: ImageDataset, kind: str, count: int = 16, class_index: int | None = None,
    batch_size: int = 64, *, predictions: tuple[Tensor, Tensor] | None = None,
) -> list[int]:
    """Indices of up to `count` images of `dataset` chosen by `kind` (one of GALLERY_KINDS).

    - "class": the first `count` images whose label is `class_index` (no model call).
    - "misclassified": the first `count` images, in dataset order, whose prediction is not their label.
    - "least_confident": the `count` images with the lowest probability of their predicted class, lowest first
      (ties in dataset order).
    For the last two every image of `dataset` is classified (`batch_size` at a time); `class_index`, if given,
    keeps only images of that class. That scan is most of a gallery's time: pass `predictions`, what
    `predict(model, dataset.images)` returned for this model and dataset (cache it per model), to skip it.

    Raises:
        VitlabError: unknown kind, `class_index` missing or out of range, count < 1, or no image matches.
    """
    _check_choice(kind, GALLERY_KINDS, "gallery")
    if count < 1:
        raise VitlabError(f"A gallery needs at least one image, got count={count}.")
    if class_index is None and kind == "class":
        raise VitlabError("The 'class' gallery needs a class: pass class_index.")
    if class_index is not None and not 0 <= class_index < len(dataset.classes):
        raise VitlabError(f"Class {class_index} does not exist: this dataset's classes are 0 to "
                          f"{len(dataset.classes) - 1} ({', '.join(dataset.classes[:5])}, ...).")
    labels = dataset.labels.cpu()  # (N,)
    candidates = torch.ones_like(labels, dtype=torch.bool) if class_index is None else labels == class_index
    if kind == "class":
        chosen = candidates.nonzero()[:, 0][:count]  # (<= count,)
    else:
        scanned = predictions if predictions is not None else predict(model, dataset.images, batch_size)
        predicted, confidence = scanned  # (N,), (N,)
        if len(predicted) != len(labels):
            raise VitlabError(f"predictions cover {len(predicted)} images, the dataset has {len(labels)}: "
                              f"compute them with predict(model, dataset.images) for this dataset.")
        if kind == "misclassified":
            chosen = (candidates & (predicted != labels)).nonzero()[:, 0][:count]
        else:
            pool = candidates.nonzero()[:, 0]  # (M,)
            order = torch.sort(confidence[pool], stable=True).indices  # (M,) ascending
            chosen = pool[order][:count]
    if len(chosen) == 0:
        raise VitlabError(_nothing_matches(kind, class_index, dataset))
    return chosen.tolist()


def build_gallery(
    model: VisionTransformer, dataset: ImageDataset, kind: str, view: str, count: int = 16,
    class_index: int | None = None, *, predictions: tuple[Tensor, Tensor] | None = None,
) -> Gallery:
    """Choose images with `select_images` and give each one map of `view` (one of GALLERY_VIEWS), in one batch.

    - "cls": the class token's attention in the last block, averaged over the heads.
    - "rollout": attention rollout with mean head fusion and nothing discarded.
    - "class_specific": gradient-weighted attention (Chefer et al.) for each image's predicted class.
    The maps are (N, grid, grid), each scaled to [0, 1] by its own range, as the single-image views are drawn.

    Raises:
        VitlabError: as `select_images` (which receives `predictions`), or an unknown view.
    """
    _check_choice(view, GALLERY_VIEWS, "gallery view")
    indices = select_images(model, dataset, kind, count, class_index, predictions=predictions)
    images = dataset.images[indices]  # (N, 3, H, W) uint8
    inputs = BatchTransform(model.image_size, train=False)(images)  # (N, 3, S, S)
    with model_lock():
        with torch.no_grad():
            logits, captured = capture_forward(model, inputs)  # (N, classes)
        probs = logits.float().softmax(dim=-1).cpu()  # (N, classes)
        best = probs.max(dim=-1)
        grid, prefix = captured.geometry.grid_size, captured.geometry.num_prefix_tokens
        if view == "cls":
            maps = cls_attention(captured.attentions[-1], captured.geometry).mean(dim=1)  # (N, grid, grid)
        elif view == "rollout":
            maps = rollout(captured.attentions, "mean", 0.0, prefix)  # (N, patches)
        else:
            maps, _ = gradient_weighted_attention(model, inputs, best.indices.to(inputs.device))  # (N, patches)
    maps = maps.detach().float().cpu().reshape(len(indices), grid, grid)  # (N, grid, grid)
    return Gallery(indices=indices, labels=dataset.labels[indices].cpu(), predicted=best.indices,
                   confidence=best.values, maps=scale_each(maps))


def scale_each(maps: Tensor) -> Tensor:
    """(N, grid, grid) -> (N, grid, grid): each map scaled to [0, 1] by its own min and max; a flat map is all 0."""
    low = maps.amin(dim=(1, 2), keepdim=True)  # (N, 1, 1)
    span = maps.amax(dim=(1, 2), keepdim=True) - low  # (N, 1, 1)
    scaled = (maps - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.zeros_like(scaled))


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise VitlabError(f"Unknown {what} {value!r}. Choose one of: {', '.join(choices)}.")


def _nothing_matches(kind: str, class_index: int | None, dataset: ImageDataset) -> str:
    of_class = "" if class_index is None else f" of class {dataset.classes[class_index]!r}"
    if kind == "misclassified":
        return (f"The model classifies every one of the {len(dataset)} test images{of_class} correctly, so there is "
                f"nothing misclassified to show. Pick another gallery (least confident shows the closest calls).")
    return f"No test image{of_class} in this dataset ({len(dataset)} images). Pick another class or gallery."
