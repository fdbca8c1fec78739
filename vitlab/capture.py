"""Capturing what a torchvision Vision Transformer computes inside: patch embeddings, block outputs, attention.

    with capture(model) as cap:
        logits = model(images)                      # (B, num_classes), exactly as without capture
    cap.attentions[-1]                              # (B, heads, tokens, tokens), softmax probabilities per head
    cap.patch_embeddings                            # (B, patches, hidden), before class token and position embedding
    cap.hidden_states[3]                            # (B, tokens, hidden), output of encoder block 3
    cap.geometry.grid_size                          # patches per side, from the model's image_size and patch_size

The idea is lucidrains' `Recorder` and timm's `AttentionExtract`: torchvision's encoder blocks call
`self_attention(x, x, x, need_weights=False)`, so the attention probabilities are computed but thrown away. A forward
pre-hook on each block's `self_attention` asks for them instead (`need_weights=True, average_attn_weights=False`,
one map per head), and a forward hook records them and hands the block the output it asked for. Hooks go by module
name (`encoder.layers[i].self_attention`, never position guesses) and are removed when the `with` block ends, also
when the forward pass raises, so the model comes back untouched.

In eval mode under `torch.no_grad()` that is all: PyTorch's fused inference kernel computes the probabilities
anyway, so asking for them is free and the outputs are bit-identical (the fused path needs an even head count:
ViT-B/16 has 12, vit_tiny 4). With autograd on, the weights must also carry gradients (class-specific maps need
d logit / d attention) while the value stays that of the kernel the model would have run: that routing is
`vitlab.capture_grad`'s, one call from the recording hook below.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from vitlab.capture_grad import GradientRouting
from vitlab.errors import VitlabError


@contextmanager
def capture(model: VisionTransformer) -> Iterator[Captured]:
    """Hook `model` for the duration of a `with` block and yield a `Captured` that the forward pass fills.

    The model's outputs are unchanged; all hooks are removed on exit, also when the block raises. If several
    forward passes run inside the block, `Captured` holds the last one.

    Raises:
        VitlabError: `model` is a `torch.compile` wrapper (capture needs the eager model: `model._orig_mod`).
    """
    _refuse_compiled(model)
    captured = Captured(model)
    exact_gradients = GradientRouting(model)  # only used with autograd on

    def ask_for_weights(attention: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if torch.is_grad_enabled():
            return args, kwargs  # let the model's own kernel run untouched; record_attention adds the probabilities
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def recorders(index: int):
        def record_attention(attention: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple:
            attn_output, probs = output  # (B, tokens, hidden), (B, heads, tokens, tokens) or None under autograd
            if torch.is_grad_enabled():
                attn_output, probs = exact_gradients.attention(index, attention, args[0], attn_output)
            captured._attentions[index] = probs
            return attn_output, None  # what the block expects from need_weights=False

        def record_block_output(block: nn.Module, args: Any, output: Tensor) -> None:
            captured._hidden_states[index] = output  # (B, tokens, hidden)

        return record_attention, record_block_output

    def record_patch_embeddings(conv_proj: nn.Module, args: Any, output: Tensor) -> None:
        # (B, hidden, grid, grid) -> (B, patches, hidden), row-major like torchvision's _process_input
        captured._patch_embeddings = rearrange(output, "b d gh gw -> b (gh gw) d")

    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        handles += exact_gradients.register_hooks()
        handles.append(model.conv_proj.register_forward_hook(record_patch_embeddings))
        for index, block in enumerate(model.encoder.layers):
            record_attention, record_block_output = recorders(index)
            handles.append(block.self_attention.register_forward_pre_hook(ask_for_weights, with_kwargs=True))
            handles.append(block.self_attention.register_forward_hook(record_attention, with_kwargs=True))
            handles.append(block.register_forward_hook(record_block_output))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def capture_forward(model: VisionTransformer, images: Tensor) -> tuple[Tensor, Captured]:
    """Run `model(images)` under `capture` and return `(logits (B, num_classes), captured)`.

    A `torch.compile`d model is run eagerly through its `_orig_mod` (the same weights): this call makes the forward
    pass itself, so it can take the path the hooks see; a compiled graph would skip or recompile around them.
    """
    model = getattr(model, "_orig_mod", model)
    with capture(model) as captured:
        logits = model(images)
    return logits, captured


def _refuse_compiled(model: nn.Module) -> None:
    """`capture` hooks the eager modules; the forward of a torch.compile wrapper runs a graph those hooks miss."""
    if hasattr(model, "_orig_mod"):
        raise VitlabError(
            "capture needs the eager model, but got a torch.compile wrapper: its forward pass runs a compiled graph, "
            "which skips or recompiles around capture's hooks. Pass model._orig_mod (the same weights, uncompiled) "
            "to capture and call that inside the with block, or use capture_forward(model, images), which does so."
        )


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
