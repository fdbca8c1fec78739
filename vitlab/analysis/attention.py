"""Attention analyses, each written from its paper's definition.

All functions take what `vitlab.capture` records: `attentions`, a list with one (B, heads, tokens, tokens) tensor per
encoder block, softmax probabilities with the class token at index 0 (the key axis is the last one).

- `cls_attention` / `query_attention`: one row of one layer's attention, as a (grid, grid) map per head.
- `rollout`: Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers".
- `mean_attention_distance`: Dosovitskiy et al. (2021), "An Image is Worth 16x16 Words", Fig. 7 (right).
- `gradient_weighted_attention`: Chefer, Gur & Wolf (2021), "Generic Attention-model Explainability".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.capture import Geometry, capture
from vitlab.capture_grad import autograd_on, grad_ready

HeadFusion = Literal["mean", "max", "min"]


def cls_attention(attention: Tensor, geometry: Geometry) -> Tensor:
    """The class token's attention over the patches, per head.

    Args:
        attention: (B, heads, tokens, tokens), one layer's probabilities.
    Returns:
        (B, heads, grid, grid): row 0 (the class token as query) without the prefix-token keys.
    """
    return query_attention(attention, geometry, query_token=0)


def query_attention(attention: Tensor, geometry: Geometry, query_token: int) -> Tensor:
    """Where one token looks: its row of attention over the patches, per head.

    Args:
        attention: (B, heads, tokens, tokens), one layer's probabilities.
        query_token: index into the tokens (0 is the class token; patch (r, c) is
            `geometry.num_prefix_tokens + r * geometry.grid_size + c`).
    Returns:
        (B, heads, grid, grid).
    """
    row = attention[:, :, query_token, geometry.num_prefix_tokens :]  # (B, heads, patches)
    return rearrange(row, "b h (gh gw) -> b h gh gw", gh=geometry.grid_size)


def fuse_heads(attention: Tensor, head_fusion: HeadFusion = "mean") -> Tensor:
    """Combine the heads of one layer: (B, heads, T, T) -> (B, T, T)."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")


def rollout(
    attentions: Sequence[Tensor],
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    num_prefix_tokens: int = 1,
) -> Tensor:
    """Attention rollout: how much each patch flows into the class token through all layers.

    Per layer: fuse the heads; optionally zero the lowest `discard_ratio` share of each row's weights (never the
    weight to the class token); add the identity for the residual connection; renormalise every row. Then multiply
    the layers, last on the left: R = A_L ... A_2 A_1.

    Compared with other code: `discard_ratio` drops the weakest share of each row's patch weights, row by row,
    and always keeps the prefix-token (class-token) column. jacobgil/vit-explain, the rollout many tutorials copy,
    differs twice: it zeroes the lowest share of all T*T entries of a layer under one global threshold (sparing only
    the class token's weight to itself), and it divides by row sums taken without keepdim, so entry (i, j) is
    divided by row j's sum (its issue #16). Its maps therefore differ from these, except with head_fusion="mean"
    and discard_ratio=0, where the rows already sum to 1: then, both divided by their maximum as vit-explain returns
    them, the two agree to float rounding (2.4e-7 in float32; tests/test_rollout_reference.py checks it).

    Args:
        attentions: one (B, heads, T, T) tensor per block, first block first.
    Returns:
        (B, patches): the class token's row of R over the patch tokens.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    batch, _, num_tokens, _ = attentions[0].shape
    identity = torch.eye(num_tokens, dtype=attentions[0].dtype, device=attentions[0].device)
    joint = identity.expand(batch, num_tokens, num_tokens)  # (B, T, T)
    for attention in attentions:
        fused = fuse_heads(attention, head_fusion)  # (B, T, T)
        if discard_ratio > 0:
            fused = _discard_lowest(fused, discard_ratio, num_prefix_tokens)
        flow = fused + identity
        flow = flow / flow.sum(dim=-1, keepdim=True)  # every row of every batch item sums to 1
        joint = flow @ joint
    return joint[:, 0, num_prefix_tokens:]  # (B, patches)


def _discard_lowest(fused: Tensor, discard_ratio: float, num_prefix_tokens: int) -> Tensor:
    """Zero the lowest `discard_ratio` share of each row's patch-key weights; prefix-token keys are kept."""
    patch_weights = fused[..., num_prefix_tokens:]  # (B, T, patches)
    num_discard = int(patch_weights.shape[-1] * discard_ratio)
    if num_discard == 0:
        return fused
    lowest = patch_weights.topk(num_discard, dim=-1, largest=False).indices  # (B, T, num_discard)
    kept_patches = patch_weights.scatter(-1, lowest, 0.0)
    return torch.cat([fused[..., :num_prefix_tokens], kept_patches], dim=-1)


