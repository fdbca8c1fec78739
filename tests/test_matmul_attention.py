"""Tests for vitlab.matmul_attention: self-attention as plain matrix products, swapped in and out of a model.

Known answers: PyTorch's own `nn.MultiheadAttention` on the same weights (float32, so only rounding differs), and its
own forward for every case the plain products do not cover. Then the swap's promises: the same module objects (hooks
still fire), every class back on exit also after an error, and `borrowed` swapping only under a CPU's autocast.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from vitlab.analysis.explain import borrowed
from vitlab.matmul_attention import MatmulAttention, matmul_attention
from vitlab.model import build_model

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def attention_pair(batch_first: bool = True) -> tuple[nn.MultiheadAttention, MatmulAttention]:
    """A trained-looking attention (random weights and biases) and a `MatmulAttention` with the same weights."""
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.3)  # torchvision's zero biases would hide a bias left out
    plain = MatmulAttention(32, 4, batch_first=batch_first).eval()
    plain.load_state_dict(reference.state_dict())
    return reference, plain


def tokens(seed: int = 1) -> Tensor:
    return torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(seed))  # (B, T, hidden)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad (fast path)", "autograd"])
@pytest.mark.parametrize(("need_weights", "average"), [(False, True), (True, True), (True, False)])
def test_plain_products_equal_pytorchs_attention(grad: bool, need_weights: bool, average: bool) -> None:
    reference, plain = attention_pair()
    x = tokens()
    with torch.set_grad_enabled(grad):
        expected = reference(x, x, x, need_weights=need_weights, average_attn_weights=average)
        got = plain(x, x, x, need_weights=need_weights, average_attn_weights=average)
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    if need_weights:
        assert got[1].shape == expected[1].shape == ((3, 7, 7) if average else (3, 4, 7, 7))
        torch.testing.assert_close(got[1], expected[1], atol=1e-6, rtol=1e-5)
    else:
        assert got[1] is None and expected[1] is None


def test_gradients_through_the_plain_products_equal_pytorchs() -> None:
    reference, plain = attention_pair()
    x = tokens().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference(x, x, x, need_weights=False)[0].square().sum(), x)
    (got,) = torch.autograd.grad(plain(x, x, x, need_weights=False)[0].square().sum(), x)
    torch.testing.assert_close(got, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-4)


def test_what_the_plain_products_do_not_cover_goes_to_pytorchs_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    reference, plain = attention_pair()
    x, other = tokens(), tokens(seed=2)  # other: keys and values from elsewhere (cross-attention)
    mask = torch.zeros(7, 7, dtype=torch.bool).triu(1)
    cases = [((x, other, other), {}), ((x, x, x), {"attn_mask": mask}),
             ((x, x, x), {"key_padding_mask": torch.zeros(3, 7, dtype=torch.bool)})]
    for args, kwargs in cases:
        assert torch.equal(plain(*args, **kwargs)[0], reference(*args, **kwargs)[0])
    sequence_first = attention_pair(batch_first=False)
    y = x.transpose(0, 1)  # (T, B, hidden)
    assert torch.equal(sequence_first[1](y, y, y)[0], sequence_first[0](y, y, y)[0])
    torch.manual_seed(0)
    with_bias_kv = MatmulAttention(32, 4, batch_first=True, add_bias_kv=True).eval()  # keys get one more token
    reference = nn.MultiheadAttention(32, 4, batch_first=True, add_bias_kv=True).eval()
    reference.load_state_dict(with_bias_kv.state_dict())
    assert torch.equal(with_bias_kv(x, x, x)[0], reference(x, x, x)[0])
    monkeypatch.setattr("vitlab.matmul_attention.attention_probs", None)  # the plain path would now fail
    for args, kwargs in cases:
        plain(*args, **kwargs)


def test_the_swap_keeps_the_modules_and_their_hooks_and_restores_every_class() -> None:
    model = build_model("vit_tiny", num_classes=5, pretrained=False).eval()
    attentions = [block.self_attention for block in model.encoder.layers]
    calls = []
    attentions[0].register_forward_hook(lambda *_: calls.append("hook"))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
        with matmul_attention(model):
            assert [block.self_attention for block in model.encoder.layers] == attentions
            assert all(type(attention) is MatmulAttention for attention in attentions)
            got = model(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert calls == ["hook", "hook"]
    assert all(type(attention) is nn.MultiheadAttention for attention in attentions)
    with pytest.raises(RuntimeError, match="inside"), matmul_attention(model):
        raise RuntimeError("inside")
    assert all(type(attention) is nn.MultiheadAttention for attention in attentions)


@pytest.mark.parametrize(("autocast", "swapped"), [(False, False), (True, True)], ids=["float32", "bfloat16"])
def test_borrowed_swaps_only_under_a_cpus_autocast(autocast: bool, swapped: bool) -> None:
    model = build_model("vit_tiny", num_classes=5, pretrained=False)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), borrowed(model):
        inside = {type(block.self_attention) for block in model.encoder.layers}
    assert inside == ({MatmulAttention} if swapped else {nn.MultiheadAttention})
    assert {type(block.self_attention) for block in model.encoder.layers} == {nn.MultiheadAttention}
