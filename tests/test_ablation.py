"""Head ablation: known answers against hand-built models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vitlab.analysis.ablation import ablate_heads, ablation_table, probability_change
from vitlab.capture_grad import attention_probs
from vitlab.errors import VitlabError
from vitlab.model import build_model


def inputs(demo_model, count: int = 8):
    from vitlab.data import BatchTransform

    model, splits = demo_model
    test = splits.test.take(count)
    return model, BatchTransform(model.image_size, train=False)(test.images), test.labels


class BiasOnly(nn.Module):
    """An attention module that outputs only `out_proj`'s bias: every head removed, by hand."""

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        self.bias = attention.out_proj.bias.detach().clone()

    def forward(self, x, *args, **kwargs):
        return self.bias.expand_as(x).clone(), None


class WithoutHead(nn.Module):
    """Attention with one head's slice of the concatenated head outputs zeroed, written out in plain torch."""

    def __init__(self, attention: nn.MultiheadAttention, head: int) -> None:
        super().__init__()
        self.attention, self.head = attention, head

    def forward(self, x, *args, **kwargs):
        probs, values = attention_probs(self.attention, x)  # (B, H, T, T), (B, H, T, d)
        per_head = probs @ values  # (B, H, T, d)
        per_head[:, self.head] = 0.0
        concat = per_head.transpose(1, 2).flatten(2)  # (B, T, H*d)
        return concat @ self.attention.out_proj.weight.T + self.attention.out_proj.bias, None


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@torch.no_grad()
def test_ablating_every_head_of_a_block_leaves_out_proj_bias(demo_model):
    model, images, _ = inputs(demo_model)
    by_hand = copy.deepcopy(model)
    by_hand.encoder.layers[2].self_attention = BiasOnly(model.encoder.layers[2].self_attention)
    with ablate_heads(model, {2: range(4)}):
        ablated = model(images)
    torch.testing.assert_close(ablated, by_hand(images), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ablated, model(images), atol=1e-3)  # and it did change something
    assert no_hooks(model)


@torch.no_grad()
def test_ablating_one_head_matches_the_slice_zeroed_by_hand(demo_model):
    model, images, _ = inputs(demo_model)
    by_hand = copy.deepcopy(model)
    by_hand.encoder.layers[3].self_attention = WithoutHead(by_hand.encoder.layers[3].self_attention, head=1)
    with ablate_heads(model, {3: [1]}):
        ablated = model(images)
    torch.testing.assert_close(ablated, by_hand(images), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_outside_the_block_the_model_is_bit_identical_also_after_an_error(demo_model):
    model, images, _ = inputs(demo_model)
    before = model(images)
    with ablate_heads(model, {}):
        assert torch.equal(model(images), before)  # ablating no head
    with pytest.raises(RuntimeError, match="inside"), ablate_heads(model, {0: [0]}):
        raise RuntimeError("inside")
    assert no_hooks(model)
    assert torch.equal(model(images), before)


def test_the_table_and_the_probability_change(demo_model):
    model, images, labels = inputs(demo_model, 64)
    table = ablation_table(model, images, labels)
    assert table.drop.shape == (4, 4)
    with ablate_heads(model, {1: [2]}), torch.no_grad():
        accuracy = (model(images).argmax(-1) == labels).float().mean().item()
    assert table.drop[1, 2].item() == pytest.approx(table.accuracy - accuracy)
    with torch.no_grad():
        change = probability_change(model, images[:4], {3: [0, 1, 2, 3]})
    assert change.shape == (4,) and change.abs().max() > 0


@pytest.mark.slow
@torch.no_grad()
def test_random_vit_b_16_block_without_heads(single_thread):
    torch.manual_seed(0)
    model = build_model("vit_b_16", num_classes=10, pretrained=False).eval()
    images = torch.randn(2, 3, 224, 224)
    by_hand = copy.deepcopy(model)
    by_hand.encoder.layers[11].self_attention = BiasOnly(model.encoder.layers[11].self_attention)
    with ablate_heads(model, {11: range(12)}):
        ablated = model(images)
    torch.testing.assert_close(ablated, by_hand(images), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("heads", "message"), [
    ({4: [0]}, "blocks are 0 to 3"), ({0: []}, "empty head set"), ({0: [4]}, "heads are 0 to 3"),
    ({-1: [0]}, "blocks are 0 to 3"),
])
def test_bad_heads_name_the_valid_range(demo_model, heads, message):
    model, _, _ = inputs(demo_model, 1)
    with pytest.raises(VitlabError, match=message), ablate_heads(model, heads):
        pass
    with pytest.raises(VitlabError, match="torchvision VisionTransformer"), ablate_heads(nn.Linear(2, 2), {0: [0]}):
        pass
