"""The demo's localisation scores, loading weights across head sizes, and how the demo model is trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.models import VisionTransformer

from vitlab.analysis.localization import localization_scores
from vitlab.data import load_dataset
from vitlab.model import build_model
from vitlab.training import demo, finetune
from vitlab.training.checkpoint import LAST
from vitlab.training.config import PRESETS, make_config


def test_localization_scores_resize_masks_to_the_models_input() -> None:
    # A 64x64-input model scoring 32x32 shapes: the masks must be resized like the images (16 patches, not 4).
    torch.manual_seed(0)
    model = VisionTransformer(image_size=64, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    scores = localization_scores(model, load_dataset("shapes").test.take(8))
    assert 0.0 <= scores["pointing_game"] <= 1.0 and scores["attention_mass_ratio"] > 0


def test_localization_scores_known_answer_for_uniform_attention() -> None:
    # Zero query/key projections make attention uniform, so plain rollout is flat: mass ratio exactly 1 (chance).
    # (With discarding, uniform rows are all ties, so which half goes is arbitrary: no known answer there.)
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=4, pretrained=False)
    with torch.no_grad():
        for block in model.encoder.layers:
            hidden = block.self_attention.embed_dim
            block.self_attention.in_proj_weight[: 2 * hidden] = 0
            block.self_attention.in_proj_bias[: 2 * hidden] = 0
    scores = localization_scores(model, load_dataset("shapes").test.take(16))
    assert abs(scores["attention_mass_ratio_no_discard"] - 1.0) < 1e-4


def test_a_state_dict_with_another_head_size_keeps_the_body(tmp_path: Path) -> None:
    torch.manual_seed(1)
    four_classes = build_model("vit_tiny", num_classes=4, pretrained=False)
    torch.save(four_classes.state_dict(), tmp_path / "four.pt")
    two_classes = build_model("vit_tiny", num_classes=2, pretrained=tmp_path / "four.pt")
    assert two_classes.heads.head.out_features == 2
    body = "encoder.layers.encoder_layer_2.mlp.0.weight"
    assert torch.equal(two_classes.state_dict()[body], four_classes.state_dict()[body])


def test_the_demo_trains_through_train_and_test_and_resumes_an_interrupted_run(
    demo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(finetune, "main", lambda argv=None: pytest.fail("the demo must not build a command line"))
    monkeypatch.setattr(finetune, "train_and_test",
                        lambda config, checkpoint=None: calls.append((config, checkpoint)) or {})
    fresh = tmp_path / "fresh"
    demo.train_demo(fresh)
    assert calls.pop() == (make_config({"preset": "demo", "out": str(fresh), "quiet": True}), None)
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copy(demo_cache / "demo" / LAST, interrupted / LAST)  # as if stopped after the last epoch's save
    demo.train_demo(interrupted)
    config, checkpoint = calls.pop()
    assert config.resume == config.out == str(interrupted)
    assert checkpoint["epoch"] == config.epochs == PRESETS["demo"]["epochs"]


def test_a_cached_demo_made_with_other_settings_is_kept_aside_and_todays_trains(
    demo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An older vitlab's demo (the synthetic shapes) left in the cache must not pass for today's demo on the photos.
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache / "demo", cache / "demo")
    config = json.loads((cache / "demo" / "config.json").read_text())
    (cache / "demo" / "config.json").write_text(json.dumps(config | {"dataset": "shapes"}))
    assert demo.stale_settings(cache / "demo") == {"dataset": ("shapes", "fashion")}
    trained = []
    monkeypatch.setattr(demo, "train_demo", lambda run_dir, quiet=True: trained.append(run_dir)
                        or shutil.copytree(demo_cache / "demo", run_dir))  # stands in for the 40-s training

    model, splits = demo.load_demo_model(cache)

    assert trained == [cache / "demo"] and demo.stale_settings(cache / "demo") == {}
    kept = cache / "demo-old-1"  # nothing of the old run is deleted
    assert json.loads((kept / "config.json").read_text())["dataset"] == "shapes"
    assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in (demo_cache / "demo").iterdir())
    said = capsys.readouterr().err
    assert "dataset 'shapes' (now 'fashion')" in said and "Training the demo model once" in said
    assert splits.classes == load_dataset("fashion").classes and model.num_classes == 10


def test_todays_demo_is_not_stale_and_an_unreadable_config_is(demo_cache: Path, tmp_path: Path) -> None:
    assert demo.stale_settings(demo_cache / "demo") == {}
    assert demo.stale_settings(tmp_path / "nothing-yet") == {}
    (tmp_path / "config.json").write_text("{")
    assert demo.stale_settings(tmp_path) == {"config.json": ("unreadable", "readable")}
