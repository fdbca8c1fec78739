"""Tests for vitlab.model: parameter counts, freezing, and every way of getting weights (cache, file, none).

Nothing here touches the network: every test that could reach torchvision's downloader replaces
`torch.hub.download_url_to_file` first, so a download attempt fails the test instead of hanging on a socket.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from vitlab.errors import VitlabError, WeightsUnavailableError
from vitlab.model import (
    ARCHS,
    VIT_TINY_CONFIG,
    build_model,
    count_parameters,
    freeze_all_but_last,
    load_state_dict_file,
    weights_cache_file,
)
from vitlab.shipped import shipped_base_file

VIT_B_16_FILE = "vit_b_16-c867db91.pth"


pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def names_under(model: torch.nn.Module, prefixes: tuple[str, ...]) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.startswith(prefixes)}


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty TORCH_HOME; torchvision's cache then lives in `<it>/hub/checkpoints`."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    # torch.hub.set_dir() (called by anything earlier in the session) would override TORCH_HOME for good.
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    assert torch.hub.get_dir() == str(home / "hub"), "torch.hub does not honour TORCH_HOME"
    return home


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any download attempt fail loudly (AssertionError is not an OSError, so vitlab cannot swallow it)."""
    attempts: list[str] = []

    def refuse(url: str, *args, **kwargs) -> None:
        attempts.append(url)
        raise AssertionError(f"the test tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return attempts


# ---------------------------------------------------------------------------------------------------------------
# Counting and freezing
# ---------------------------------------------------------------------------------------------------------------


def test_vit_b_16_counts_and_trainable_names_match_the_notebook():
    model = build_model("vit_b_16", 100, pretrained=False, trainable_blocks=3)

    assert isinstance(model, torchvision.models.VisionTransformer)
    assert count_parameters(model) == (21_340_516, 85_875_556)
    assert isinstance(model.heads.head, torch.nn.Linear)
    assert (model.heads.head.in_features, model.heads.head.out_features) == (768, 100)
    assert model.num_classes == 100

    expected = names_under(
        model,
        (
            "encoder.layers.encoder_layer_9.",
            "encoder.layers.encoder_layer_10.",
            "encoder.layers.encoder_layer_11.",
            "heads.head.",
        ),
    )
    assert len(expected) == 3 * 12 + 2  # 12 tensors per block (2 norms, attention, MLP) + head weight, bias
    assert trainable_names(model) == expected
    # Things that look trainable but must stay frozen with trainable_blocks < all.
    for frozen in (
        "class_token",
        "conv_proj.weight",
        "encoder.pos_embedding",
        "encoder.ln.weight",
        "encoder.layers.encoder_layer_8.mlp.0.weight",
    ):
        assert frozen not in trainable_names(model)

    # The same model, re-frozen: head only, then everything.
    freeze_all_but_last(model, 0)
    assert trainable_names(model) == {"heads.head.weight", "heads.head.bias"}
    assert count_parameters(model) == (768 * 100 + 100, 85_875_556)
    freeze_all_but_last(model, 12)
    assert count_parameters(model) == (85_875_556, 85_875_556)


def test_vit_tiny_trainable_blocks_zero_trains_only_the_head():
    model = build_model("vit_tiny", num_classes=7, pretrained=False, trainable_blocks=0)

    assert trainable_names(model) == {"heads.head.weight", "heads.head.bias"}
    assert count_parameters(model)[0] == 64 * 7 + 7


def test_vit_tiny_all_blocks_trains_everything():
    model = build_model("vit_tiny", num_classes=7, pretrained=False, trainable_blocks=4)

    assert len(model.encoder.layers) == 4
    assert trainable_names(model) == {name for name, _ in model.named_parameters()}
    trainable, total = count_parameters(model)
    assert trainable == total


def test_vit_tiny_one_block_trains_last_block_and_head():
    model = build_model("vit_tiny", num_classes=7, pretrained=False, trainable_blocks=1)

    assert trainable_names(model) == names_under(model, ("encoder.layers.encoder_layer_3.", "heads.head."))


def test_vit_tiny_geometry_and_head():
    model = build_model("vit_tiny", num_classes=5, pretrained=False)

    assert (model.image_size, model.patch_size, model.hidden_dim) == (32, 4, 64)
    assert model.heads.head.out_features == 5
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("trainable_blocks", [-1, 5, 100])
def test_trainable_blocks_out_of_range(trainable_blocks: int):
    with pytest.raises(VitlabError, match=r"out of range.*4 encoder blocks"):
        build_model("vit_tiny", num_classes=4, pretrained=False, trainable_blocks=trainable_blocks)


def test_unknown_arch_lists_the_choices():
    with pytest.raises(VitlabError) as excinfo:
        build_model("resnet50", pretrained=False)
    message = str(excinfo.value)
    assert "resnet50" in message
    for arch in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14", "vit_tiny"):
        assert arch in message
    assert set(ARCHS) == {"vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14", "vit_tiny"}


def test_vit_tiny_pretrained_is_the_shipped_base_never_the_network(no_network: list[str]):
    model = build_model("vit_tiny", num_classes=4, pretrained=True)
    shipped = torch.load(shipped_base_file(), weights_only=True)["model"]
    assert torch.equal(model.encoder.pos_embedding, shipped["encoder.pos_embedding"])
    assert model.heads.head.out_features == 4  # the base has no head: a fresh one for the task
    assert no_network == []


# ---------------------------------------------------------------------------------------------------------------
# pretrained=True: torchvision's cache under TORCH_HOME
# ---------------------------------------------------------------------------------------------------------------


def test_weights_cache_file_honours_torch_home(torch_home: Path):
    assert weights_cache_file() == torch_home / "hub" / "checkpoints" / VIT_B_16_FILE


@pytest.mark.slow
def test_pretrained_true_loads_the_cached_file_without_network(torch_home: Path, no_network: list[str]):
    torch.manual_seed(1234)
    source = torchvision.models.vit_b_16()  # 1000-class head, like the real ImageNet file
    with torch.no_grad():
        source.class_token.fill_(0.375)  # a value no initialisation produces
        source.encoder.pos_embedding.copy_(
            torch.linspace(-1, 1, source.encoder.pos_embedding.numel()).view_as(source.encoder.pos_embedding)
        )
    planted = {name: tensor.clone() for name, tensor in source.state_dict().items()}
    del source
    cache_file = torch_home / "hub" / "checkpoints" / VIT_B_16_FILE
    cache_file.parent.mkdir(parents=True)
    torch.save(planted, cache_file)

    torch.manual_seed(0)  # a different seed: random init cannot accidentally match the planted values
    try:
        model = build_model("vit_b_16", 100, pretrained=True, trainable_blocks=3)
    finally:
        cache_file.unlink()  # 330 MB: do not leave it in pytest's kept temporary folders

    assert no_network == []
    loaded = model.state_dict()
    assert torch.equal(loaded["class_token"], torch.full((1, 1, 768), 0.375))
    body = [name for name in planted if not name.startswith("heads.")]
    assert len(body) == len(loaded) - 2
    for name in body:
        assert torch.equal(loaded[name], planted[name]), name
    # A fresh 100-class head, not a slice of the planted 1000-class one.
    assert loaded["heads.head.weight"].shape == (100, 768)
    assert loaded["heads.head.bias"].shape == (100,)
    assert not torch.equal(loaded["heads.head.weight"], planted["heads.head.weight"][:100])
    assert count_parameters(model) == (21_340_516, 85_875_556)


@pytest.mark.parametrize(
    "failure",
    [urllib.error.URLError("offline"), ConnectionResetError("reset"), TimeoutError("timed out")],
    ids=["URLError", "ConnectionError", "TimeoutError"],
)
def test_pretrained_true_offline_explains_what_to_do(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
):
    attempts: list[str] = []

    def offline(url: str, *args, **kwargs) -> None:
        attempts.append(url)
        raise failure

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)

    with pytest.raises(WeightsUnavailableError) as excinfo:
        build_model("vit_b_16", 100, pretrained=True)

    assert attempts and attempts[0].endswith(VIT_B_16_FILE)  # it did try torchvision's downloader
    error = excinfo.value
    assert isinstance(error, VitlabError)
    message = str(error)
    assert str(torch_home / "hub" / "checkpoints") in message
    assert VIT_B_16_FILE in message
    assert "pretrained" in message
    assert "--preset demo" in message
    # No chained urllib traceback under the explanation.
    assert error.__cause__ is None and error.__suppress_context__
    assert not (torch_home / "hub" / "checkpoints" / VIT_B_16_FILE).exists()


