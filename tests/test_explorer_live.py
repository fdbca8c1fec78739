"""vitlab.explorer.live: head ablation and the logit lens on the image on the page."""

from __future__ import annotations

import pytest
import torch

from vitlab.errors import VitlabError
from vitlab.explorer import analyse_image, lens_top, top_k_ablated

# Small tensors on a shared 2-core machine: one thread is faster (see conftest.single_thread).
pytestmark = pytest.mark.usefixtures("single_thread")


def test_ablating_nothing_changes_nothing_and_matches_the_page(demo_model):
    model, splits = demo_model
    image = splits.test.images[0]
    before, after = top_k_ablated(model, image, {}, k=3)
    assert before == after and len(before) == 3
    page = analyse_image(model, image).top_k(3)
    assert [c for c, _ in before] == [c for c, _ in page]
    torch.testing.assert_close(torch.tensor([p for _, p in before]), torch.tensor([p for _, p in page]))


def test_without_any_attention_the_class_token_never_sees_the_image(demo_model):
    """Every head of every block off: the class token never mixes with the patches, so every image gets the
    same output, and the demo's confident prediction is gone."""
    model, splits = demo_model
    everything = {block: list(range(4)) for block in range(4)}
    outputs = [top_k_ablated(model, splits.test.images[i], everything, k=4) for i in (0, 1, 7)]
    for before, after in outputs:
        assert before != after and before[0][1] > 0.5 and abs(after[0][1] - before[0][1]) > 1e-3
    afters = [after for _, after in outputs]
    for after in afters[1:]:
        assert [c for c, _ in after] == [c for c, _ in afters[0]]
        torch.testing.assert_close(torch.tensor([p for _, p in after]), torch.tensor([p for _, p in afters[0]]))
    one_head = top_k_ablated(model, splits.test.images[0], {3: [0]}, k=4)[1]
    assert one_head != afters[0]


def test_bad_heads_are_refused_before_any_pass(demo_model):
    model, splits = demo_model
    with pytest.raises(VitlabError, match="Block 4 does not exist"):
        top_k_ablated(model, splits.test.images[0], {4: [0]})
    with pytest.raises(VitlabError, match="heads are 0 to 3"):
        top_k_ablated(model, splits.test.images[0], {0: [4]})


def test_the_lens_last_block_is_the_models_own_top_k(demo_model):
    model, splits = demo_model
    image = splits.test.images[2]
    per_block = lens_top(model, image, k=3)
    assert len(per_block) == 4 and all(len(ranking) == 3 for ranking in per_block)
    page = analyse_image(model, image).top_k(3)
    assert [c for c, _ in per_block[-1]] == [c for c, _ in page]
    torch.testing.assert_close(torch.tensor([p for _, p in per_block[-1]]), torch.tensor([p for _, p in page]))
    for ranking in per_block:
        assert all(a[1] >= b[1] for a, b in zip(ranking, ranking[1:], strict=False))
