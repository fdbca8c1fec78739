"""One image, one forward pass: every view the explorer shows is read from it without calling the model again.

    views = analyse_image(model, image)                   # image uint8 (3, H, W): probabilities and every map
    views.cls_map(layer=3, head=0)                        # (grid, grid), cheap: no model call (what a slider does)
    views.rollout_map("max", discard_ratio=0.9)           # (grid, grid)
    relevance, target = class_map(model, image)           # forward + backward: why the predicted class

The analyses themselves are vitlab.analysis.attention's; this module only runs the model once and selects from its
output.
Drawing the maps is vitlab.explorer.drawing's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.attention import (
    HeadFusion,
    cls_attention,
    gradient_weighted_attention,
    mean_attention_distance,
    query_attention,
    rollout,
)
from vitlab.capture import Geometry, capture_forward, geometry
from vitlab.data import BatchTransform

DISTANCE_IMAGES = 16  # images the mean attention distance is averaged over, once per model


# capture() hooks the model object for one forward pass. Streamlit serves every browser tab from threads of one
# process, and cached models are shared between them, so two passes must not overlap on one model.
_MODEL_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageViews:
    """Everything one forward pass tells about one image; every slider reads from here without a model call."""

    probs: Tensor  # (classes,) softmax probabilities
    attentions: tuple[Tensor, ...]  # one (1, heads, tokens, tokens) per encoder block, CPU float32
    geometry: Geometry  # image_size, patch_size, grid_size of the model

    @property
    def num_layers(self) -> int:
        return len(self.attentions)

    @property
    def num_heads(self) -> int:
        return self.attentions[0].shape[1]

    def top_k(self, k: int = 5) -> list[tuple[int, float]]:
        """The k most likely classes as (class index, probability), most likely first."""
        values, indices = self.probs.topk(min(k, self.probs.numel()))
        return list(zip(indices.tolist(), values.tolist(), strict=True))

    def cls_map(self, layer: int, head: int) -> Tensor:
        """(grid, grid): where the class token looks in block `layer` (0-based), head `head`."""
        return cls_attention(self.attentions[layer], self.geometry)[0, head]

    def head_maps(self, layer: int) -> Tensor:
        """(heads, grid, grid): the class token's attention in every head of block `layer`."""
        return cls_attention(self.attentions[layer], self.geometry)[0]

    def query_map(self, layer: int, head: int, row: int, col: int) -> Tensor:
        """(grid, grid): where patch (row, col) looks in block `layer`, head `head`."""
        token = self.geometry.num_prefix_tokens + row * self.geometry.grid_size + col
        return query_attention(self.attentions[layer], self.geometry, token)[0, head]

    def rollout_map(self, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0) -> Tensor:
        """(grid, grid): attention rollout through all blocks (vitlab.analysis.attention.rollout)."""
        flow = rollout(self.attentions, head_fusion, discard_ratio, self.geometry.num_prefix_tokens)  # (1, patches)
        return flow[0].reshape(self.geometry.grid_size, self.geometry.grid_size)


def model_inputs(model: VisionTransformer, image: Tensor) -> Tensor:
    """uint8 (3, H, W) -> float (1, 3, S, S), resized and normalised as the model expects."""
    return BatchTransform(model.image_size, train=False)(image[None])


@torch.no_grad()
def analyse_image(model: VisionTransformer, image: Tensor) -> ImageViews:
    """One forward pass of `model` (eval mode) on `image` uint8 (3, H, W), recording every block's attention."""
    inputs = model_inputs(model, image)  # (1, 3, S, S)
    with _MODEL_LOCK:
        logits, captured = capture_forward(model, inputs)  # (1, classes)
    return ImageViews(
        probs=logits[0].float().softmax(dim=-1).cpu(),
        attentions=tuple(a.detach().float().cpu() for a in captured.attentions),  # (1, heads, T, T) each
        geometry=captured.geometry,
    )


def class_map(model: VisionTransformer, image: Tensor, target_class: int | None = None) -> tuple[Tensor, int]:
    """Gradient-weighted attention (vitlab.analysis.attention) for one class: which patches made the model say it.

    Args:
        image: uint8 (3, H, W).
        target_class: a class index, or None for the predicted class.
    Returns:
        relevance (grid, grid) and the class it explains.
    """
    with _MODEL_LOCK:
        relevance, target = gradient_weighted_attention(model, model_inputs(model, image), target_class)
    grid = geometry(model).grid_size
    return relevance[0].detach().cpu().reshape(grid, grid), int(target[0])


@torch.no_grad()
def mean_distances(model: VisionTransformer, images: Tensor, batch_size: int = 4) -> Tensor:
    """Mean attention distance (layers, heads) in pixels over `images` uint8 (N, 3, H, W), a few at a time."""
    total, count = None, 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        inputs = BatchTransform(model.image_size, train=False)(batch)  # (b, 3, S, S)
        with _MODEL_LOCK:
            _, captured = capture_forward(model, inputs)
        distances = mean_attention_distance(captured.attentions, model.patch_size) * len(batch)  # (layers, heads)
        total, count = (distances if total is None else total + distances), count + len(batch)
    return total / count


def model_lock() -> threading.Lock:
    """The lock every captured or hooked pass of the explorer holds (see _MODEL_LOCK), shared with its other
    modules' batched passes (gallery, live): `with model_lock(): ...`."""
    return _MODEL_LOCK
