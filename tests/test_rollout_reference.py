"""vitlab's rollout against jacobgil/vit-explain's, the rollout most tutorials copy: where the two agree and why not.

`vit_explain_rollout` below re-implements what vit-explain's `vit_rollout.rollout` computes (read at commit 15a81d3),
including its two differences from Abnar & Zuidema's definition, which `vitlab.rollout`'s docstring tells users about:
one global discard threshold over all T*T entries, and a row normalisation without keepdim (its issue #16).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from vitlab.analysis.attention import rollout
from vitlab.capture import capture
from vitlab.model import build_model


def vit_explain_rollout(attentions: list[Tensor], discard_ratio: float, head_fusion: str,
                        keepdim: bool = False) -> Tensor:
    """vit-explain's rollout for one image: attentions (1, heads, T, T) per block -> (patches,), divided by its max.

    Per block: fuse the heads; zero the lowest `discard_ratio` share of all T*T entries at once, sparing only the
    flat index 0 (the class token's attention to itself); (A + I) / 2; divide by the row sums taken without keepdim,
    so the (1, T) sums broadcast along the last axis and entry (i, j) is divided by row j's sum (`keepdim=True`
    gives the intended row normalisation). Then R = A R from the identity; R's class-token row over the patches.
    """
    tokens = attentions[0].shape[-1]
    identity = torch.eye(tokens, dtype=attentions[0].dtype)
    joint = identity
    for attention in attentions:
        fused = {"mean": attention.mean(dim=1), "max": attention.amax(dim=1), "min": attention.amin(dim=1)}[head_fusion]
        flat = fused.reshape(1, -1).clone()  # (1, T*T)
        lowest = flat.topk(int(flat.shape[-1] * discard_ratio), dim=-1, largest=False).indices[0]
        flat[0, lowest[lowest != 0]] = 0.0
        halved = (flat.view(1, tokens, tokens) + identity) / 2  # (1, T, T)
        halved = halved / halved.sum(dim=-1, keepdim=keepdim)  # without keepdim: (1, T, T) / (1, T)
        joint = halved @ joint  # (1, T, T)
    mask = joint[0, 0, 1:]  # (patches,)
    return mask / mask.max()


@pytest.fixture(scope="module")
def attentions() -> list[Tensor]:
    """One image's attentions from the shipped vit_tiny base: (1, 4, 65, 65) per block, float32."""
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=4, pretrained=True).eval()
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), capture(model) as captured:
        model(images)
    return captured.attentions


def by_max(values: Tensor) -> Tensor:
    return values / values.max()


def test_mean_fusion_without_discard_agrees_to_rounding(attentions: list[Tensor]) -> None:
    """Mean-fused rows sum to 1, so (A + I) / 2 does too and the misplaced division divides by ones: up to how
    exactly the rows sum to 1. As captured (float32) that is about 1e-7; with rows renormalised in float64, 1e-16."""
    exact_rows = [(a.double() / a.double().sum(dim=-1, keepdim=True)) for a in attentions]
    for converted, tolerance in ((exact_rows, 1e-12), (attentions, 3e-7)):  # float32: 2 units in the last place
        ours = by_max(rollout(converted, head_fusion="mean", discard_ratio=0.0)[0])  # (patches,)
        theirs = vit_explain_rollout(converted, discard_ratio=0.0, head_fusion="mean")
        assert (ours - theirs).abs().max().item() <= tolerance


@pytest.mark.parametrize(("head_fusion", "discard_ratio"), [("max", 0.0), ("min", 0.0), ("mean", 0.5),
                                                            ("max", 0.9)])
def test_every_other_setting_differs(attentions: list[Tensor], head_fusion: str, discard_ratio: float) -> None:
    ours = by_max(rollout(attentions, head_fusion=head_fusion, discard_ratio=discard_ratio)[0])
    theirs = vit_explain_rollout(attentions, discard_ratio=discard_ratio, head_fusion=head_fusion)
    assert (ours - theirs).abs().max().item() > 0.01


@pytest.mark.parametrize("head_fusion", ["max", "min"])
def test_without_discard_the_missing_keepdim_is_the_whole_difference(attentions: list[Tensor],
                                                                     head_fusion: str) -> None:
    ours = by_max(rollout(attentions, head_fusion=head_fusion, discard_ratio=0.0)[0])
    fixed = vit_explain_rollout(attentions, discard_ratio=0.0, head_fusion=head_fusion, keepdim=True)
    torch.testing.assert_close(ours, fixed, atol=1e-6, rtol=1e-6)
