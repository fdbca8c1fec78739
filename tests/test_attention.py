"""Tests for vitlab.analysis.attention: every analysis against a known answer or an independent, loop-by-loop
reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.analysis.attention import (
    cls_attention,
    fuse_heads,
    gradient_weighted_attention,
    mean_attention_distance,
    query_attention,
    rollout,
)
from vitlab.analysis.localization import attention_mass_ratio, patch_coverage, pointing_game
from vitlab.analysis.structure import patch_filter_components, position_embedding_similarity
from vitlab.capture import Geometry, capture
from vitlab.model import build_model

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def tiny_model(seed: int = 0, num_classes: int = 10):
    torch.manual_seed(seed)
    model = build_model("vit_tiny", num_classes=num_classes, pretrained=False)
    with torch.no_grad():
        model.class_token.normal_(std=0.5)
    return model.eval()


def tiny_images(batch: int, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def random_attentions(layers: int, batch: int, heads: int, tokens: int, seed: int) -> list[Tensor]:
    """Softmax rows of random scores, float64: a stand-in for a captured model."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (3 * torch.randn(batch, heads, tokens, tokens, generator=gen, dtype=torch.float64)).softmax(-1)
        for _ in range(layers)
    ]


def brute_force_distance(weights: list[list[float]], grid: int, patch_size: int) -> float:
    """Mean over query patches of sum_k w[q][k] * |centre(q) - centre(k)| in pixels, with plain Python loops."""
    total = 0.0
    for q in range(grid * grid):
        row_sum = sum(weights[q])
        for k in range(grid * grid):
            dy, dx = q // grid - k // grid, q % grid - k % grid
            total += weights[q][k] / row_sum * math.hypot(dy, dx) * patch_size
    return total / (grid * grid)


def reference_rollout(attentions: list[Tensor], head_fusion: str, discard_ratio: float) -> Tensor:
    """Abnar & Zuidema rollout, one batch item and one row at a time. Returns the full (B, T, T) joint matrix."""
    batch, heads, tokens, _ = attentions[0].shape
    joints = []
    for b in range(batch):
        joint = torch.eye(tokens, dtype=torch.float64)
        for attention in attentions:
            layer = torch.zeros(tokens, tokens, dtype=torch.float64)
            for i in range(tokens):
                row = [0.0] * tokens
                for j in range(tokens):
                    values = [float(attention[b, h, i, j]) for h in range(heads)]
                    row[j] = {"mean": sum(values) / heads, "max": max(values), "min": min(values)}[head_fusion]
                patch_columns = sorted(range(1, tokens), key=lambda j, row=row: row[j])  # lowest first, not column 0
                for j in patch_columns[: int((tokens - 1) * discard_ratio)]:
                    row[j] = 0.0
                row[i] += 1.0  # identity: the residual connection
                total = sum(row)
                layer[i] = torch.tensor([v / total for v in row], dtype=torch.float64)
            joint = layer @ joint  # the later layer on the left
        joints.append(joint)
    return torch.stack(joints)


def zero_query_key_model():
    """vit_tiny whose queries and keys are all zero: every score is 0, so every attention row is exactly uniform."""
    model = tiny_model()
    hidden = model.hidden_dim
    with torch.no_grad():
        for block in model.encoder.layers:
            block.self_attention.in_proj_weight[: 2 * hidden] = 0
            block.self_attention.in_proj_bias[: 2 * hidden] = 0
    return model


# ---------------------------------------------------------------------------------------------------------------
# Uniform and identity attention: closed-form answers
# ---------------------------------------------------------------------------------------------------------------


def test_zero_queries_and_keys_give_uniform_attention_rollout_and_distance():
    model = zero_query_key_model()
    with torch.no_grad(), capture(model) as cap:
        model(tiny_images(2))
    attentions = cap.attentions
    for attention in attentions:
        torch.testing.assert_close(attention, torch.full_like(attention, 1 / 65), atol=1e-7, rtol=0)

    # Rollout of uniform U over L layers: ((U + I) / 2)^L = (I + (2^L - 1) U) / 2^L, since U @ U = U.
    # The class token's row over the 64 patches is therefore (2^L - 1) / (2^L * 65) everywhere.
    maps = rollout(attentions)
    assert maps.shape == (2, 64)
    torch.testing.assert_close(maps, torch.full((2, 64), 15 / (16 * 65)), atol=1e-6, rtol=0)

    distance = mean_attention_distance(attentions, patch_size=4)
    assert distance.shape == (4, 4)
    uniform = brute_force_distance([[1.0] * 64 for _ in range(64)], grid=8, patch_size=4)
    torch.testing.assert_close(distance, torch.full((4, 4), uniform), atol=1e-4, rtol=0)