# ---------------------------------------------------------------------------------------------------------------
# pretrained=PATH: state-dict files, loaded with weights_only=True
# ---------------------------------------------------------------------------------------------------------------


def test_pretrained_path_round_trips_a_vit_tiny_state_dict(tmp_path: Path):
    torch.manual_seed(3)
    source = build_model("vit_tiny", num_classes=4, pretrained=False)
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)

    torch.manual_seed(4)
    loaded = build_model("vit_tiny", num_classes=4, pretrained=str(path))  # str and Path both accepted
    loaded_from_path = build_model("vit_tiny", num_classes=4, pretrained=path)

    for model in (loaded, loaded_from_path):
        state = model.state_dict()
        assert state.keys() == source.state_dict().keys()
        for name, tensor in source.state_dict().items():
            assert torch.equal(state[name], tensor), name  # the head too: it had the right size


def test_pretrained_path_with_a_1000_class_head_gets_a_fresh_head(tmp_path: Path):
    torch.manual_seed(5)
    source = torchvision.models.VisionTransformer(num_classes=1000, **VIT_TINY_CONFIG)
    path = tmp_path / "tiny1000.pth"
    torch.save(source.state_dict(), path)

    model = build_model("vit_tiny", num_classes=6, pretrained=path)

    state = model.state_dict()
    for name, tensor in source.state_dict().items():
        if not name.startswith("heads."):
            assert torch.equal(state[name], tensor), name
    assert state["heads.head.weight"].shape == (6, 64)


