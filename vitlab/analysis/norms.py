"""Token norms and high-norm outliers (Darcet et al. 2023, "Vision Transformers Need Registers").

    _, cap = capture_forward(model, images)
    norms = token_norms(cap.hidden_states)                    # (blocks, B, tokens): L2 norm of each token's state
    outliers = high_norm_tokens(norms[2])                     # (B, tokens) bool: patches far above their image's median
    outlier_positions(outliers, cap.geometry.grid_size)       # (K, 3): image, row, column of each outlier
    share = outlier_attention(norms, cap.attentions, block=2) # what the class token in block 4 gives them

Darcet et al. found that large ViTs (DINOv2, OpenCLIP, DeiT-III) repurpose a few background patches in their later
blocks as scratch space for global information: those tokens' norms are many times the others', and the class
token attends to them far more than their share of tokens. Adding a few extra "register" tokens removes them.

The rule for an outlier used here: a patch token whose norm exceeds `factor` times the median patch-token norm of
the same image in the same block. The median, not the mean, because a few huge outliers would drag the mean up and
hide themselves. The class token is never an outlier: it is not a patch, and its norm follows other rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vitlab.errors import VitlabError

DEFAULT_FACTOR = 3.0  # Darcet et al.'s outliers sit near 10x the typical norm; 3x is far outside normal spread


@dataclass(frozen=True)
class OutlierAttention:
    """Where the class token's attention in the block after the outliers' block lands, per head."""

    attention_share: Tensor  # (heads,) mean over images of the class token's attention on the outliers
    token_share: float  # mean over images of outliers / tokens: what uniform attention would give them
    num_outliers: int  # outlier tokens in all images together
    block: int  # 0-based block whose output held the outliers; the attention is block + 1's

    @property
    def enrichment(self) -> Tensor:
        """(heads,) attention share / token share: 1 is what uniform attention gives; NaN when there are none."""
        if self.num_outliers == 0:
            return torch.full_like(self.attention_share, float("nan"))
        return self.attention_share / self.token_share


def token_norms(hidden_states: list[Tensor]) -> Tensor:
    """L2 norm of every token's state, one (B, tokens, hidden) tensor per block -> (blocks, B, tokens)."""
    if len(hidden_states) == 0:
        raise VitlabError("token_norms needs the hidden states of at least one block (cap.hidden_states), got none.")
    shapes = {tuple(state.shape) for state in hidden_states}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise VitlabError(f"token_norms needs one (B, tokens, hidden) tensor per block, all of one shape; got shapes "
                          f"{sorted(shapes)}.")
    return torch.stack(hidden_states).norm(dim=-1)  # (blocks, B, tokens, hidden) -> (blocks, B, tokens)


def high_norm_tokens(norms: Tensor, factor: float = DEFAULT_FACTOR, num_prefix_tokens: int = 1) -> Tensor:
    """Outliers of one block: (B, tokens) norms -> (B, tokens) bool, True where a patch's norm > factor x median.

    The median is over the patch tokens of the same image; prefix tokens (the class token) are never marked.
    """
    if norms.ndim != 2 or norms.shape[0] == 0 or norms.shape[1] <= num_prefix_tokens:
        raise VitlabError(f"high_norm_tokens needs one block's norms (B, tokens) with B >= 1 and at least one patch "
                          f"token after the {num_prefix_tokens} prefix token(s), got shape {tuple(norms.shape)}. "
                          f"Pass token_norms(...)[block].")
    if factor <= 1:
        raise VitlabError(f"factor must be above 1 (a multiple of the median patch norm), got {factor}.")
    patches = norms[:, num_prefix_tokens:]  # (B, patches)
    median = patches.median(dim=1, keepdim=True).values  # (B, 1)
    mask = torch.zeros_like(norms, dtype=torch.bool)
    mask[:, num_prefix_tokens:] = patches > factor * median
    return mask


def outlier_positions(mask: Tensor, grid_size: int, num_prefix_tokens: int = 1) -> Tensor:
    """Where outliers sit: (B, tokens) bool -> (K, 3) long rows of (image, grid row, grid column), row-major order."""
    if mask.ndim != 2 or mask.shape[1] != num_prefix_tokens + grid_size**2:
        raise VitlabError(f"outlier_positions: the mask must be (B, {num_prefix_tokens} + {grid_size}^2 = "
                          f"{num_prefix_tokens + grid_size**2}) for a {grid_size}x{grid_size} grid, got shape "
                          f"{tuple(mask.shape)}.")
    image, token = mask.nonzero(as_tuple=True)  # (K,) each
    patch = token - num_prefix_tokens  # torchvision orders patches row by row
    return torch.stack([image, patch // grid_size, patch % grid_size], dim=1)  # (K, 3)


def outlier_attention(norms: Tensor, attentions: list[Tensor], block: int, factor: float = DEFAULT_FACTOR,
                      ) -> OutlierAttention:
    """The class token's attention in block `block + 1` on the outliers found in block `block`'s output.

    norms (blocks, B, tokens) from `token_norms`; attentions one (B, heads, tokens, tokens) per block
    (`cap.attentions`). Block `block`'s output is block `block + 1`'s input, so that is where the class token can
    read the outliers: `block` runs from 0 to blocks - 2.
    """
    if norms.ndim != 3 or len(attentions) != norms.shape[0]:
        raise VitlabError(f"outlier_attention needs norms (blocks, B, tokens) and one attention map per block; got "
                          f"norms of shape {tuple(norms.shape)} and {len(attentions)} attention maps.")
    last = norms.shape[0] - 2
    if not 0 <= block <= last:
        raise VitlabError(f"block {block} is out of range: the outliers of block b are read by block b + 1's "
                          f"attention, so with {norms.shape[0]} blocks choose 0 to {last} (0-based).")
    mask = high_norm_tokens(norms[block], factor)  # (B, tokens)
    attention = attentions[block + 1]  # (B, heads, tokens, tokens)
    if attention.shape[0] != mask.shape[0] or attention.shape[-1] != mask.shape[1]:
        raise VitlabError(f"outlier_attention: attention of shape {tuple(attention.shape)} does not match norms for "
                          f"{mask.shape[0]} images of {mask.shape[1]} tokens; capture both in one forward pass.")
    from_cls = attention[:, :, 0, :]  # (B, heads, tokens): the class token's query row
    on_outliers = (from_cls * mask[:, None, :]).sum(dim=-1)  # (B, heads)
    return OutlierAttention(attention_share=on_outliers.mean(dim=0), token_share=mask.float().mean().item(),
                            num_outliers=int(mask.sum()), block=block)