def test_uniform_attention_distance_on_vit_b_16_grid_is_116_5_px():
    uniform = torch.full((1, 12, 197, 197), 1 / 197)
    distance = mean_attention_distance([uniform, uniform], patch_size=16)
    assert distance.shape == (2, 12)
    expected = brute_force_distance([[1.0] * 196 for _ in range(196)], grid=14, patch_size=16)
    assert expected == pytest.approx(116.5, abs=0.1)
    torch.testing.assert_close(distance, torch.full((2, 12), expected), atol=1e-3, rtol=0)


def test_identity_attention_has_distance_zero():
    identity = torch.eye(197).expand(2, 12, 197, 197)
    distance = mean_attention_distance([identity], patch_size=16)
    assert distance.shape == (1, 12)
    assert torch.equal(distance, torch.zeros(1, 12))


def test_attention_distance_renormalises_over_patches_and_separates_heads():
    """Head 0: half of each query's weight on the class token, half on patch (0, 0). Head 1: on itself."""
    grid, patch_size, tokens = 5, 7, 26
    attention = torch.zeros(3, 2, tokens, tokens, dtype=torch.float64)
    attention[:, 0, :, 0] = 0.5
    attention[:, 0, :, 1] = 0.5
    attention[:, 1] = torch.eye(tokens, dtype=torch.float64)
    distance = mean_attention_distance([attention], patch_size=patch_size)

    to_corner = [[1.0 if k == 0 else 0.0 for k in range(grid * grid)] for _ in range(grid * grid)]
    expected = brute_force_distance(to_corner, grid=grid, patch_size=patch_size)
    torch.testing.assert_close(distance, torch.tensor([[expected, 0.0]], dtype=torch.float64), atol=1e-6, rtol=0)


def test_attention_distance_of_random_attention_matches_brute_force():
    attention = random_attentions(layers=1, batch=2, heads=3, tokens=10, seed=2)[0]  # a 3x3 grid
    distance = mean_attention_distance([attention], patch_size=5)
    for head in range(3):
        expected = (
            sum(brute_force_distance(attention[b, head, 1:, 1:].tolist(), grid=3, patch_size=5) for b in range(2)) / 2
        )
        assert float(distance[0, head]) == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Rollout against a loop-by-loop reference
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("discard_ratio", [0.0, 0.5])
@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
def test_rollout_matches_reference(head_fusion: str, discard_ratio: float):
    attentions = random_attentions(layers=3, batch=3, heads=4, tokens=17, seed=3)  # 4x4 grid
    got = rollout(attentions, head_fusion=head_fusion, discard_ratio=discard_ratio)
    expected = reference_rollout(attentions, head_fusion, discard_ratio)
    assert got.shape == (3, 16)
    torch.testing.assert_close(got, expected[:, 0, 1:], atol=1e-10, rtol=0)


def test_rollout_discarding_changes_the_answer_and_applies_to_every_batch_item():
    attentions = random_attentions(layers=3, batch=2, heads=4, tokens=17, seed=4)
    kept = rollout(attentions, discard_ratio=0.0)
    discarded = rollout(attentions, discard_ratio=0.5)
    for item in range(2):
        assert not torch.allclose(kept[item], discarded[item], atol=1e-4), f"item {item} ignored discarding"
        # Item by item, alone, gives the same answer as in the batch.
        alone = rollout([a[item : item + 1] for a in attentions], discard_ratio=0.5)
        torch.testing.assert_close(discarded[item : item + 1], alone, atol=1e-12, rtol=0)


def test_rollout_batch_items_are_independent():
    """Item 1 is item 0 with its heads and patch keys shuffled: their rollouts must differ, each as if alone."""
    a0 = random_attentions(layers=2, batch=1, heads=3, tokens=10, seed=5)
    a1 = random_attentions(layers=2, batch=1, heads=3, tokens=10, seed=6)
    batch = [torch.cat([x, y]) for x, y in zip(a0, a1, strict=True)]
    together = rollout(batch, head_fusion="max", discard_ratio=0.5)
    torch.testing.assert_close(together[0:1], rollout(a0, head_fusion="max", discard_ratio=0.5), atol=1e-12, rtol=0)
    torch.testing.assert_close(together[1:2], rollout(a1, head_fusion="max", discard_ratio=0.5), atol=1e-12, rtol=0)


