"""Tests for `--image-size` / `build_model(image_size=...)`, and the laptop preset that uses it.

Known answers: at the native size the model is bit-identical to one built without the option; at another size the
position embeddings equal torchvision's own `interpolate_embeddings` of the pretrained grid, with the class token's
row untouched; capture's grid is the new one; a run trained at 16 px reloads at 16 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.models.vision_transformer import interpolate_embeddings

from vitlab.bench.epoch import bench_laptop_estimate, estimate_minutes, run_counts
from vitlab.bench.measure import Settings
from vitlab.bench.rows import bench_resolution_step
from vitlab.capture import capture_forward
from vitlab.errors import VitlabError
from vitlab.model import build_model, load_state_dict_file
from vitlab.shipped import shipped_base_file
from vitlab.training import finetune
from vitlab.training.checkpoint import load_checkpoint, load_trained_model
from vitlab.training.config import make_config
from vitlab.training.resume import ON_RESUME

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# The model at another size
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "pretrained", "native"), [
    ("vit_tiny", True, 32), pytest.param("vit_b_16", False, 224, marks=pytest.mark.slow)])
def test_the_native_size_is_bit_identical_to_leaving_the_option_out(arch: str, pretrained: bool, native: int):
    built = []
    for size in (None, native):
        torch.manual_seed(0)  # the same seed: the fresh head (and, random, the body) draw the same numbers
        built.append(build_model(arch, 10, pretrained=pretrained, trainable_blocks=2, image_size=size).eval())
    without, with_native = built
    x = images(2, native)
    with torch.no_grad():
        assert torch.equal(without(x), with_native(x))
    assert with_native.image_size == native and with_native.seq_length == (native // without.patch_size) ** 2 + 1
    if pretrained:  # the shipped base is loaded untouched, position embeddings included
        base = load_state_dict_file(shipped_base_file())
        assert torch.equal(with_native.encoder.pos_embedding, base["encoder.pos_embedding"])


def test_another_size_interpolates_the_pretrained_grid_with_torchvision():
    base = load_state_dict_file(shipped_base_file())  # vit_tiny's shipped base: an 8x8 grid of 4-px patches
    model = build_model("vit_tiny", 4, pretrained=True, trainable_blocks=2, image_size=48).eval()
    expected = interpolate_embeddings(48, 4, dict(base))["encoder.pos_embedding"]  # (1, 1 + 12*12, 64)
    got = model.encoder.pos_embedding
    assert got.shape == (1, 145, 64) and base["encoder.pos_embedding"].shape == (1, 65, 64)
    assert torch.equal(got, expected)
    assert torch.equal(got[:, 0], base["encoder.pos_embedding"][:, 0])  # the class token's row is not interpolated
    assert not torch.equal(got[:, 1:65], base["encoder.pos_embedding"][:, 1:])  # the grid did change
    # Everything else is the base's, unchanged.
    assert torch.equal(model.conv_proj.weight, base["conv_proj.weight"])
    assert torch.equal(model.encoder.layers[0].mlp[0].weight, base["encoder.layers.encoder_layer_0.mlp.0.weight"])
    assert (model.image_size, model.seq_length) == (48, 145)
    logits, captured = capture_forward(model, images(2, 48))
    assert logits.shape == (2, 4)
    assert captured.geometry.grid_size == 12 and captured.geometry.num_tokens == 145
    assert captured.attentions[0].shape == (2, 4, 145, 145)


def test_vit_b_16_at_112_px_has_a_7x7_grid_and_a_working_forward():
    torch.manual_seed(0)
    model = build_model("vit_b_16", 10, pretrained=False, trainable_blocks=0, image_size=112).eval()
    assert model.encoder.pos_embedding.shape == (1, 50, 768)
    logits, captured = capture_forward(model, images(1, 112))
    assert captured.geometry.grid_size == 7
    assert captured.attentions[-1].shape == (1, 12, 50, 50)
    assert torch.allclose(captured.attentions[-1].sum(-1), torch.ones(1, 12, 50), atol=1e-5)
    with torch.no_grad():
        assert torch.equal(logits, model(images(1, 112)))  # capture changes nothing at the new size either


@pytest.mark.parametrize("size", [100, 8, 2048, 224.0])
def test_build_model_refuses_a_size_that_is_not_a_multiple_of_the_patch_or_out_of_range(size):
    with pytest.raises(VitlabError, match="a multiple of 16 \\(vit_b_16's patch size\\) from 32 to 1024"):
        build_model("vit_b_16", 10, pretrained=False, image_size=size)


# ---------------------------------------------------------------------------------------------------------------
# The command line: rules, resume, a run at another size
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["--image-size", "100"], "--image-size 100 is not allowed: it must be a multiple of 16 (vit_b_16's patch size) "
                              "from 32 to 1024 (for example --image-size 112)."),
    (["--arch", "vit_tiny", "--image-size", "30"], "a multiple of 4 (vit_tiny's patch size) from 8 to 1024"),
    (["--arch", "vit_h_14", "--image-size", "2000"], "a multiple of 14 (vit_h_14's patch size) from 28 to 1022"),
])
def test_config_rules_refuse_a_bad_image_size_with_exit_2(argv: list[str], expected: str, capsys, tmp_path: Path):
    assert finetune.main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_the_size_left_out_resolves_to_the_weights_native_size():
    assert make_config({}).image_size == 224
    assert make_config({"weights": "IMAGENET1K_SWAG_E2E_V1"}).image_size == 384  # SWAG's end-to-end weights
    assert make_config({"arch": "vit_h_14"}).image_size == 518  # its default weights are SWAG_E2E
    assert make_config({"arch": "vit_tiny"}).image_size == 32
    assert make_config({"image_size": 112}).image_size == 112
    assert ON_RESUME["image_size"] == "weights"


@pytest.fixture(scope="module")
def run_at_16_px(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch demo-sized run of vit_tiny at 16 px (a 4x4 grid instead of 8x8)."""
    out = tmp_path_factory.mktemp("image_size") / "run16"
    code = finetune.main(["--preset", "demo", "--image-size", "16", "--epochs", "1", "--subset", "128", "--quiet",
                          "--device", "cpu", "--out", str(out)])
    assert code == 0
    return out


