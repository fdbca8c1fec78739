"""Capturing what a torchvision Vision Transformer computes inside: patch embeddings, block outputs, attention.

torchvision's encoder blocks call `self_attention(x, x, x, need_weights=False)`, so the attention probabilities are
never returned. `capture(model)` hooks the model by module name (never by position guesses) for one `with` block:

    with capture(model) as cap:
        logits = model(images)                      # (B, num_classes), exactly as without capture
    cap.attentions[-1]                              # (B, heads, tokens, tokens), softmax probabilities per head
    cap.patch_embeddings                            # (B, patches, hidden), before class token and position embedding
    cap.hidden_states[3]                            # (B, tokens, hidden), output of encoder block 3
    cap.geometry.grid_size                          # patches per side, from the model's image_size and patch_size

Every hook is removed when the block ends, also when the forward pass raises, so the model comes back untouched.

How attention is obtained without changing the model's outputs: a pre-hook asks each attention module for its
per-head weights (`need_weights=True, average_attn_weights=False`). In eval mode under `torch.no_grad()`, PyTorch's
fused inference kernel computes those probabilities anyway, so this is free and the outputs are bit-identical.
With autograd on, the hook recomputes the probabilities (`attention_probs`) and wires them into the graph so
gradients flow through them (class-specific maps need that), while the value passed on stays the exact output of
the kernel the model would have used without capture. Exactness in eval mode under no_grad relies on PyTorch's
fused path, which needs an even head count (ViT-B/16 has 12, vit_tiny 4).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from vitlab.model import stem_parameters


@dataclass(frozen=True)
class Geometry:
    """How a ViT cuts its input into tokens. Derived from the model, never hard-coded."""

    image_size: int  # input height = width, in pixels (224 for ViT-B/16)
    patch_size: int  # patch height = width, in pixels (16 for ViT-B/16)
    num_prefix_tokens: int = 1  # tokens before the patches: torchvision's ViT has one, the class token

    @property
    def grid_size(self) -> int:
        """Patches per side (14 for ViT-B/16 at 224 px)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_tokens(self) -> int:
        """Sequence length inside the encoder: prefix tokens + patches (197 for ViT-B/16)."""
        return self.num_prefix_tokens + self.num_patches


def geometry(model: VisionTransformer) -> Geometry:
    """Return the token geometry of a torchvision `VisionTransformer`."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f"vitlab captures torchvision.models.VisionTransformer models, got {type(model).__name__}. "
            f"Build one with vitlab.build_model(...)."
        )
    return Geometry(image_size=model.image_size, patch_size=model.patch_size)


class Captured:
    """What one forward pass inside `capture(model)` recorded. Filled by the hooks; read after the forward."""

    def __init__(self, model: VisionTransformer) -> None:
        self.geometry = geometry(model)
        self.num_blocks = len(model.encoder.layers)
        self._attentions: list[Tensor | None] = [None] * self.num_blocks
        self._hidden_states: list[Tensor | None] = [None] * self.num_blocks
        self._patch_embeddings: Tensor | None = None

    @property
    def attentions(self) -> list[Tensor]:
        """One tensor per encoder block, (B, heads, tokens, tokens): softmax probabilities, class token at 0."""
        return self._complete(self._attentions, "attention")

    @property
    def hidden_states(self) -> list[Tensor]:
        """One tensor per encoder block, (B, tokens, hidden): that block's output."""
        return self._complete(self._hidden_states, "hidden states")

    @property
    def patch_embeddings(self) -> Tensor:
        """(B, patches, hidden): the patch projection's output, before class token and position embedding."""
        if self._patch_embeddings is None:
            raise RuntimeError(self._missing_message("patch embeddings", 0))
        return self._patch_embeddings

    def _complete(self, slots: list[Tensor | None], what: str) -> list[Tensor]:
        captured = [t for t in slots if t is not None]
        if len(captured) != self.num_blocks:
            raise RuntimeError(self._missing_message(what, len(captured)))
        return captured

    def _missing_message(self, what: str, count: int) -> str:
        return (
            f"capture recorded {what} for {count} of {self.num_blocks} encoder blocks. Run the model's forward "
            f"pass inside the `with capture(model) as cap:` block, on the same model object you passed to capture "
            f"(a copy, a torch.compile wrapper or a model rebuilt inside the block is not hooked)."
        )


