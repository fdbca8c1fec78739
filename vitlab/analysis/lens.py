"""The logit lens: read each block's class token with the model's own final LayerNorm and head.

A ViT classifies from the class token after the last block: `heads(encoder.ln(x[:, 0]))`. The logit lens
(nostalgebraist 2020, for GPT-2; ViT-Prisma for vision) applies that same readout to the class token after every
block, as if the network stopped there: where does the final prediction appear? At the last block it is the model's
own output exactly. Early blocks were never trained to be read this way, so a lens that disagrees does not prove
the information is absent: a linear probe (`vitlab.analysis.probes`) trained per block answers that question.

    result = logit_lens_forward(model, images)     # one captured forward pass
    result.lens_logits                            # (blocks, B, classes)
    result.agreement                              # (blocks,) share of images whose per-block top-1 is the final one
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.capture import capture_forward
from vitlab.errors import VitlabError


@dataclass
class LensResult:
    """What the lens reads from one batch: the model's logits and each block's, with their probabilities."""

    logits: Tensor  # (B, classes): the model's own output
    lens_logits: Tensor  # (blocks, B, classes): the readout applied after each block
    probabilities: Tensor  # (blocks, B, classes): softmax of lens_logits
    agreement: Tensor  # (blocks,): fraction of images whose per-block top-1 equals the final prediction


def logit_lens(model: VisionTransformer, hidden_states: list[Tensor]) -> Tensor:
    """Apply the model's final `encoder.ln` and `heads` to every block's class token.

    Args:
        model: the torchvision VisionTransformer whose blocks produced `hidden_states`.
        hidden_states: one (B, tokens, hidden) output per encoder block (`Captured.hidden_states`).

    Returns:
        (blocks, B, classes) logits; the last block's equal the model's own logits.
    """
    if not isinstance(model, VisionTransformer):
        raise VitlabError(f"The logit lens needs a torchvision VisionTransformer, got {type(model).__name__}.")
    if not hidden_states:
        raise VitlabError("The logit lens got no hidden states: capture a forward pass first (capture_forward).")
    class_tokens = torch.stack([state[:, 0] for state in hidden_states])  # (blocks, B, hidden)
    return model.heads(model.encoder.ln(class_tokens))  # (blocks, B, classes): both act on the last dim


def lens_agreement(lens_logits: Tensor, final_logits: Tensor) -> Tensor:
    """(blocks, B, classes) lens logits and (B, classes) final logits -> (blocks,) share of agreeing top-1s."""
    if lens_logits.shape[1:] != final_logits.shape:
        raise VitlabError(f"Lens logits {tuple(lens_logits.shape)} do not match final logits "
                          f"{tuple(final_logits.shape)}: expected (blocks, B, classes) and (B, classes).")
    final = final_logits.argmax(dim=-1)  # (B,)
    return (lens_logits.argmax(dim=-1) == final).float().mean(dim=1)  # (blocks,)


@torch.no_grad()
def logit_lens_forward(model: VisionTransformer, images: Tensor) -> LensResult:
    """One captured forward pass of `images` (B, 3, H, W), already normalised, read through the lens per block."""
    logits, captured = capture_forward(model, images)  # (B, classes)
    lens_logits = logit_lens(model, captured.hidden_states)  # (blocks, B, classes)
    return LensResult(logits, lens_logits, lens_logits.softmax(dim=-1), lens_agreement(lens_logits, logits))