def patch_distances(grid_size: int, patch_size: int, device: torch.device | str = "cpu") -> Tensor:
    """(patches, patches): Euclidean distance in pixels between the centres of every pair of patches."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=-1).to(device, torch.float32)  # (patches, 2)
    return torch.cdist(centres, centres) * patch_size


def mean_attention_distance(
    attentions: Sequence[Tensor], patch_size: int, num_prefix_tokens: int = 1
) -> Tensor:
    """Mean attention distance per layer and head (the ViT paper's "attention distance", Fig. 7 right).

    For each query patch q: sum_k a_qk * distance(q, k) in pixels, with the prefix tokens dropped as queries and
    keys and each query's weights renormalised over the patch keys; averaged over queries and images.
    Uniform attention on ViT-B/16's 14x14 grid gives about 116.5 px; attending only to yourself gives 0.

    Returns:
        (layers, heads).
    """
    per_layer = []
    for attention in attentions:
        patch_attention = attention[:, :, num_prefix_tokens:, num_prefix_tokens:]  # (B, heads, P, P)
        patch_attention = patch_attention / patch_attention.sum(dim=-1, keepdim=True)
        grid_size = int(round(patch_attention.shape[-1] ** 0.5))
        distances = patch_distances(grid_size, patch_size, attention.device).to(attention.dtype)  # (P, P)
        per_query = (patch_attention * distances).sum(dim=-1)  # (B, heads, P)
        per_layer.append(per_query.mean(dim=(0, 2)))  # (heads,)
    return torch.stack(per_layer)  # (layers, heads)


def gradient_weighted_attention(
    model: VisionTransformer, images: Tensor, target_class: Tensor | int | None = None
) -> tuple[Tensor, Tensor]:
    """Class-specific relevance map (Chefer et al. 2021, generic attention-model explainability).

    R = I; for each block, R += mean over heads of (dA * A).clamp(min=0) @ R, where A is the block's attention
    and dA the gradient of the target class's logit with respect to A. The answer is R's class-token row over
    the patches: which patches made the model predict `target_class`.

    Args:
        images: (B, 3, H, W), normalised as the model expects.
        target_class: one class for all images, one per image (B,), or None for each image's prediction.
    Returns:
        relevance (B, patches) and the target classes (B,).
    """
    with autograd_on():  # the whole computation: callers may sit in torch.no_grad() or torch.inference_mode()
        with capture(model) as captured:
            logits = model(grad_ready(images))  # (B, classes)
        if target_class is None:
            target = logits.argmax(dim=-1)
        else:
            target = torch.as_tensor(target_class, device=logits.device).expand(logits.shape[0])
        score = logits.gather(1, target[:, None]).sum()
        attentions = captured.attentions
        gradients = torch.autograd.grad(score, attentions)
    num_tokens = attentions[0].shape[-1]
    identity = torch.eye(num_tokens, dtype=attentions[0].dtype, device=images.device)
    relevance = identity.expand(images.shape[0], num_tokens, num_tokens)  # (B, T, T)
    for attention, gradient in zip(attentions, gradients, strict=True):
        weighted = (gradient * attention.detach()).clamp(min=0).mean(dim=1)  # (B, heads, T, T) -> (B, T, T)
        relevance = relevance + weighted @ relevance
    prefix = captured.geometry.num_prefix_tokens
    return relevance[:, 0, prefix:], target  # (B, patches), (B,)