def test_pretrained_path_accepts_a_vitlab_checkpoint_dict(tmp_path: Path):
    torch.manual_seed(6)
    source = build_model("vit_tiny", num_classes=4, pretrained=False)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": source.state_dict(), "epoch": 3, "optimizer": {}}, path)

    model = build_model("vit_tiny", num_classes=4, pretrained=path)

    assert torch.equal(model.encoder.pos_embedding, source.encoder.pos_embedding)
    assert torch.equal(model.heads.head.weight, source.heads.head.weight)


class NotATensor:
    """A class only this test module defines: unpickling it means running code from a pickle."""

    def __init__(self) -> None:
        self.value = 42


class WritesMarker:
    """Unpickling this calls exec(...), which writes the marker file: pickled code, as an attacker would ship."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_pretrained_path_refuses_pickled_code_and_runs_none_of_it(tmp_path: Path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    state = build_model("vit_tiny", num_classes=4, pretrained=False).state_dict()
    state["payload"] = WritesMarker(marker)
    torch.save(state, path)

    with pytest.raises(VitlabError, match="pickled code"):
        build_model("vit_tiny", num_classes=4, pretrained=path)
    with pytest.raises(VitlabError):
        load_state_dict_file(path)
    assert not marker.exists()

    # The payload is real: an unsafe load does run it. (So the assertion above could have failed.)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_pretrained_path_refuses_objects_of_foreign_classes(tmp_path: Path):
    path = tmp_path / "object.pth"
    torch.save({"class_token": NotATensor()}, path)

    with pytest.raises(VitlabError, match=str(path)):
        build_model("vit_tiny", num_classes=4, pretrained=path)


def test_pretrained_path_missing_file(tmp_path: Path):
    path = tmp_path / "does_not_exist.pth"
    with pytest.raises(VitlabError, match="does_not_exist.pth"):
        build_model("vit_tiny", num_classes=4, pretrained=path)


def test_pretrained_path_truncated_file(tmp_path: Path):
    path = tmp_path / "truncated.pth"
    torch.save(build_model("vit_tiny", num_classes=4, pretrained=False).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(VitlabError, match="truncated"):
        build_model("vit_tiny", num_classes=4, pretrained=path)


def test_pretrained_path_not_a_pytorch_file(tmp_path: Path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(VitlabError):
        build_model("vit_tiny", num_classes=4, pretrained=path)


def test_pretrained_path_holding_a_list_is_refused(tmp_path: Path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(VitlabError, match="not a state dict"):
        build_model("vit_tiny", num_classes=4, pretrained=path)


def test_pretrained_path_from_another_architecture_is_refused(tmp_path: Path):
    other = torchvision.models.VisionTransformer(
        image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(VitlabError, match="do not fit"):
        build_model("vit_tiny", num_classes=4, pretrained=path)