@contextmanager
def capture(model: VisionTransformer) -> Iterator[Captured]:
    """Hook `model` for the duration of a `with` block and yield a `Captured` that the forward pass fills.

    The model's outputs are unchanged; all hooks are removed on exit, also when the block raises. If several
    forward passes run inside the block, `Captured` holds the last one.
    """
    captured = Captured(model)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    # Would the uncaptured model's activations carry gradients at this point of the forward pass? PyTorch picks
    # its attention kernel by that, and capture must reproduce the kernel the model would have used.
    plain_tracks_grad = False

    def note_input(module: nn.Module, args: tuple) -> None:
        nonlocal plain_tracks_grad
        plain_tracks_grad = args[0].requires_grad or any(p.requires_grad for p in stem_parameters(model))

    def record_patch_embeddings(module: nn.Module, args: Any, output: Tensor) -> None:
        # (B, hidden, grid, grid) -> (B, patches, hidden), row-major like torchvision's _process_input
        captured._patch_embeddings = rearrange(output, "b d gh gw -> b (gh gw) d")

    def make_block_hooks(index: int, block: nn.Module):
        def record_hidden_state(module: nn.Module, args: Any, output: Tensor) -> None:
            nonlocal plain_tracks_grad
            plain_tracks_grad = plain_tracks_grad or any(p.requires_grad for p in block.parameters())
            captured._hidden_states[index] = output  # (B, tokens, hidden)

        def ask_for_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if torch.is_grad_enabled():
                return args, kwargs  # let the model's own kernel run untouched; record_attention adds the probs
            return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

        def record_attention(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple:
            attn_output, probs = output  # (B, tokens, hidden), (B, heads, tokens, tokens) or None
            if torch.is_grad_enabled():
                block_params = [*block.ln_1.parameters(), *module.parameters()]
                plain_uses_grad = plain_tracks_grad or any(p.requires_grad for p in block_params)
                attn_output, probs = _attention_in_graph(module, args[0], attn_output, plain_uses_grad)
            captured._attentions[index] = probs
            return attn_output, None  # what the block expects from need_weights=False

        return record_hidden_state, ask_for_weights, record_attention

    try:
        handles.append(model.register_forward_pre_hook(note_input))
        handles.append(model.conv_proj.register_forward_hook(record_patch_embeddings))
        for index, block in enumerate(model.encoder.layers):
            record_hidden_state, ask_for_weights, record_attention = make_block_hooks(index, block)
            handles.append(block.register_forward_hook(record_hidden_state))
            handles.append(block.self_attention.register_forward_pre_hook(ask_for_weights, with_kwargs=True))
            handles.append(block.self_attention.register_forward_hook(record_attention, with_kwargs=True))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _attention_in_graph(
    attention: nn.MultiheadAttention, x: Tensor, model_output: Tensor, plain_uses_grad: bool
) -> tuple[Tensor, Tensor]:
    """With autograd on: the model's exact output value, with gradients routed through the recorded probabilities.

    Returns (output (B, T, hidden), probs (B, heads, T, T)); `probs` is always part of the autograd graph.
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


def attention_with_probs(attention: nn.MultiheadAttention, x: Tensor) -> tuple[Tensor, Tensor]:
    """Self-attention written out, as in "Attention Is All You Need": x (B, T, hidden) -> (output, probs)."""
    probs, values = attention_probs(attention, x)
    return mix_values(attention, probs, values), probs


def capture_forward(model: VisionTransformer, images: Tensor) -> tuple[Tensor, Captured]:
    """Run `model(images)` under `capture` and return `(logits (B, num_classes), captured)`."""
    with capture(model) as captured:
        logits = model(images)
    return logits, captured
