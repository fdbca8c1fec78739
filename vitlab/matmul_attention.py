"""Self-attention as three plain matrix products, for the explanations' passes under autocast on a CPU.

`nn.MultiheadAttention` hands its work to a fused kernel: the inference fast path when nothing needs gradients,
`scaled_dot_product_attention` otherwise. On a CPU in bfloat16 the second is slow, most of all its backward pass.
For ViT-B/16's shapes (16 images, 12 heads, 197 tokens, head_dim 64; 2 cores of an AMD EPYC with AVX512-BF16), one
block's attention took 15 ms forward and 45 ms backward through the fused kernel, 7 ms and 11 ms as

    probs = softmax(Q K^T / sqrt(head_dim))     (B, heads, T, T)
    output = (probs V) W_out + b_out            (B, T, hidden)

and the integrated gradients of one image (16 path points, forward and backward) 2.3-3.0 s -> 1.8-1.9 s in all.
The arithmetic is the fast path's (its scores are bfloat16 matrix products too); the fused kernel used with
gradients keeps the scores in float32, so maps with gradients move by bfloat16 rounding, no more (docs/explain.md).

`matmul_attention(model)` makes every batch-first self-attention of `model` compute that way inside a `with` block
(`vitlab.analysis.explain.borrowed` uses it under a CPU's autocast) and restores them on exit. The modules stay the
same objects with the same parameters and hooks: only their class is swapped for `MatmulAttention`, which adds no
state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from vitlab.capture_grad import attention_probs, mix_values


class MatmulAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` whose self-attention without masks is `attention_probs` then `mix_values`.

    Anything else (cross-attention, masks, dropout while training, sequence-first inputs, separate key or value
    sizes, added key and value biases or zero attention) goes to PyTorch's own forward unchanged.
    """

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, T, hidden) three times the same tensor -> (output (B, T, hidden), weights or None).

        weights: (B, T, T) averaged over heads, or (B, heads, T, T) with `average_attn_weights=False`, as
        `nn.MultiheadAttention` returns them.
        """
        plain = (query is key and key is value and self.batch_first and key_padding_mask is None
                 and attn_mask is None and not is_causal and not (self.training and self.dropout > 0)
                 and self._qkv_same_embed_dim and self.bias_k is None and not self.add_zero_attn)
        if not plain:
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        probs, values = attention_probs(self, query)  # (B, heads, T, T), (B, heads, T, head_dim)
        output = mix_values(self, probs, values)  # (B, T, hidden)
        if not need_weights:
            return output, None
        return output, probs.mean(dim=1) if average_attn_weights else probs


@contextmanager
def matmul_attention(model: nn.Module) -> Iterator[None]:
    """Inside the block, every `nn.MultiheadAttention` of `model` is a `MatmulAttention`; on exit, also when the
    block raises, each has its own class back."""
    swapped = [module for module in model.modules() if type(module) is nn.MultiheadAttention]
    for module in swapped:
        module.__class__ = MatmulAttention
    try:
        yield
    finally:
        for module in swapped:
            module.__class__ = nn.MultiheadAttention