@pytest.mark.slow  # the run at 16 px: about 20 s on a busy 2-core CPU
def test_a_run_at_16_px_records_its_size_and_reloads_at_it(run_at_16_px: Path):
    assert json.loads((run_at_16_px / "config.json").read_text())["image_size"] == 16
    model, checkpoint = load_trained_model(run_at_16_px)
    assert checkpoint["config"]["image_size"] == 16
    assert (model.image_size, model.seq_length) == (16, 17)
    assert torch.equal(model.encoder.pos_embedding, checkpoint["model"]["encoder.pos_embedding"])
    logits, captured = capture_forward(model, images(3, 16))
    assert logits.shape == (3, len(checkpoint["classes"])) and captured.geometry.grid_size == 4


@pytest.mark.slow  # the run at 16 px: about 20 s on a busy 2-core CPU
def test_resume_with_another_size_is_refused(run_at_16_px: Path, capsys):
    assert finetune.main(["--resume", str(run_at_16_px), "--image-size", "32", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "Cannot resume" in err and "--image-size 32" in err and "image_size=16" in err
    assert load_checkpoint(run_at_16_px)["epoch"] == 1  # nothing ran


@pytest.mark.slow  # the run at 16 px: about 20 s on a busy 2-core CPU
def test_resume_without_the_flag_keeps_the_saved_size(run_at_16_px: Path):
    from vitlab.training.resume import resume_config

    config, _ = resume_config({"resume": str(run_at_16_px)})
    assert config.image_size == 16


# ---------------------------------------------------------------------------------------------------------------
# The laptop preset and its bench rows
# ---------------------------------------------------------------------------------------------------------------


def test_the_laptop_preset_resolves_to_valid_settings():
    config = make_config({"preset": "laptop"})  # make_config runs every rule of vitlab.cli
    assert (config.arch, config.weights, config.pretrained) == ("vit_b_16", "IMAGENET1K_V1", "imagenet")
    assert config.image_size == 112 and config.image_size % 16 == 0  # a 7x7 grid: 50 tokens instead of 197
    assert config.cache_trunk and config.max_rotation == 0.0 and config.trainable_blocks == 3
    assert config.dataset == "cifar100" and config.subset is not None
    counts = run_counts(config)
    assert counts["train"] == min(config.subset, 50_000 - config.val_size)
    assert counts["test"] == min(config.subset, 10_000)


def test_the_estimate_adds_each_phase_at_its_measured_rate():
    rates = {"trunk": 100.0, "train_top": 50.0, "val_top": 200.0, "test_full": 40.0}
    minutes = estimate_minutes(rates, {"train": 1000, "val": 400, "test": 600}, epochs=3)
    # cache: (2 * 1000 + 400) / 100 = 24 s; train: 3 * 1000 / 50 = 60 s; val: 3 * 400 / 200 = 6 s; test: 15 s.
    assert minutes["cache"] == pytest.approx(24 / 60) and minutes["train"] == pytest.approx(1.0)
    assert minutes["total"] == pytest.approx((24 + 60 + 6 + 15) / 60)


def test_the_resolution_and_laptop_rows_run_on_the_tiny_model():
    settings = Settings(device=torch.device("cpu"), quick=True, repeats=1, batch_size=4, arch="vit_tiny")
    row = bench_resolution_step(settings, 16, reference=32)
    assert row["row"] == "train_step_16" and row["unit"] == "images/s" and row["ratio"] == row["vitlab"] / row[
        "baseline"]
    config = make_config({"arch": "vit_tiny", "dataset": "shapes", "image_size": 16, "batch_size": 4,
                          "trainable_blocks": 2, "cache_trunk": True, "epochs": 2, "subset": 100})
    row = bench_laptop_estimate(settings, config)
    assert row["counts"] == {"train": 100, "val": 100, "test": 100}
    assert row["vitlab"] == pytest.approx(estimate_minutes(row["rates"], row["counts"], 2)["total"])
