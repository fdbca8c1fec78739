"""Exact gradients through captured attention: what `vitlab.capture` does when autograd is on.

Under `torch.no_grad()` capture only asks each attention module for its weights (see `vitlab.capture`). With
autograd on that is not enough, for two reasons:

- Class-specific maps (`vitlab.analysis.attention.gradient_weighted_attention`) need d logit / d attention for every
block,
  so the recorded probabilities must be part of the autograd graph, also in frozen blocks that have none.
- The model's outputs must stay bit-identical, and PyTorch picks its attention kernel by whether anything in
  flight carries gradients: the fused inference kernel when nothing does, the plain one otherwise. Capture must
  not change that choice, so it tracks, along the forward pass, what the uncaptured model would have done.

So the recording hook recomputes the probabilities (`attention_probs`), mixes the values with them (`mix_values`)
to put them in the graph, and passes on the value of the kernel the model would have used (`attention_in_graph`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from vitlab.model import stem_parameters


@contextmanager
def autograd_on() -> Iterator[None]:
    """Autograd on for the block, whatever the caller's context: `torch.no_grad()` and `torch.inference_mode()` too.

    Users wrap analysis code in either; a function that needs gradients (class-specific maps, probes) must compute
    its forward pass, its score and its `autograd.grad` inside this block. Tensors made under inference mode cannot
    enter autograd: pass them through `grad_ready` first.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


def grad_ready(tensor: Tensor) -> Tensor:
    """`tensor`, or a plain copy of it if it was made under `torch.inference_mode()` (autograd cannot record it)."""
    return tensor.clone() if tensor.is_inference() else tensor


class GradientRouting:
    """Tracks, along one forward pass, the kernel choice of the uncaptured model, and routes gradients with it.

    `register_hooks()` installs the tracking (a pre-hook on the model, a hook after each block); `capture`'s
    attention hook calls `attention(...)` with autograd on.
    """

    def __init__(self, model: VisionTransformer) -> None:
        self.model = model
        self.blocks = list(model.encoder.layers)
        # Would the uncaptured model's activations carry gradients at this point of the forward pass? PyTorch
        # picks its attention kernel by that, and capture must reproduce the kernel the model would have used.
        self.plain_tracks_grad = False

    def register_hooks(self) -> list[torch.utils.hooks.RemovableHandle]:
        handles = [self.model.register_forward_pre_hook(self._note_input)]
        for block in self.blocks:
            handles.append(block.register_forward_hook(self._after_block))
        return handles

    def _note_input(self, model: nn.Module, args: tuple) -> None:
        self.plain_tracks_grad = args[0].requires_grad or any(p.requires_grad for p in stem_parameters(self.model))

    def _after_block(self, block: nn.Module, args: tuple, output: Tensor) -> None:
        self.plain_tracks_grad = self.plain_tracks_grad or any(p.requires_grad for p in block.parameters())

    def attention(self, index: int, attention: nn.MultiheadAttention, x: Tensor, model_output: Tensor,
                  ) -> tuple[Tensor, Tensor]:
        """Block `index`'s attention output (B, T, hidden) and its probabilities (B, heads, T, T), in the graph."""
        block = self.blocks[index]
        block_params = [*block.ln_1.parameters(), *attention.parameters()]
        plain_uses_grad = self.plain_tracks_grad or any(p.requires_grad for p in block_params)
        return attention_in_graph(attention, x, model_output, plain_uses_grad)


def attention_in_graph(
    attention: nn.MultiheadAttention, x: Tensor, model_output: Tensor, plain_uses_grad: bool
) -> tuple[Tensor, Tensor]:
    """With autograd on: the model's exact output value, with gradients routed through the recorded probabilities.

    Args:
        x: (B, T, hidden), the block's normalised input to `attention`.
        model_output: (B, T, hidden), what `attention` returned in the captured forward.
        plain_uses_grad: whether the uncaptured model would have run `attention` with gradients at this point.
    Returns:
        (output (B, T, hidden), probs (B, heads, T, T)); `probs` is always part of the autograd graph.
    """
    probs, values = attention_probs(attention, x)
    if not probs.requires_grad:
        # Nothing before this point trains (frozen blocks, an image without grad): make the probabilities a leaf
        # of the graph, so that d(logit)/d(attention) exists for every block, as class-specific maps need.
        probs = probs.detach().requires_grad_(True)
    explicit_output = mix_values(attention, probs, values)
    if x.requires_grad and not plain_uses_grad:
        # Only capture made x carry gradients: without capture PyTorch would run its fused inference kernel
        # here, so run that kernel for the value (forward() skips the hooks; q, k, v must be one tensor).
        with torch.no_grad():
            x_plain = x.detach()
            model_output = attention.forward(x_plain, x_plain, x_plain, need_weights=False)[0]
    # Value: model_output exactly (explicit_output - its detached copy is zero). Gradient: through `probs`.
    return model_output.detach() + (explicit_output - explicit_output.detach()), probs


def attention_probs(attention: nn.MultiheadAttention, x: Tensor) -> tuple[Tensor, Tensor]:
    """The first half of self-attention: softmax(Q K^T / sqrt(head_dim)) per head, and the values.

    Args:
        attention: a batch-first `nn.MultiheadAttention` (an encoder block's `self_attention`).
        x: (B, tokens, hidden), the block's normalised input.

    Returns:
        probs (B, heads, tokens, tokens), each row summing to 1, and values (B, heads, tokens, head_dim).
    """
    queries, keys, values = F.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    # (B, T, hidden) -> (B, heads, T, head_dim) for each of the three
    queries, keys, values = (
        rearrange(t, "b t (h d) -> b h t d", h=attention.num_heads) for t in (queries, keys, values)
    )
    scale = queries.shape[-1] ** -0.5
    probs = (queries @ keys.transpose(-2, -1) * scale).softmax(dim=-1)  # (B, heads, T, T)
    return probs, values


def mix_values(attention: nn.MultiheadAttention, probs: Tensor, values: Tensor) -> Tensor:
    """The second half: each token's output is its probability-weighted mix of the values, projected back.

    probs (B, heads, T, T) and values (B, heads, T, head_dim) -> output (B, T, hidden).
    """
    mixed = rearrange(probs @ values, "b h t d -> b t (h d)")  # (B, heads, T, head_dim) -> (B, T, hidden)
    return attention.out_proj(mixed)