@pytest.mark.parametrize("discard_ratio", [0.0, 0.5])
def test_rollout_rows_sum_to_one(discard_ratio: float):
    attentions = random_attentions(layers=4, batch=3, heads=2, tokens=10, seed=7)
    # With no prefix tokens declared, rollout returns the class token's full row, class-token column included.
    full_row = rollout(attentions, head_fusion="max", discard_ratio=discard_ratio, num_prefix_tokens=0)
    assert full_row.shape == (3, 10)
    torch.testing.assert_close(full_row.sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    # And the usual output is that row without the class token column (for discard 0 the two agree exactly).
    if discard_ratio == 0.0:
        torch.testing.assert_close(rollout(attentions, head_fusion="max"), full_row[:, 1:], atol=1e-12, rtol=0)
    reference = reference_rollout(attentions, "max", discard_ratio)
    torch.testing.assert_close(reference.sum(-1), torch.ones(3, 10, dtype=torch.float64), atol=1e-12, rtol=0)


def test_rollout_of_one_layer_by_hand():
    """One layer, one head, T = 3: the class token's row of (A + I) normalised."""
    attention = torch.tensor([[[[0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]]]], dtype=torch.float64)
    got = rollout([attention])
    torch.testing.assert_close(got, torch.tensor([[0.3 / 2, 0.5 / 2]], dtype=torch.float64), atol=1e-12, rtol=0)
    # Discarding half of the two patch weights drops the lowest one (0.3), never the class token's 0.2.
    got = rollout([attention], discard_ratio=0.5)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.5 / 1.7]], dtype=torch.float64), atol=1e-12, rtol=0)


def test_rollout_and_fusion_reject_bad_arguments():
    attentions = random_attentions(layers=1, batch=1, heads=2, tokens=5, seed=8)
    for ratio in (-0.1, 1.0):
        with pytest.raises(ValueError, match="discard_ratio"):
            rollout(attentions, discard_ratio=ratio)
    with pytest.raises(ValueError, match="head_fusion"):
        fuse_heads(attentions[0], "median")


# ---------------------------------------------------------------------------------------------------------------
# Picking rows
# ---------------------------------------------------------------------------------------------------------------


def test_cls_and_query_attention_pick_the_row_and_reshape_row_major():
    geometry = Geometry(image_size=12, patch_size=4)  # 3x3 grid, 10 tokens
    attention = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)

    cls_map = cls_attention(attention, geometry)
    assert cls_map.shape == (2, 3, 3, 3)
    for b in range(2):
        for h in range(3):
            for r in range(3):
                for c in range(3):
                    assert cls_map[b, h, r, c] == attention[b, h, 0, 1 + 3 * r + c]

    query = 1 + 3 * 2 + 1  # patch (2, 1)
    query_map = query_attention(attention, geometry, query_token=query)
    assert query_map.shape == (2, 3, 3, 3)
    assert query_map[1, 2, 0, 2] == attention[1, 2, query, 1 + 2]
    assert query_map[0, 1, 2, 0] == attention[0, 1, query, 1 + 6]
    assert torch.equal(query_map.flatten(2), attention[:, :, query, 1:])


# ---------------------------------------------------------------------------------------------------------------
# Position embeddings and patch filters
# ---------------------------------------------------------------------------------------------------------------


def test_position_embedding_similarity_of_a_random_model():
    model = tiny_model()
    similarity = position_embedding_similarity(model)
    assert similarity.shape == (8, 8, 8, 8)
    for r in range(8):
        for c in range(8):
            assert float(similarity[r, c, r, c]) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(similarity, similarity.permute(2, 3, 0, 1), atol=1e-6, rtol=0)
    embeddings = model.encoder.pos_embedding[0].detach()
    for (r, c), (r2, c2) in [((0, 0), (7, 7)), ((1, 2), (3, 4)), ((5, 0), (0, 5))]:
        expected = F.cosine_similarity(embeddings[1 + 8 * r + c], embeddings[1 + 8 * r2 + c2], dim=0)
        assert float(similarity[r, c, r2, c2]) == pytest.approx(float(expected), abs=1e-6)


def test_position_embedding_similarity_known_patterns():
    model = tiny_model()
    with torch.no_grad():
        model.encoder.pos_embedding[0, 0] = 100.0  # the class token: must be left out
        model.encoder.pos_embedding[0, 1:] = torch.linspace(0.5, 2.0, 64)  # identical directions
    assert torch.allclose(position_embedding_similarity(model), torch.ones(8, 8, 8, 8), atol=1e-6)

    with torch.no_grad():
        model.encoder.pos_embedding[0, 1:] = torch.eye(64)  # orthogonal: similar only to itself
    assert torch.allclose(position_embedding_similarity(model), torch.eye(64).view(8, 8, 8, 8), atol=1e-6)

    with torch.no_grad():  # the embedding depends on the row only: same row => similarity 1, else 0
        rows = torch.arange(64) // 8
        model.encoder.pos_embedding[0, 1:] = F.one_hot(rows, 64).float()
    similarity = position_embedding_similarity(model)
    expected = (torch.arange(8)[:, None, None, None] == torch.arange(8)[None, None, :, None]).float()
    assert torch.allclose(similarity, expected.expand(8, 8, 8, 8), atol=1e-6)


