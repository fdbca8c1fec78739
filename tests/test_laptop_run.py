"""tests/plant_laptop_run.py: what it plants is what the laptop preset reads (checked with small stand-ins only:
the real run takes about 20 minutes and is the integrator's, see docs/laptop-run.md)."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import torch

from vitlab.archs import weights_cache_file
from vitlab.data import load_dataset
from vitlab.model import build_model, load_state_dict_file
from vitlab.training import finetune

TOOL = Path(__file__).resolve().parent / "plant_laptop_run.py"
spec = importlib.util.spec_from_file_location("plant_laptop_run", TOOL)
plant = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plant)

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py
# ViT-B/16's 12 blocks (so every tensor name is ViT-B/16's) at a tiny width.
STAND_IN = {"image_size": 32, "patch_size": 16, "num_layers": 12, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}


def test_planted_cifar100_loads_through_torchvision_with_its_pixels(tmp_path: Path) -> None:
    import torchvision

    real_check = torchvision.datasets.CIFAR100._check_integrity
    plant.plant_cifar100(tmp_path, {"train": 60, "test": 20})
    with plant.trusting_planted_cifar():
        splits = load_dataset("cifar100", tmp_path, val_size=10, download=False)
    rows = pickle.loads((tmp_path / "cifar-100-python" / "test").read_bytes())
    first = torch.from_numpy(rows["data"][0].reshape(3, 32, 32))  # 1024 red, 1024 green, 1024 blue
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 20)
    assert torch.equal(splits.test.images[0], first) and splits.test.labels[0] == rows["fine_labels"][0]
    assert splits.classes[:2] == ["class_00", "class_01"]
    assert torchvision.datasets.CIFAR100._check_integrity is real_check  # the bypass ends with the block


def test_planted_weights_lie_where_the_preset_reads_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = plant.plant_vit_weights(tmp_path / "torch", shape=STAND_IN)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert file == weights_cache_file("vit_b_16")
    planted = load_state_dict_file(file)
    assert planted.keys() == build_model("vit_b_16", 1000, pretrained=False).state_dict().keys()
    assert planted["heads.head.weight"].shape == (1000, 16)


def test_a_run_on_planted_cifar100_trains_and_tests_every_planted_image(tmp_path: Path) -> None:
    plant.plant_cifar100(tmp_path / "data", {"train": 60, "test": 20})
    with plant.trusting_planted_cifar():
        code = finetune.main(["--arch", "vit_tiny", "--pretrained", "none", "--dataset", "cifar100", "--data-dir",
                              str(tmp_path / "data"), "--val-size", "10", "--epochs", "1", "--batch-size", "16",
                              "--quiet", "--out", str(tmp_path / "run")])
    assert code == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test_images"] == 20
