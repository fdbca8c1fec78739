"""Head ablation: switch attention heads off and measure what the model loses (Michel et al. 2019).

A block's self-attention output is `out_proj(concat(head_1, ..., head_H))`: each head writes its own slice of the
vector that `out_proj` reads. Ablating a head sets its slice to zero, so the block keeps every other head and
`out_proj`'s bias; ablating all heads of a block leaves only that bias.

    with ablate_heads(model, {3: [0, 2]}):        # block 4 (index 3) without heads 0 and 2
        logits = model(images)                    # (B, classes)
    table = ablation_table(model, images, labels) # table.drop: (blocks, heads) accuracy lost per single head

The hook recomputes only the named blocks' attention (vitlab.capture_grad's two halves of it, with the ablated
heads' probabilities zeroed); every other block runs the model's own kernel, so ablating nothing changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from vitlab.capture_grad import attention_probs, mix_values
from vitlab.errors import VitlabError


def check_heads(model: VisionTransformer, heads: Mapping[int, Iterable[int]]) -> dict[int, list[int]]:
    """The ablation's {block: sorted heads}, or a VitlabError naming the valid ranges.

    An empty mapping ablates nothing (no hook at all: the model runs untouched); an empty head set for a named
    block is refused, since it is almost always a mistake in building the mapping.
    """
    if not isinstance(model, VisionTransformer):
        raise VitlabError(f"Head ablation needs a torchvision VisionTransformer, got {type(model).__name__}.")
    blocks, num_heads = len(model.encoder.layers), model.encoder.layers[0].num_heads
    chosen = {}
    for block, block_heads in heads.items():
        if not 0 <= block < blocks:
            raise VitlabError(f"Block {block} does not exist: this model's blocks are 0 to {blocks - 1}.")
        block_heads = sorted(set(block_heads))
        if not block_heads:
            raise VitlabError(f"Block {block} has an empty head set: name heads from 0 to {num_heads - 1}.")
        if not all(0 <= head < num_heads for head in block_heads):
            raise VitlabError(f"Heads {block_heads} in block {block}: this model's heads are 0 to {num_heads - 1}.")
        chosen[block] = block_heads
    return chosen


@contextmanager
def ablate_heads(model: VisionTransformer, heads: Mapping[int, Iterable[int]]) -> Iterator[None]:
    """Inside the `with` block, `model` runs with the named heads' outputs zeroed before `out_proj`.

    Args:
        heads: 0-based block index -> head indices to remove in that block.
    The hooks are removed on exit, also when the block raises.
    """
    handles = []
    for block, block_heads in check_heads(model, heads).items():
        attention = model.encoder.layers[block].self_attention
        keep = torch.ones(attention.num_heads)  # (heads,) 1 = keep, 0 = ablated
        keep[block_heads] = 0.0

        def without_heads(module: nn.MultiheadAttention, args: tuple, output: tuple, keep: Tensor = keep) -> tuple:
            probs, values = attention_probs(module, args[0])  # (B, heads, T, T), (B, heads, T, head_dim)
            kept = probs * keep.to(probs)[None, :, None, None]  # the ablated heads mix nothing
            return mix_values(module, kept, values), None  # (B, T, hidden), as the block expects

        handles.append(attention.register_forward_hook(without_heads))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class AblationTable:
    """Accuracy with every head, and how much is lost when one head alone is switched off."""

    accuracy: float
    drop: Tensor  # (blocks, heads): accuracy - accuracy without that head


@torch.no_grad()
def _accuracy(model: VisionTransformer, images: Tensor, labels: Tensor, batch_size: int) -> float:
    correct = sum((model(images[i : i + batch_size]).argmax(-1) == labels[i : i + batch_size]).sum().item()
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def ablation_table(model: VisionTransformer, images: Tensor, labels: Tensor, batch_size: int = 64) -> AblationTable:
    """Ablate each head of each block alone on normalised `images` (N, 3, H, W) with `labels` (N,)."""
    check_heads(model, {0: [0]})
    blocks, num_heads = len(model.encoder.layers), model.encoder.layers[0].num_heads
    baseline = _accuracy(model, images, labels, batch_size)
    drop = torch.zeros(blocks, num_heads)
    for block in range(blocks):
        for head in range(num_heads):
            with ablate_heads(model, {block: [head]}):
                drop[block, head] = baseline - _accuracy(model, images, labels, batch_size)
    return AblationTable(baseline, drop)


@torch.no_grad()
def probability_change(model: VisionTransformer, images: Tensor, heads: Mapping[int, Iterable[int]]) -> Tensor:
    """(B,) change in each image's originally predicted class probability when `heads` are ablated."""
    before = model(images).softmax(-1)  # (B, classes)
    predicted = before.argmax(-1, keepdim=True)  # (B, 1)
    with ablate_heads(model, heads):
        after = model(images).softmax(-1)
    return (after.gather(1, predicted) - before.gather(1, predicted))[:, 0]
