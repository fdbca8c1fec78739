"""Tests for vitlab.external: timm and Hugging Face ViTs imported as torchvision ViTs with the same function.

Every model here is built by timm or transformers themselves with random weights (no download), saved in the
library's own formats (state dicts as .pth / .bin / .safetensors, timm's save_for_hf folder, transformers'
save_pretrained folder), imported, and compared with the library's own forward on random inputs within 1e-5.
timm initialises biases to 0, LayerNorms to 1 and the class token near 0, so `randomise` redraws every parameter
first: a mapping that swapped two norms or dropped a bias would otherwise still match.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torchvision.models import VisionTransformer, ViT_B_16_Weights

from vitlab import ImportedViT, capture_forward, import_vit
from vitlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, denormalize
from vitlab.errors import VitlabError
from vitlab.external import detect_format
from vitlab.external.timm_vit import FAMILY, HALF, TAG_STATISTICS
from vitlab.model import build_model

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
save_for_hf = pytest.importorskip("timm.models._hub").save_for_hf
save_safetensors = pytest.importorskip("safetensors.torch").save_file

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py
TOLERANCE = {"atol": 1e-5, "rtol": 0.0}


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter redrawn (norm weights around 1), so that each tensor's place in the mapping shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * (0.1 if param.ndim == 1 else 0.05)
            is_norm_weight = "norm" in name and name.endswith("weight")
            param.copy_(noise + (1.0 if is_norm_weight else 0.0))
    return model.eval()


def images(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (B, 3, S, S)


def assert_same_function(imported: ImportedViT, reference, inputs: torch.Tensor) -> None:
    """The imported torchvision model's output equals `reference(inputs)`'s within 1e-5 (absolute, per value)."""
    with torch.no_grad():
        ours, theirs = imported.model(inputs), reference(inputs)
    assert isinstance(imported.model, VisionTransformer) and not imported.model.training
    assert ours.abs().max() > 0.1  # a function worth comparing, not an all-zero head
    torch.testing.assert_close(ours, theirs, **TOLERANCE)


def timm_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    return randomise(timm.create_model(name, pretrained=False, **kwargs), seed)


# ---------------------------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_tiny() -> torch.nn.Module:
    """timm's vit_tiny_patch16_224 at full size (12 blocks of width 192, 3 heads), random weights."""
    return timm_model("vit_tiny_patch16_224")


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_a_timm_state_dict_imports_with_the_same_logits(vit_tiny, tmp_path: Path, suffix: str) -> None:
    file = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_safetensors(vit_tiny.state_dict(), file)
    else:
        torch.save(vit_tiny.state_dict(), file)

    imported = import_vit(file, model_name="vit_tiny_patch16_224")

    assert_same_function(imported, vit_tiny, images(224))
    assert (imported.source, imported.name, imported.image_size) == ("timm", "vit_tiny_patch16_224", 224)
    assert imported.model.encoder.layers[0].self_attention.num_heads == 3
    assert (imported.mean, imported.std) == (HALF, HALF)  # timm's for the name's default (AugReg) weights
    assert imported.classes == list(ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"])  # 1000 outputs: ImageNet-1k
    assert any("Normalisation" in note for note in imported.notes) and any("ImageNet-1k" in n for n in imported.notes)
    assert detect_format(file) == "timm"


def test_the_parity_check_catches_a_wrong_mapping(vit_tiny, tmp_path: Path) -> None:
    torch.save(vit_tiny.state_dict(), tmp_path / "tiny.pth")
    imported = import_vit(tmp_path / "tiny.pth", model_name="vit_tiny_patch16_224")
    in_proj = imported.model.encoder.layers[0].self_attention.in_proj_weight  # (3D, D): q, k, v
    with torch.no_grad():
        in_proj.copy_(torch.cat([in_proj[192:384], in_proj[:192], in_proj[384:]]))  # k and q swapped
        difference = (imported.model(images(224)) - vit_tiny(images(224))).abs().max()
    assert difference > 1e-3


def test_an_augreg_vit_base_imports_by_its_tagged_name(tmp_path: Path) -> None:
    model = timm_model("vit_base_patch16_224.augreg2_in21k_ft_in1k", seed=3)
    save_safetensors(model.state_dict(), tmp_path / "vit_base.safetensors")

    imported = import_vit(tmp_path / "vit_base.safetensors", model_name="vit_base_patch16_224.augreg2_in21k_ft_in1k")

    assert_same_function(imported, model, images(224))  # 12 heads: torchvision's fused inference kernel
    assert imported.name == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert (imported.mean, imported.std, imported.num_classes) == (HALF, HALF, 1000)


def test_timms_hub_folder_gives_size_normalisation_and_labels(tmp_path: Path) -> None:
    model = timm_model("vit_tiny_patch16_224", num_classes=3, img_size=64)
    labels = {"model_config": {"label_names": ["n01", "n02", "n03"],
                               "label_descriptions": {"n01": "tench", "n02": "goldfish", "n03": "shark"}}}
    save_for_hf(model, tmp_path / "hub", safe_serialization=True, **labels)

    imported = import_vit(tmp_path / "hub")

    assert_same_function(imported, model, images(64))
    assert (imported.image_size, imported.classes, imported.notes) == (64, ["tench", "goldfish", "shark"], ())
    assert imported.mean == tuple(json.loads((tmp_path / "hub" / "config.json").read_text())["pretrained_cfg"]["mean"])
    assert detect_format(tmp_path / "hub") == "timm"
    # The same weights without their config: the name says 224 px, the position embeddings a 4x4 grid.
    save_safetensors(model.state_dict(), tmp_path / "bare.safetensors")
    with pytest.raises(VitlabError, match=r"4x4 grid, so 64-px images.*says 224 px"):
        import_vit(tmp_path / "bare.safetensors", model_name="vit_tiny_patch16_224")


def test_a_patch32_hub_folder_of_pytorch_model_bin(tmp_path: Path) -> None:
    model = timm_model("vit_small_patch32_384", depth=2, num_classes=4)
    save_for_hf(model, tmp_path / "hub", safe_serialization=False)
    assert not (tmp_path / "hub" / "model.safetensors").exists()

    imported = import_vit(tmp_path / "hub")

    assert_same_function(imported, model, images(384))
    assert (imported.image_size, imported.model.patch_size, len(imported.model.encoder.layers)) == (384, 32, 2)
    assert imported.classes == ["class 0", "class 1", "class 2", "class 3"]


def test_a_headless_dino_model_gives_the_same_features(tmp_path: Path) -> None:
    model = timm_model("vit_small_patch16_224.dino", num_classes=0)
    save_for_hf(model, tmp_path / "dino", safe_serialization="both")

    imported = import_vit(tmp_path / "dino")

    assert_same_function(imported, model, images(224))  # (B, 384): the class token's final features
    assert (imported.name, imported.classes, imported.num_classes) == ("vit_small_patch16_224.dino", None, 0)
    assert isinstance(imported.model.heads.head, torch.nn.Identity)
    assert (imported.mean, imported.std, imported.notes) == (IMAGENET_MEAN, IMAGENET_STD, ())
    # Without its config.json, the tag alone gives DINO's normalisation, and a note says so.
    (tmp_path / "bare").mkdir()
    (tmp_path / "dino" / "model.safetensors").rename(tmp_path / "bare" / "dino.safetensors")
    bare = import_vit(tmp_path / "bare" / "dino.safetensors", model_name="vit_small_patch16_224.dino")
    assert (bare.mean, bare.std, bare.name) == (IMAGENET_MEAN, IMAGENET_STD, "vit_small_patch16_224.dino")
    assert "tag 'dino'" in bare.notes[0]


@pytest.mark.parametrize(("name", "kwargs", "misfit"), [
    ("deit_tiny_distilled_patch16_224", {}, "distillation token"),
    ("vit_little_patch16_reg4_gap_256", {}, "register tokens"),
    ("vit_tiny_patch16_224", {"global_pool": "avg"}, "global average pooling with fc_norm"),
    ("vit_tiny_patch16_224", {"init_values": 1e-5}, "layer scale"),
    ("vit_tiny_patch16_224", {"qk_norm": True}, "qk-norm"),
    ("vit_tiny_patch16_224", {"no_embed_class": True}, "no_embed_class=True"),
    ("vit_tiny_patch16_224", {"pre_norm": True}, "a pre-norm"),
    ("vit_tiny_patch16_224", {"global_pool": "map"}, "attention pooling"),
    ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg", "fc_norm": False}, "no class token"),
    ("beit_base_patch16_224", {"init_values": None}, "relative position bias"),
])
def test_timm_models_that_do_not_map_are_refused_by_name(tmp_path: Path, name: str, kwargs: dict, misfit: str):
    model = timm.create_model(name, pretrained=False, depth=1, **kwargs)
    save_safetensors(model.state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(VitlabError, match=re.escape(misfit)) as refused:
        import_vit(tmp_path / "model.safetensors", model_name=name)
    assert "does not map onto torchvision's VisionTransformer" in str(refused.value)


def test_options_only_the_config_shows_are_refused_from_it(tmp_path: Path) -> None:
    # Average pooling without fc_norm has a plain ViT's tensors: only timm's config.json tells.
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, global_pool="avg", fc_norm=False)
    save_for_hf(model, tmp_path / "hub", safe_serialization=True)
    with pytest.raises(VitlabError, match="global_pool='avg' in its config.json"):
        import_vit(tmp_path / "hub")


def test_unknown_and_missing_timm_names_are_refused(vit_tiny, tmp_path: Path) -> None:
    torch.save(vit_tiny.state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(VitlabError, match="Pass the timm name"):
        import_vit(tmp_path / "tiny.pth")
    with pytest.raises(VitlabError, match="'vit_huge_patch14_224' is not a timm ViT vitlab imports"):
        import_vit(tmp_path / "tiny.pth", model_name="vit_huge_patch14_224")
    with pytest.raises(VitlabError, match="width 192.*vit_small_patch16_224 is 12 blocks of width 384"):
        import_vit(tmp_path / "tiny.pth", model_name="vit_small_patch16_224")
    first_two = {k: v for k, v in vit_tiny.state_dict().items() if not re.match(r"blocks\.([2-9]|1\d)\.", k)}
    torch.save(first_two, tmp_path / "two_blocks.pth")
    with pytest.raises(VitlabError, match="holds 2 blocks of width 192.*is 12 blocks of width 192"):
        import_vit(tmp_path / "two_blocks.pth", model_name="vit_tiny_patch16_224")


def test_the_tag_table_agrees_with_timms_pretrained_configs() -> None:
    checked = 0
    for tagged in timm.list_models("vit_*", pretrained=True):
        if (match := FAMILY.match(tagged)) is None:
            continue
        cfg = timm.models.get_pretrained_cfg(tagged)
        mean, std = TAG_STATISTICS.get(match.group(5), (HALF, HALF))
        assert (mean, std) == (tuple(cfg.mean), tuple(cfg.std)), tagged
        assert cfg.input_size[1] == int(match.group(4)), tagged
        checked += 1
    assert checked > 30  # the family's AugReg, original, DINO, MAE, SAM and BAMBOO weights


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------------------------------------------

LABELS = {0: "cat", 1: "dog", 2: "eel"}


def hf_config(**overrides) -> transformers.ViTConfig:
    """A small ViTConfig: 2 layers of width 32, 4 heads, 8-px patches on 32-px images; layer_norm_eps left 1e-12."""
    settings = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                "image_size": 32, "patch_size": 8, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    return transformers.ViTConfig(**{**settings, **overrides})


def as_pytorch_model_bin(folder: Path) -> None:
    """The folder as transformers 4 wrote it with safe_serialization=False (transformers 5 writes safetensors only)."""
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


@pytest.mark.parametrize(("qkv_bias", "layout"), [(True, "safetensors"), (False, "bin"), (True, "shards")])
def test_a_hugging_face_classifier_imports_with_the_same_logits(tmp_path: Path, qkv_bias: bool, layout: str):
    model = randomise(transformers.ViTForImageClassification(hf_config(qkv_bias=qkv_bias)))
    folder = tmp_path / "vit-small-test"
    model.save_pretrained(folder, **({"max_shard_size": "20KB"} if layout == "shards" else {}))
    if layout == "bin":
        as_pytorch_model_bin(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3],
                                   image_std=[0.4, 0.5, 0.6]).save_pretrained(folder)

    imported = import_vit(folder)

    assert_same_function(imported, lambda x: model(pixel_values=x).logits, images(32))
    assert (imported.source, imported.name, imported.image_size) == ("huggingface", "vit-small-test", 32)
    assert (imported.classes, imported.mean, imported.std) == (["cat", "dog", "eel"], (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert imported.model.encoder.ln.eps == 1e-12 and imported.model.encoder.layers[0].ln_1.eps == 1e-12
    assert detect_format(folder) == "huggingface"
    if layout == "shards":
        assert len(list(folder.glob("model-*.safetensors"))) > 1


@pytest.mark.parametrize("pooler", [True, False])
def test_a_hugging_face_vit_model_gives_the_same_features(tmp_path: Path, pooler: bool) -> None:
    model = randomise(transformers.ViTModel(hf_config(), add_pooling_layer=pooler))
    model.save_pretrained(tmp_path / "vit")

    imported = import_vit(tmp_path / "vit")

    reference = (lambda x: model(pixel_values=x).pooler_output) if pooler else \
        (lambda x: model(pixel_values=x).last_hidden_state[:, 0])  # (B, D): the class token's final features
    assert_same_function(imported, reference, images(32))
    assert (imported.classes, imported.num_classes, imported.mean) == (None, 0, HALF)
    assert hasattr(imported.model.heads, "pre_logits") == pooler  # torchvision's representation layer + Tanh
    assert "ViTImageProcessor" in imported.notes[0]  # no preprocessor_config.json: the default, said


def test_transformers_5_in_memory_names_import_too(tmp_path: Path) -> None:
    model = randomise(transformers.ViTForImageClassification(hf_config()))
    model.save_pretrained(tmp_path / "vit", save_original_format=False)
    imported = import_vit(tmp_path / "vit" / "model.safetensors")  # the weights file, config.json beside it
    assert_same_function(imported, lambda x: model(pixel_values=x).logits, images(32))


@pytest.mark.parametrize("activation", ["gelu_new", "relu"])
def test_a_hugging_face_activation_other_than_exact_gelu_is_refused(tmp_path: Path, activation: str) -> None:
    transformers.ViTModel(hf_config(hidden_act=activation)).save_pretrained(tmp_path / "vit")
    with pytest.raises(VitlabError, match=f"hidden_act='{activation}', not the exact GELU"):
        import_vit(tmp_path / "vit")


def test_hugging_face_misfits_and_missing_configs_are_refused(tmp_path: Path) -> None:
    transformers.ViTModel(hf_config()).save_pretrained(tmp_path / "vit")
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    (tmp_path / "vit" / "config.json").write_text(json.dumps({**config, "model_type": "dinov2"}))
    with pytest.raises(VitlabError, match="Hugging Face 'dinov2' model"):
        import_vit(tmp_path / "vit")
    with pytest.raises(VitlabError, match="model_name=.* names a timm model"):
        import_vit(tmp_path / "vit", model_name="vit_base_patch16_224")
    (tmp_path / "vit" / "config.json").unlink()
    with pytest.raises(VitlabError, match="without their config.json"):
        import_vit(tmp_path / "vit" / "model.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# Paths, routing, and studying the imported model
# ---------------------------------------------------------------------------------------------------------------


def test_paths_in_neither_format_are_refused_and_not_routed(tmp_path: Path) -> None:
    with pytest.raises(VitlabError, match="No file or folder at"):
        import_vit(tmp_path / "missing")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"arch": "vit_tiny"}))  # a vitlab run's settings
    with pytest.raises(VitlabError, match="without a timm or Hugging Face config.json"):
        import_vit(tmp_path / "run")
    torch.save(build_model("vit_tiny", 4, pretrained=False).state_dict(), tmp_path / "run" / "tv.pth")
    with pytest.raises(VitlabError, match="neither timm's nor Hugging Face's.*build_model"):
        import_vit(tmp_path / "run" / "tv.pth")
    torch.save({"format": "vitlab-checkpoint-v1", "model": {"conv_proj.weight": torch.zeros(1)}}, tmp_path / "c.pt")
    for path in ("missing", "run", "run/tv.pth", "c.pt"):
        assert detect_format(tmp_path / path) is None, path


def test_capture_records_every_block_of_an_imported_model(vit_tiny, tmp_path: Path) -> None:
    torch.save(vit_tiny.state_dict(), tmp_path / "tiny.pth")
    imported = import_vit(tmp_path / "tiny.pth", model_name="vit_tiny_patch16_224")
    inputs = images(224)
    with torch.no_grad():
        logits, captured = capture_forward(imported.model, inputs)
        torch.testing.assert_close(logits, vit_tiny(inputs), **TOLERANCE)
    assert len(captured.attentions) == 12
    assert all(a.shape == (2, 3, 197, 197) for a in captured.attentions)  # (B, heads, 1 + 14*14, 1 + 14*14)
    torch.testing.assert_close(captured.attentions[5].sum(-1), torch.ones(2, 3, 197))
    assert captured.patch_embeddings.shape == (2, 196, 192) and captured.geometry.grid_size == 14


def test_batch_transform_normalises_with_the_imported_statistics() -> None:
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 0.75)
    ours = BatchTransform(32, train=False, mean=mean, std=std)(pixels)  # (B, 3, 32, 32): no resize at 32
    expected = (pixels / 255.0 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(denormalize(ours, mean=mean, std=std), (pixels / 255.0))
    default = BatchTransform(32, train=False)  # unchanged: ImageNet's statistics
    assert torch.equal(default.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.equal(default.std.flatten(), torch.tensor(IMAGENET_STD))
    with pytest.raises(ValueError, match="std positive"):
        BatchTransform(32, train=False, std=(0.5, 0.0, 0.5))


def test_damaged_files_and_statistics_are_refused_and_half_precision_is_said(vit_tiny, tmp_path: Path) -> None:
    save_safetensors(vit_tiny.state_dict(), tmp_path / "tiny.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "tiny.safetensors").read_bytes()[:5000])
    with pytest.raises(VitlabError, match="not a readable safetensors file"):
        import_vit(tmp_path / "cut.safetensors", model_name="vit_tiny_patch16_224")
    torch.save({k: v.half() for k, v in vit_tiny.state_dict().items()}, tmp_path / "half.pth")
    half = import_vit(tmp_path / "half.pth", model_name="vit_tiny_patch16_224")
    assert "Weights stored as float16: converted to float32." in half.notes
    assert {p.dtype for p in half.model.parameters()} == {torch.float32}
    folder = tmp_path / "hf"
    transformers.ViTModel(hf_config()).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5], "image_std": 0.5}))
    with pytest.raises(VitlabError, match="preprocessor_config.json gives mean"):
        import_vit(folder)
