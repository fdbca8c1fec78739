"""Tests for vitlab.capture: what it records is right, and the model behaves exactly as if it were not there.

Known answers come from recomputing the model by hand from torchvision's own modules (`_process_input`, each
block's `ln_1` and `self_attention.in_proj_*`), never from vitlab.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import Tensor

from vitlab.capture import Geometry, capture, capture_forward, geometry
from vitlab.model import build_model

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def tiny_model(seed: int = 0, num_classes: int = 10, trainable_blocks: int = 3) -> torchvision.models.VisionTransformer:
    """A random-init vit_tiny in eval mode, with a non-zero class token so token 0 is not special by accident."""
    torch.manual_seed(seed)
    model = build_model("vit_tiny", num_classes=num_classes, pretrained=False, trainable_blocks=trainable_blocks)
    with torch.no_grad():
        model.class_token.normal_(std=0.5)
    return model.eval()


def tiny_images(batch: int, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def block_inputs(model: torchvision.models.VisionTransformer, images: Tensor) -> list[Tensor]:
    """The input of every encoder block, computed by running torchvision's pieces by hand (eval mode)."""
    tokens = model._process_input(images)  # (B, patches, hidden)
    class_token = model.class_token.expand(images.shape[0], -1, -1)
    x = torch.cat([class_token, tokens], dim=1) + model.encoder.pos_embedding  # (B, T, hidden)
    inputs = []
    for block in model.encoder.layers:
        inputs.append(x)
        x = block(x)
    return inputs


def hand_attention(block: torch.nn.Module, x: Tensor) -> Tensor:
    """softmax(Q K^T / sqrt(d)) per head from the block's in_proj weights, written with plain loops over heads."""
    attention = block.self_attention
    hidden, heads = attention.embed_dim, attention.num_heads
    d = hidden // heads
    normed = block.ln_1(x)  # (B, T, hidden)
    w, b = attention.in_proj_weight, attention.in_proj_bias
    q = normed @ w[:hidden].T + b[:hidden]
    k = normed @ w[hidden : 2 * hidden].T + b[hidden : 2 * hidden]
    per_head = []
    for h in range(heads):
        qh, kh = q[..., h * d : (h + 1) * d], k[..., h * d : (h + 1) * d]  # (B, T, d)
        scores = qh @ kh.transpose(1, 2) / math.sqrt(d)  # (B, T, T)
        per_head.append(torch.softmax(scores, dim=-1))
    return torch.stack(per_head, dim=1)  # (B, heads, T, T)


def all_hooks_empty(model: torch.nn.Module) -> bool:
    return all(
        not module._forward_hooks
        and not module._forward_pre_hooks
        and not getattr(module, "_forward_hooks_with_kwargs", {})
        and not getattr(module, "_forward_pre_hooks_with_kwargs", {})
        for module in model.modules()
    )


# ---------------------------------------------------------------------------------------------------------------
# Outputs unchanged
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grad_enabled", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("trainable_blocks", [0, 3, 4])
def test_outputs_bit_identical_in_eval_mode(grad_enabled: bool, trainable_blocks: int):
    model = tiny_model(trainable_blocks=trainable_blocks)
    images = tiny_images(2)

    with torch.set_grad_enabled(grad_enabled):
        reference = model(images)
        with capture(model) as cap:
            captured = model(images)
        after = model(images)

    assert torch.equal(captured, reference)
    assert torch.equal(after, reference)
    assert len(cap.attentions) == len(model.encoder.layers) == 4
    assert len(cap.hidden_states) == 4


def test_capture_forward_matches_capture():
    model = tiny_model()
    images = tiny_images(2)
    with torch.no_grad():
        reference = model(images)
        logits, cap = capture_forward(model, images)
    assert torch.equal(logits, reference)
    assert len(cap.attentions) == 4
    assert all_hooks_empty(model)


