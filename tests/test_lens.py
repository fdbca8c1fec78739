"""The logit lens: known answers on the demo model and on a random ViT-B/16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitlab.analysis.lens import lens_agreement, logit_lens, logit_lens_forward
from vitlab.capture import capture_forward
from vitlab.errors import VitlabError
from vitlab.model import build_model


def demo_inputs(demo_model, count: int = 6) -> tuple[nn.Module, torch.Tensor]:
    from vitlab.data import BatchTransform

    model, splits = demo_model
    return model, BatchTransform(model.image_size, train=False)(splits.test.images[:count])


def test_the_last_block_is_the_models_own_output(demo_model):
    model, images = demo_inputs(demo_model)
    result = logit_lens_forward(model, images)
    assert result.lens_logits.shape == (4, 6, model.num_classes)  # (blocks, images, classes)
    torch.testing.assert_close(result.lens_logits[-1], result.logits)
    assert result.agreement[-1] == 1.0
    torch.testing.assert_close(result.probabilities.sum(-1), torch.ones(4, 6))


def test_an_early_block_is_read_as_written_out(demo_model):
    """Block 2's class token through the final LayerNorm (written out) and the head's linear layer."""
    model, images = demo_inputs(demo_model)
    _, captured = capture_forward(model, images)
    token = captured.hidden_states[1][:, 0]  # (B, hidden)
    ln = model.encoder.ln
    normed = (token - token.mean(-1, keepdim=True)) / torch.sqrt(token.var(-1, unbiased=False, keepdim=True) + ln.eps)
    expected = (normed * ln.weight + ln.bias) @ model.heads.head.weight.T + model.heads.head.bias
    torch.testing.assert_close(logit_lens(model, captured.hidden_states)[1], expected, rtol=1e-4, atol=1e-5)


def test_agreement_counts_matching_top1():
    final = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # predictions 1, 0, 1, 0
    lens = torch.stack([final, -final, torch.tensor([[0.0, 1.0]] * 4)])  # all agree, none, half
    assert lens_agreement(lens, final).tolist() == [1.0, 0.0, 0.5]


@pytest.mark.slow
def test_random_vit_b_16_batch(single_thread):
    torch.manual_seed(0)
    model = build_model("vit_b_16", num_classes=10, pretrained=False).eval()
    result = logit_lens_forward(model, torch.randn(2, 3, 224, 224))
    assert result.lens_logits.shape == (12, 2, 10)
    torch.testing.assert_close(result.lens_logits[-1], result.logits, rtol=1e-4, atol=1e-5)


def test_bad_input_is_a_clear_error(demo_model):
    model, images = demo_inputs(demo_model, 2)
    with pytest.raises(VitlabError, match="torchvision VisionTransformer"):
        logit_lens(nn.Linear(3, 3), [images])
    with pytest.raises(VitlabError, match="no hidden states"):
        logit_lens(model, [])
    with pytest.raises(VitlabError, match="do not match"):
        lens_agreement(torch.zeros(4, 2, 4), torch.zeros(3, 4))