def scaled(pattern: Tensor) -> Tensor:
    return (pattern - pattern.min()) / (pattern.max() - pattern.min())


def assert_same_up_to_sign(component: Tensor, pattern: Tensor) -> None:
    target = scaled(pattern)
    assert torch.allclose(component, target, atol=1e-4) or torch.allclose(component, 1 - target, atol=1e-4)


def test_patch_filter_components_of_rank_one_filters():
    model = tiny_model()
    pattern = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(9))
    amounts = torch.randn(64, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        model.conv_proj.weight.copy_(amounts[:, None, None, None] * pattern)  # (64, 3, 4, 4), all one pattern

    components, explained = patch_filter_components(model, num_components=5)
    assert components.shape == (5, 3, 4, 4)
    assert explained.shape == (5,)
    assert float(explained[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(components[0].min()) == 0.0 and float(components[0].max()) == pytest.approx(1.0)
    assert_same_up_to_sign(components[0], pattern)


def test_patch_filter_components_of_two_orthogonal_patterns():
    """Filters a_d P1 + b_d P2, with |a|^2 = 9 |b|^2: components P1, P2, explaining 90% and 10%."""
    model = tiny_model()
    basis, _ = torch.linalg.qr(torch.randn(48, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64))
    p1, p2 = basis[:, 0].float().view(3, 4, 4), basis[:, 1].float().view(3, 4, 4)
    a = 3.0 * torch.tensor([1.0, -1.0] * 32)  # zero mean
    b = torch.tensor([1.0, 1.0, -1.0, -1.0] * 16)  # zero mean, orthogonal to a
    with torch.no_grad():
        model.conv_proj.weight.copy_(a[:, None, None, None] * p1 + b[:, None, None, None] * p2 + 0.7)

    components, explained = patch_filter_components(model, num_components=3)
    torch.testing.assert_close(explained[:2], torch.tensor([0.9, 0.1]), atol=1e-5, rtol=0)
    assert float(explained[2]) == pytest.approx(0.0, abs=1e-6)
    assert_same_up_to_sign(components[0], p1)
    assert_same_up_to_sign(components[1], p2)


# ---------------------------------------------------------------------------------------------------------------
# Gradient-weighted attention (Chefer et al. 2021)
# ---------------------------------------------------------------------------------------------------------------


def reference_relevance(model, images: Tensor, target: Tensor, clamp: bool = True) -> Tensor:
    """R = I; R += mean_heads((dA * A)^+) @ R per block; class token row over patches. One item at a time."""
    rows = []
    for item in range(images.shape[0]):
        x = images[item : item + 1].clone().requires_grad_(True)
        with capture(model) as cap:
            logits = model(x)
        gradients = torch.autograd.grad(logits[0, int(target[item])], cap.attentions)
        tokens = cap.attentions[0].shape[-1]
        relevance = torch.eye(tokens, dtype=images.dtype)
        for attention, gradient in zip(cap.attentions, gradients, strict=True):
            weighted = (gradient * attention).detach()[0]  # (heads, T, T)
            if clamp:
                weighted = weighted.clamp(min=0)
            relevance = relevance + weighted.mean(dim=0) @ relevance
        rows.append(relevance[0, 1:])
    return torch.stack(rows)


def test_gradient_weighted_attention_matches_the_papers_recipe():
    model = tiny_model()
    images = tiny_images(2)
    target = torch.tensor([3, 7])
    relevance, targets = gradient_weighted_attention(model, images, target)

    assert relevance.shape == (2, 64)
    assert torch.equal(targets, target)
    expected = reference_relevance(model, images, target)
    torch.testing.assert_close(relevance, expected, atol=1e-5, rtol=1e-4)
    # The positive part matters: without the clamp the answer is different.
    assert not torch.allclose(expected, reference_relevance(model, images, target, clamp=False), atol=1e-5)
    assert (relevance >= 0).all()


def test_gradient_weighted_attention_defaults_to_the_prediction():
    model = tiny_model()
    images = tiny_images(3)
    with torch.no_grad():
        predicted = model(images).argmax(-1)
    relevance, targets = gradient_weighted_attention(model, images)
    assert torch.equal(targets, predicted)
    for item in range(3):
        alone, _ = gradient_weighted_attention(model, images[item : item + 1], int(predicted[item]))
        torch.testing.assert_close(relevance[item : item + 1], alone, atol=1e-5, rtol=1e-4)


def test_gradient_weighted_attention_depends_on_the_class_and_leaves_no_gradients():
    model = tiny_model()
    images = tiny_images(2)
    first, _ = gradient_weighted_attention(model, images, 0)
    second, _ = gradient_weighted_attention(model, images, 1)
    assert not torch.allclose(first, second, atol=1e-4)
    assert all(p.grad is None for p in model.parameters())
    assert not images.requires_grad and images.grad is None


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_gradient_weighted_attention_works_inside_no_grad_and_inference_mode(context):
    """Users wrap analysis code in torch.no_grad() or torch.inference_mode(): the map must be the same there."""
    model = tiny_model()
    target = torch.tensor([3, 7])
    expected, _ = gradient_weighted_attention(model, tiny_images(2), target)
    with context():
        images = tiny_images(2)  # made inside the context, as a user's batch would be
        relevance, targets = gradient_weighted_attention(model, images, target)
        chosen, _ = gradient_weighted_attention(model, images)  # the prediction as target: a score, then grad
    torch.testing.assert_close(relevance, expected)
    assert torch.equal(targets, target) and chosen.shape == (2, 64)
    assert all(p.grad is None for p in model.parameters())


def test_gradient_weighted_attention_is_zero_when_attention_cannot_matter():
    """With every out_proj zeroed, attention has no effect on the logits: dA = 0, so R stays I, whose class-token
    row over the patches is all zeros."""
    model = tiny_model()
    with torch.no_grad():
        for block in model.encoder.layers:
            block.self_attention.out_proj.weight.zero_()
            block.self_attention.out_proj.bias.zero_()
    relevance, _ = gradient_weighted_attention(model, tiny_images(2), 4)
    assert torch.equal(relevance, torch.zeros(2, 64))


def test_gradient_weighted_attention_keeps_the_model_dtype():
    """A float64 model (as used for gradient checks) works like a float32 one; rollout already follows the dtype."""
    model = tiny_model().double()
    images = tiny_images(2).double()
    relevance, _ = gradient_weighted_attention(model, images, 2)
    assert relevance.dtype == torch.float64
    torch.testing.assert_close(
        relevance, reference_relevance(model, images, torch.tensor([2, 2])), atol=1e-10, rtol=1e-8
    )


# ---------------------------------------------------------------------------------------------------------------
# Does the map land on the object?
# ---------------------------------------------------------------------------------------------------------------


def test_patch_coverage_counts_object_pixels_per_patch_row_major():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True  # patch (0, 0) full
    masks[0, 0:4, 4:6] = True  # patch (0, 1) half
    masks[1, 4:5, 0:4] = True  # patch (1, 0): one row of four, a quarter
    coverage = patch_coverage(masks, patch_size=4)
    assert coverage.shape == (2, 4)
    assert torch.equal(coverage, torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.25, 0.0]]))