# ---------------------------------------------------------------------------------------------------------------
# What is recorded: known answers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grad_enabled", [False, True], ids=["no_grad", "grad"])
def test_attention_equals_hand_computed_softmax(grad_enabled: bool):
    model = tiny_model()
    images = tiny_images(2)

    with torch.set_grad_enabled(grad_enabled), capture(model) as cap:
        model(images)
    with torch.no_grad():
        inputs = block_inputs(model, images)
        expected = [hand_attention(block, x) for block, x in zip(model.encoder.layers, inputs, strict=True)]

    for index, (got, want) in enumerate(zip(cap.attentions, expected, strict=True)):
        assert got.shape == (2, 4, 65, 65), index
        torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=0, msg=f"block {index}")
        torch.testing.assert_close(got.detach().sum(-1), torch.ones(2, 4, 65), atol=1e-5, rtol=0)
        assert (got >= 0).all()
    # Heads really differ (the reshape into heads is not a copy of one head).
    assert not torch.allclose(cap.attentions[0][:, 0], cap.attentions[0][:, 1], atol=1e-3)


def test_patch_embeddings_equal_process_input():
    model = tiny_model()
    images = tiny_images(3)
    with torch.no_grad(), capture(model) as cap:
        model(images)
        expected = model._process_input(images)  # (B, 64, 64), torchvision's reshape + permute
    assert cap.patch_embeddings.shape == (3, 64, 64)
    assert torch.equal(cap.patch_embeddings, expected)


def test_hidden_states_are_block_outputs_and_reproduce_the_logits():
    model = tiny_model()
    images = tiny_images(2)
    with torch.no_grad(), capture(model) as cap:
        logits = model(images)
    with torch.no_grad():
        inputs = block_inputs(model, images)
        outputs = [block(x) for block, x in zip(model.encoder.layers, inputs, strict=True)]
        from_last = model.heads(model.encoder.ln(cap.hidden_states[-1])[:, 0])

    for index, (got, want) in enumerate(zip(cap.hidden_states, outputs, strict=True)):
        assert got.shape == (2, 65, 64)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=f"block {index}")
    torch.testing.assert_close(from_last, logits, atol=1e-6, rtol=0)


def test_last_of_several_forwards_is_kept():
    model = tiny_model()
    first, second = tiny_images(1, seed=10), tiny_images(1, seed=11)
    with torch.no_grad():
        with capture(model) as cap_second:
            model(second)
        with capture(model) as cap_both:
            model(first)
            model(second)
    for a, b in zip(cap_both.attentions, cap_second.attentions, strict=True):
        assert torch.equal(a, b)


