"""Known-answer tests for vitlab.analysis.norms: norms as Tensor.norm gives them, a planted outlier is found, shares."""

from __future__ import annotations

import pytest
import torch

from vitlab.analysis.norms import high_norm_tokens, outlier_attention, outlier_positions, token_norms
from vitlab.capture import capture_forward
from vitlab.data import BatchTransform
from vitlab.errors import VitlabError
from vitlab.model import build_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def demo_capture(demo_model):
    model, splits = demo_model
    images = BatchTransform(model.image_size, train=False)(splits.test.take(6).images)
    with torch.no_grad():
        _, captured = capture_forward(model, images)
    return captured


def test_token_norms_match_tensor_norm_on_captured_states(demo_capture):
    norms = token_norms(demo_capture.hidden_states)

    assert norms.shape == (4, 6, 65)
    for block, state in enumerate(demo_capture.hidden_states):
        for image in range(6):
            for token in (0, 1, 37, 64):
                assert norms[block, image, token] == state[image, token].norm()


def test_an_outlier_planted_into_a_captured_hidden_state_is_found(demo_capture):
    states = [state.clone() for state in demo_capture.hidden_states]
    before = high_norm_tokens(token_norms(states)[2])
    image, token = 4, 1 + 3 * 8 + 6  # the patch at row 3, column 6 of image 4
    states[2][image, token] *= 20

    found = high_norm_tokens(token_norms(states)[2])

    assert found[image, token] and not before[image, token]
    planted = torch.zeros_like(found)
    planted[image, token] = True
    assert torch.equal(found, before | planted)  # nothing else changed
    assert outlier_positions(planted, grid_size=8).tolist() == [[4, 3, 6]]


def test_the_rule_is_factor_times_the_median_patch_norm_and_never_the_class_token():
    norms = torch.tensor([[100.0, 1, 2, 3, 2, 9.1], [0.5, 1, 1, 1, 1, 8.9]])  # median patch norm 2 and 1

    mask = high_norm_tokens(norms, factor=3.0)

    assert mask.tolist() == [[False, False, False, False, False, True], [False] * 5 + [True]]
    assert high_norm_tokens(norms, factor=4.6).tolist() == [[False] * 6, [False] * 5 + [True]]


def test_outlier_attention_is_the_class_tokens_share_on_the_outliers_in_the_next_block():
    blocks, images, heads, tokens = 3, 2, 2, 5
    norms = torch.ones(blocks, images, tokens)
    norms[1, 0, 3] = 10.0  # one outlier in block 1's output, image 0, token 3
    uniform = torch.full((images, heads, tokens, tokens), 1 / tokens)
    read = uniform.clone()
    read[0, 1, 0] = torch.tensor([0.1, 0.1, 0.1, 0.6, 0.1])  # head 1 of block 2 reads the outlier: 0.6

    result = outlier_attention(norms, [uniform, uniform, read], block=1)

    assert result.num_outliers == 1 and result.block == 1
    assert result.token_share == pytest.approx(1 / (images * tokens))
    torch.testing.assert_close(result.attention_share, torch.tensor([(0.2 + 0.0) / 2, (0.6 + 0.0) / 2]))
    torch.testing.assert_close(result.enrichment, torch.tensor([1.0, 3.0]))  # uniform attention gives 1


def test_no_outliers_give_a_zero_share_and_no_enrichment(demo_capture):
    norms = torch.ones(4, 6, 65)

    result = outlier_attention(norms, demo_capture.attentions, block=0)

    assert result.num_outliers == 0 and result.attention_share.tolist() == [0.0] * 4
    assert result.enrichment.isnan().all()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit_tiny", "vit_b_16"])
def test_norms_work_for_random_vit_tiny_and_vit_b_16(arch: str):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=3, pretrained=False).eval()
    with torch.no_grad():
        _, captured = capture_forward(model, torch.randn(2, 3, model.image_size, model.image_size))

    norms = token_norms(captured.hidden_states)
    result = outlier_attention(norms, captured.attentions, block=len(norms) - 2)

    tokens = captured.geometry.num_tokens
    assert norms.shape == (len(model.encoder.layers), 2, tokens)
    torch.testing.assert_close(norms[-1], captured.hidden_states[-1].norm(dim=-1))
    assert result.attention_share.shape == (model.encoder.layers[0].num_heads,)


def test_bad_input_gives_a_clear_vitlab_error(demo_capture):
    norms = token_norms(demo_capture.hidden_states)

    with pytest.raises(VitlabError, match="choose 0 to 2"):
        outlier_attention(norms, demo_capture.attentions, block=3)  # the last block has no next block
    with pytest.raises(VitlabError, match="choose 0 to 2"):
        outlier_attention(norms, demo_capture.attentions, block=-1)
    with pytest.raises(VitlabError, match="got none"):
        token_norms([])
    with pytest.raises(VitlabError, match="all of one shape"):
        token_norms([torch.ones(2, 5, 4), torch.ones(2, 6, 4)])
    with pytest.raises(VitlabError, match=r"Pass token_norms\(...\)\[block\]"):
        high_norm_tokens(norms)
    with pytest.raises(VitlabError, match="factor must be above 1"):
        high_norm_tokens(norms[0], factor=0.5)
    with pytest.raises(VitlabError, match="8x8 grid"):
        outlier_positions(torch.zeros(2, 50, dtype=torch.bool), grid_size=8)