def test_pointing_game():
    object_patches = torch.tensor([[True, False, False, False], [False, False, True, True]])
    on_object = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.0, 0.1, 0.2, 0.7]])
    off_object = torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.5, 0.1, 0.2, 0.1]])
    assert pointing_game(on_object, object_patches) == 1.0
    assert pointing_game(off_object, object_patches) == 0.0
    assert pointing_game(torch.stack([on_object[0], off_object[1]]), object_patches) == 0.5


def test_attention_mass_ratio():
    object_patches = torch.tensor([[True, False, False, False], [False, False, True, True]])
    uniform = torch.full((2, 4), 0.25)
    assert attention_mass_ratio(uniform, object_patches) == pytest.approx(1.0)
    # All mass on the object: 1 / (1/4) = 4 for item 0, 1 / (2/4) = 2 for item 1; mean 3.
    on_object = object_patches.float()
    assert attention_mass_ratio(on_object, object_patches) == pytest.approx(3.0)
    # None on the object: 0. Negative values count as 0 (clamped), not as mass taken away.
    assert attention_mass_ratio(1 - on_object, object_patches) == pytest.approx(0.0)
    signed = torch.tensor([[1.0, -5.0, 1.0, 2.0]])  # clamp -> [1, 0, 1, 2]: 1/4 of the mass on 1/4 of patches
    assert attention_mass_ratio(signed, object_patches[:1]) == pytest.approx(1.0)