def test_batched_attention_equals_one_image_at_a_time():
    model = tiny_model()
    images = tiny_images(3)
    with torch.no_grad(), capture(model) as cap:
        model(images)
    batched = [a.clone() for a in cap.attentions]
    hidden = [h.clone() for h in cap.hidden_states]
    for item in range(3):
        with torch.no_grad(), capture(model) as single:
            model(images[item : item + 1])
        for layer in range(4):
            torch.testing.assert_close(batched[layer][item : item + 1], single.attentions[layer], atol=1e-5, rtol=0)
            torch.testing.assert_close(hidden[layer][item : item + 1], single.hidden_states[layer], atol=1e-5, rtol=0)
    # The items differ, so the comparison above is not trivially true.
    assert not torch.allclose(batched[0][0], batched[0][1], atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Hooks come off
# ---------------------------------------------------------------------------------------------------------------


def test_hooks_removed_after_the_block():
    model = tiny_model()
    assert all_hooks_empty(model)
    with torch.no_grad(), capture(model):
        assert not all_hooks_empty(model)  # the check below can fail
        model(tiny_images(1))
    assert all_hooks_empty(model)


def test_hooks_removed_when_the_forward_raises_early():
    model = tiny_model()
    images = tiny_images(2)
    with torch.no_grad():
        reference = model(images)
        with pytest.raises(Exception, match="Wrong image height"), capture(model):
            model(torch.randn(1, 3, 40, 40))  # wrong size: torchvision refuses it
    assert all_hooks_empty(model)
    with torch.no_grad():
        assert torch.equal(model(images), reference)


def test_hooks_removed_when_the_forward_raises_mid_model(monkeypatch: pytest.MonkeyPatch):
    model = tiny_model()
    images = tiny_images(2)
    with torch.no_grad():
        reference = model(images)

    def broken_mlp(*args, **kwargs):
        raise ValueError("block 2 exploded")

    with monkeypatch.context() as patch:
        patch.setattr(model.encoder.layers[2].mlp, "forward", broken_mlp)
        with pytest.raises(ValueError, match="block 2 exploded"), torch.no_grad(), capture(model) as cap:
            model(images)  # blocks 0 and 1 and block 2's attention have been hooked and run
    assert cap._attentions[0] is not None  # the hooks did fire before the error
    assert all_hooks_empty(model)
    with torch.no_grad():
        assert torch.equal(model(images), reference)


def test_hooks_removed_when_the_with_body_raises_after_the_forward():
    model = tiny_model()
    with pytest.raises(KeyError), torch.no_grad(), capture(model):
        model(tiny_images(1))
        raise KeyError("user code failed")
    assert all_hooks_empty(model)


# ---------------------------------------------------------------------------------------------------------------
# Clear errors when nothing (or too little) was recorded
# ---------------------------------------------------------------------------------------------------------------


def test_reading_before_any_forward_raises():
    model = tiny_model()
    with capture(model) as cap:
        pass
    with pytest.raises(RuntimeError, match="0 of 4 encoder blocks"):
        _ = cap.attentions
    with pytest.raises(RuntimeError, match="0 of 4 encoder blocks"):
        _ = cap.hidden_states
    with pytest.raises(RuntimeError, match="patch embeddings"):
        _ = cap.patch_embeddings


def test_forward_on_a_copy_is_not_recorded():
    model = tiny_model()
    twin = copy.deepcopy(model)
    with torch.no_grad(), capture(model) as cap:
        twin(tiny_images(1))
    with pytest.raises(RuntimeError, match="0 of 4 encoder blocks"):
        _ = cap.attentions
    assert all_hooks_empty(twin)


def test_partial_forward_reports_how_many_blocks_ran():
    model = tiny_model()
    with torch.no_grad(), capture(model) as cap:
        x = torch.cat([model.class_token, model._process_input(tiny_images(1))], dim=1)
        model.encoder.layers[0](x + model.encoder.pos_embedding)  # one block only
    with pytest.raises(RuntimeError, match="1 of 4 encoder blocks"):
        _ = cap.attentions


# ---------------------------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------------------------


def test_gradients_flow_to_every_recorded_attention_when_everything_trains():
    model = tiny_model(trainable_blocks=4)
    with capture(model) as cap:
        logits = model(tiny_images(2))
    gradients = torch.autograd.grad(logits[:, 3].sum(), cap.attentions)
    for index, gradient in enumerate(gradients):
        assert gradient.shape == (2, 4, 65, 65)
        assert gradient.abs().sum() > 0, f"block {index}"


def test_gradients_flow_to_every_recorded_attention_in_a_fine_tuning_model():
    """The default fine-tuning setup (lower blocks frozen, a plain input image): every attention is differentiable.

    A frozen block takes PyTorch's fast path with no graph behind it, but its attention still decides the logits,
    and class-specific maps need d logit / d attention for every block.
    """
    model = tiny_model(trainable_blocks=3)  # block 0 frozen, as build_model's default freezes the lower blocks
    with capture(model) as cap:
        logits = model(tiny_images(2))
    detached = [index for index, a in enumerate(cap.attentions) if not a.requires_grad]
    assert detached == [], f"recorded attentions of blocks {detached} are not in the autograd graph"
    gradients = torch.autograd.grad(logits[:, 3].sum(), cap.attentions)
    for index, gradient in enumerate(gradients):
        assert gradient.abs().sum() > 0, f"block {index}"


def test_gradients_flow_to_frozen_blocks_when_the_input_requires_grad():
    model = tiny_model(trainable_blocks=0)
    images = tiny_images(2).requires_grad_(True)
    with capture(model) as cap:
        logits = model(images)
    gradients = torch.autograd.grad(logits[:, 1].sum(), cap.attentions)
    assert all(g.abs().sum() > 0 for g in gradients)


@pytest.mark.parametrize("trainable_blocks", [0, 4])
def test_capture_does_not_change_gradients(trainable_blocks: int):
    model = tiny_model(trainable_blocks=trainable_blocks)
    images = tiny_images(2)

    def gradients(use_capture: bool) -> tuple[Tensor, Tensor | None]:
        model.zero_grad(set_to_none=True)
        x = images.clone().requires_grad_(True)
        if use_capture:
            with capture(model):
                logits = model(x)
        else:
            logits = model(x)
        logits[:, 2].sum().backward()
        weight = model.encoder.layers[1].self_attention.in_proj_weight
        return x.grad, (None if weight.grad is None else weight.grad.clone())

    plain_image, plain_weight = gradients(False)
    captured_image, captured_weight = gradients(True)
    assert plain_image.abs().sum() > 0
    torch.testing.assert_close(captured_image, plain_image, atol=1e-5, rtol=1e-4)
    if trainable_blocks:
        torch.testing.assert_close(captured_weight, plain_weight, atol=1e-5, rtol=1e-4)
    else:
        assert captured_weight is None and plain_weight is None


def test_attention_gradient_matches_finite_differences():
    """d logit / d A for the last block: autograd through capture vs central differences of a hand-written tail."""
    model = tiny_model(trainable_blocks=4).double()
    images = tiny_images(1).double()
    target = 5
    with capture(model) as cap:
        logits = model(images)
    last_input = cap.hidden_states[-2].detach()  # input of the last block, (1, T, hidden)
    attention = cap.attentions[-1]
    (gradient,) = torch.autograd.grad(logits[0, target], attention)

    block = model.encoder.layers[-1]
    mha = block.self_attention
    hidden, heads = mha.embed_dim, mha.num_heads

    def logit_from_attention(probs: Tensor) -> Tensor:
        """The rest of the forward pass as a function of the last block's attention probabilities."""
        normed = block.ln_1(last_input)
        values = normed @ mha.in_proj_weight[2 * hidden :].T + mha.in_proj_bias[2 * hidden :]  # (1, T, hidden)
        values = values.view(1, -1, heads, hidden // heads).transpose(1, 2)  # (1, heads, T, d)
        mixed = (probs @ values).transpose(1, 2).reshape(1, -1, hidden)  # (1, T, hidden)
        x = mha.out_proj(mixed) + last_input
        x = x + block.mlp(block.ln_2(x))
        return model.heads(model.encoder.ln(x)[:, 0])[0, target]

    with torch.no_grad():
        probs = attention.detach()
        assert torch.allclose(logit_from_attention(probs), logits[0, target].detach(), atol=1e-10)
        direction = torch.randn(probs.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        eps = 1e-6
        numeric = (logit_from_attention(probs + eps * direction) - logit_from_attention(probs - eps * direction)) / (
            2 * eps
        )
    analytic = (gradient * direction).sum()
    assert analytic.abs() > 1e-6
    torch.testing.assert_close(analytic, numeric, atol=1e-7, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------


def test_geometry_of_a_non_square_grid_model():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=48, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ).eval()
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        reference = model(images)
        with capture(model) as cap:
            logits = model(images)

    g = cap.geometry
    assert (g.image_size, g.patch_size, g.grid_size, g.num_prefix_tokens, g.num_patches, g.num_tokens) == (
        48,
        8,
        6,
        1,
        36,
        37,
    )
    assert torch.equal(logits, reference)
    assert [a.shape for a in cap.attentions] == [(2, 2, 37, 37)] * 2
    assert cap.patch_embeddings.shape == (2, 36, 32)
    assert [h.shape for h in cap.hidden_states] == [(2, 37, 32)] * 2


def test_geometry_values():
    g = Geometry(image_size=224, patch_size=16)
    assert (g.grid_size, g.num_prefix_tokens, g.num_patches, g.num_tokens) == (14, 1, 196, 197)
    g = Geometry(image_size=32, patch_size=4)
    assert (g.grid_size, g.num_patches, g.num_tokens) == (8, 64, 65)


def test_geometry_refuses_other_models():
    with pytest.raises(TypeError, match="VisionTransformer"):
        geometry(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError), capture(torch.nn.Linear(3, 3)):
        pass


def test_vit_b_16_capture_at_batch_one():
    torch.manual_seed(0)
    model = build_model("vit_b_16", 100, pretrained=False).eval()
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(images)
        with capture(model) as cap:
            logits = model(images)

    assert torch.equal(logits, reference)
    assert (cap.geometry.grid_size, cap.geometry.num_patches, cap.geometry.num_tokens) == (14, 196, 197)
    assert len(cap.attentions) == 12
    assert all(a.shape == (1, 12, 197, 197) for a in cap.attentions)
    torch.testing.assert_close(cap.attentions[5].sum(-1), torch.ones(1, 12, 197), atol=1e-5, rtol=0)
    assert cap.patch_embeddings.shape == (1, 196, 768)
    assert all_hooks_empty(model)
