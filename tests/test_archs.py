"""Tests for every torchvision ViT (`vitlab.archs`): shapes known without building, parameter counts, capture
parity, and each weights file found under its own name in torchvision's cache.

Known answers come from torchvision itself: its builders' arguments, its `meta["num_params"]` for each weights, its
`interpolate_embeddings`, its weights' URLs. The big models are counted on PyTorch's meta device (no memory, no
time); vit_b_32 runs at its native 224 px, and every arch at a 2x2 patch grid (a slow test: ViT-H/14 takes seconds
to build). Nothing is downloaded.
"""

from __future__ import annotations

import os
import sys
import urllib.error
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import get_model_builder, get_model_weights
from torchvision.models.vision_transformer import interpolate_embeddings

from vitlab.archs import (
    ARCHS,
    SPECS,
    TORCHVISION_ARCHS,
    default_weights,
    native_image_size,
    num_blocks,
    weights_cache_file,
    weights_names,
)
from vitlab.capture import capture
from vitlab.errors import VitlabError, WeightsUnavailableError
from vitlab.model import build_model, count_parameters
from vitlab.training.config import make_config

sys.path.insert(0, str(Path(__file__).parent))  # the capture tests' independent recomputation, reused
from test_capture import block_inputs, hand_attention  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py

PAIRS = [(arch, name) for arch in TORCHVISION_ARCHS for name in weights_names(arch)]


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty TORCH_HOME, and a downloader that fails as it does offline (and records each attempt)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # set_dir() would override TORCH_HOME

    def offline(url: str, *args, **kwargs) -> None:
        raise urllib.error.URLError("offline in vitlab's tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch_home"


def test_every_torchvision_vit_is_an_arch():
    assert set(ARCHS) == {"vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14", "vit_tiny"}
    assert set(TORCHVISION_ARCHS) == {name for name in torchvision.models.list_models() if name.startswith("vit_")}


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_the_spec_is_what_torchvisions_builder_passes(arch: str, monkeypatch: pytest.MonkeyPatch):
    """The builder's own arguments, recorded without building anything."""
    recorded = {}

    class Recorder:
        def __init__(self, **kwargs) -> None:
            recorded.update(kwargs)

    monkeypatch.setattr(torchvision.models.vision_transformer, "VisionTransformer", Recorder)
    get_model_builder(arch)(weights=None)
    assert {name: recorded[name] for name in asdict(SPECS[arch])} == asdict(SPECS[arch])
    assert num_blocks(arch) == recorded["num_layers"]


@pytest.mark.parametrize(("arch", "weights"), PAIRS, ids=[f"{a}-{w}" for a, w in PAIRS])
def test_parameter_counts_equal_torchvisions(arch: str, weights: str):
    member = get_model_weights(arch)[weights]
    size = native_image_size(arch, weights)
    assert size == member.meta["min_size"][0]
    with torch.device("meta"):  # shapes only: ViT-H/14 would take 2.5 GB and seconds on the CPU
        ours = build_model(arch, 1000, pretrained=False, trainable_blocks=0, weights=weights)
        theirs = get_model_builder(arch)(weights=None, image_size=size)
        hundred = build_model(arch, 100, pretrained=False, trainable_blocks=0, weights=weights)
    total = count_parameters(ours)[1]
    assert total == sum(p.numel() for p in theirs.parameters()) == member.meta["num_params"]
    assert count_parameters(hundred)[1] == total - 900 * (SPECS[arch].hidden_dim + 1)  # 900 fewer head rows
    assert ours.image_size == size and ours.seq_length == (size // SPECS[arch].patch_size) ** 2 + 1


def test_weights_are_validated_per_arch_with_the_valid_names():
    assert default_weights("vit_b_16") == "IMAGENET1K_V1" and default_weights("vit_h_14") == "IMAGENET1K_SWAG_E2E_V1"
    with pytest.raises(VitlabError) as error:
        make_config({"arch": "vit_b_32", "weights": "IMAGENET1K_SWAG_E2E_V1"})  # B/32 has no SWAG weights
    assert "--weights IMAGENET1K_SWAG_E2E_V1 is not allowed for vit_b_32: it must be one of IMAGENET1K_V1" in str(
        error.value)
    with pytest.raises(VitlabError, match="one of IMAGENET1K_SWAG_E2E_V1, IMAGENET1K_SWAG_LINEAR_V1"):
        make_config({"arch": "vit_h_14", "weights": "IMAGENET1K_V1"})


def test_weights_flag_exits_2_listing_the_archs_weights(capsys, tmp_path: Path):
    from vitlab.training import finetune

    assert finetune.main(["--arch", "vit_l_16", "--weights", "SWAG", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1, IMAGENET1K_SWAG_LINEAR_V1" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------
# Capture parity on the other archs
# ---------------------------------------------------------------------------------------------------------------


def assert_capture_parity(model: torchvision.models.VisionTransformer, images: torch.Tensor) -> None:
    """capture's attentions and hidden states equal an independent recomputation from torchvision's modules."""
    with torch.no_grad():
        reference = model(images)
        with capture(model) as cap:
            logits = model(images)
        inputs = block_inputs(model, images)
    assert torch.equal(logits, reference)
    tokens = model.seq_length
    for index, block in enumerate(model.encoder.layers):
        want = hand_attention(block, inputs[index])  # (B, heads, T, T)
        assert cap.attentions[index].shape == (len(images), block.self_attention.num_heads, tokens, tokens)
        torch.testing.assert_close(cap.attentions[index], want, atol=1e-5, rtol=0, msg=f"block {index}")
        after = inputs[index + 1] if index + 1 < len(inputs) else None
        if after is not None:
            torch.testing.assert_close(cap.hidden_states[index], after, atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_capture_analyses_and_the_explorer_on_every_arch_at_a_2x2_grid(arch: str):
    """Each torchvision ViT, random weights, built at 2x2 patches (seconds even for ViT-H/14's 632M parameters):
    capture equals the independent recomputation, the logit lens' last block equals the logits, rollout gives each
    of the 4 patches a share of the class token's row (the rest stays on the class token), and the explorer's
    analyse_image/class_map read the same geometry."""
    from vitlab.analysis.attention import rollout
    from vitlab.analysis.lens import logit_lens_forward
    from vitlab.explorer import analyse_image, class_map

    patch = SPECS[arch].patch_size
    torch.manual_seed(0)
    model = build_model(arch, 10, pretrained=False, trainable_blocks=0, image_size=2 * patch).eval()
    assert model.seq_length == 5 and len(model.encoder.layers) == num_blocks(arch)
    images = torch.randn(2, 3, 2 * patch, 2 * patch, generator=torch.Generator().manual_seed(1))
    assert_capture_parity(model, images)
    lens = logit_lens_forward(model, images)
    torch.testing.assert_close(lens.lens_logits[-1], lens.logits, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), capture(model) as captured:
        model(images)
    flow = rollout(captured.attentions)  # (B, patches)
    assert flow.shape == (2, 4) and (flow > 0).all() and (flow.sum(-1) < 1).all()
    picture = torch.randint(0, 256, (3, 2 * patch, 2 * patch), dtype=torch.uint8)
    views = analyse_image(model, picture)
    relevance, _ = class_map(model, picture)
    assert views.num_layers == num_blocks(arch) and views.cls_map(0, 0).shape == relevance.shape == (2, 2)


def test_capture_parity_on_vit_b_32():
    torch.manual_seed(0)
    model = build_model("vit_b_32", 10, pretrained=False, trainable_blocks=0).eval()
    with torch.no_grad():
        model.class_token.normal_(std=0.5)  # token 0 not special by accident
    assert model.seq_length == 50  # 7x7 patches of 32 px + the class token
    assert_capture_parity(model, torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------------------------------------------------------
# Each weights file under its own name in torchvision's cache
# ---------------------------------------------------------------------------------------------------------------


def test_each_weights_file_has_its_own_name_under_torch_home(torch_home: Path):
    files = {pair: weights_cache_file(*pair) for pair in PAIRS}
    for (arch, name), path in files.items():
        assert path == torch_home / "hub" / "checkpoints" / os.path.basename(get_model_weights(arch)[name].url)
    assert len(set(files.values())) == len(PAIRS)  # no two weights share a file
    assert weights_cache_file() == torch_home / "hub" / "checkpoints" / "vit_b_16-c867db91.pth"  # the default


@pytest.mark.filterwarnings("ignore:for class_token. copying from a non-meta parameter")  # meta: nothing copied
@pytest.mark.parametrize(("arch", "weights"), PAIRS, ids=[f"{a}-{w}" for a, w in PAIRS])
def test_a_missing_file_names_itself_and_a_planted_one_is_read(arch: str, weights: str, torch_home: Path):
    """Missing: the error names the file and folder. Planted (a small valid state dict, not the real gigabytes):
    it is the file read, proved by the misfit error naming exactly that path."""
    cache_file = weights_cache_file(arch, weights)
    with torch.device("meta"), pytest.raises(WeightsUnavailableError) as missing:
        build_model(arch, 10, pretrained=True, weights=weights, progress=False)
    assert cache_file.name in str(missing.value) and str(cache_file.parent) in str(missing.value)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"class_token": torch.zeros(1, 1, SPECS[arch].hidden_dim)}, cache_file)
    with torch.device("meta"), pytest.raises(VitlabError, match="do not fit") as misfit:
        build_model(arch, 10, pretrained=True, weights=weights, progress=False)
    assert str(cache_file) in str(misfit.value) and not isinstance(misfit.value, WeightsUnavailableError)


@pytest.mark.slow
def test_a_planted_vit_b_32_file_is_read_and_interpolated_to_another_size(torch_home: Path):
    with torch.device("meta"):
        shapes = torchvision.models.vit_b_32().state_dict()  # the real file's names and shapes, nothing allocated
    generator = torch.Generator().manual_seed(1234)
    planted = {name: torch.randn(t.shape, generator=generator) for name, t in shapes.items()}  # no init draws these
    cache_file = weights_cache_file("vit_b_32")
    cache_file.parent.mkdir(parents=True)
    torch.save(planted, cache_file)
    try:
        model = build_model("vit_b_32", 10, pretrained=True, trainable_blocks=0, image_size=128)  # a 4x4 grid
    finally:
        cache_file.unlink()  # 350 MB: do not leave it in pytest's kept temporary folders
    expected = interpolate_embeddings(128, 32, dict(planted))["encoder.pos_embedding"]  # (1, 1 + 7*7, D) -> (1, 17, D)
    assert torch.equal(model.encoder.pos_embedding, expected) and model.seq_length == 17
    assert torch.equal(model.encoder.pos_embedding[:, 0], planted["encoder.pos_embedding"][:, 0])
    loaded = model.state_dict()
    body = [name for name in planted if not name.startswith("heads.") and name != "encoder.pos_embedding"]
    assert len(body) == len(loaded) - 3  # everything but the new grid and the fresh 10-class head
    for name in body:
        assert torch.equal(loaded[name], planted[name]), name
    assert loaded["heads.head.weight"].shape == (10, 768)

def test_lessons_take_every_arch_and_name_the_missing_file(torch_home: Path, capsys, tmp_path: Path):
    from vitlab.teaching.flags import parse_args
    from vitlab.teaching.subject import study

    assert parse_args("04_attention_heads", ["--arch", "vit_l_16"]).arch == "vit_l_16"
    with torch.device("meta"), pytest.raises(WeightsUnavailableError) as error:
        study(parse_args("04_attention_heads", ["--arch", "vit_h_14", "--out", str(tmp_path)]))
    assert "vit_h_14_swag-80465313.pth" in str(error.value)  # its default weights' own file
