"""Two experiments run live on the image on the page: switch heads off, and read every block through the lens.

    before, after = top_k_ablated(model, image, {3: [0, 2]})   # top-5 (class, probability) without those heads
    per_block = lens_top(model, image, k=3)                     # per block: the logit lens' top-3

Each is one or two forward passes of one image (vitlab.analysis.ablation's hooks, vitlab.analysis.lens's readout),
fast enough to
rerun on every click. Both hold the explorer's model lock: the ablation's hooks would otherwise change what another
browser tab, sharing the cached model, sees in the same moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.ablation import ablate_heads, check_heads
from vitlab.analysis.lens import logit_lens_forward
from vitlab.explorer.views import model_inputs, model_lock

Ranking = list[tuple[int, float]]  # (class index, probability), most likely first


def top_k_ablated(
    model: VisionTransformer, image: Tensor, heads: Mapping[int, Iterable[int]], k: int = 5
) -> tuple[Ranking, Ranking]:
    """The model's top-k classes on `image` uint8 (3, H, W) with every head, then with `heads` switched off.

    Args:
        heads: 0-based block -> heads to ablate there (vitlab.analysis.ablation.ablate_heads); {} ablates nothing.
    Returns:
        (before, after): each a list of k (class index, probability), most likely first.

    Raises:
        VitlabError: a block or head the model does not have (checked before any forward pass).
    """
    heads = check_heads(model, heads)
    inputs = model_inputs(model, image)  # (1, 3, S, S)
    with torch.no_grad(), model_lock():
        before = model(inputs)[0].float().softmax(dim=-1)  # (classes,)
        with ablate_heads(model, heads):
            after = model(inputs)[0].float().softmax(dim=-1)  # (classes,)
    return _top(before.cpu(), k), _top(after.cpu(), k)


def lens_top(model: VisionTransformer, image: Tensor, k: int = 3) -> list[Ranking]:
    """The logit lens on `image` uint8 (3, H, W): per block, its top-k (class index, probability).

    Returns:
        One ranking per encoder block, first block first; the last one is the model's own top-k.
    """
    with model_lock():
        result = logit_lens_forward(model, model_inputs(model, image))
    probabilities = result.probabilities[:, 0].float().cpu()  # (blocks, 1, classes) -> (blocks, classes)
    return [_top(block, k) for block in probabilities]


def _top(probs: Tensor, k: int) -> Ranking:
    """(classes,) probabilities -> the k largest as (class index, probability), most likely first."""
    values, indices = probs.topk(min(k, probs.numel()))
    return list(zip(indices.tolist(), values.tolist(), strict=True))
