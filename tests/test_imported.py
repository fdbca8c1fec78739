"""`python -m vitlab.finetune --pretrained PATH` on timm and Hugging Face checkpoints (vitlab.training.imported).

The models are random-weight ViTs that timm and transformers build and save in their own formats
(tests/vit_sources.py). A run trains one epoch of the shapes, and the model `load_trained_model` rebuilds from the
run folder alone must give the run's own test loss: the same weights, and the model's own normalisation (not
ImageNet's) on the way in.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from vit_sources import MEAN, STD, randomise, save_hf_classifier

from vitlab.data import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, load_dataset
from vitlab.external import import_vit
from vitlab.training import finetune
from vitlab.training.checkpoint import load_checkpoint, load_trained_model
from vitlab.training.config import make_config
from vitlab.training.flags import explicit_flags

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py

# One epoch of 96 shapes per split at the notebook recipe (plain cross-entropy: the test loss is recomputable).
SHORT = ["--dataset", "shapes", "--subset", "96", "--epochs", "1", "--recipe", "notebook", "--batch-size", "32",
         "--quiet"]


def loss_on_test(model: torch.nn.Module, mean, std, subset: int = 96) -> float:
    """Mean cross-entropy of `model` over the first `subset` shapes test images, normalised with mean and std."""
    test = load_dataset("shapes", subset=subset).test
    transform = BatchTransform(model.image_size, train=False, mean=mean, std=std)
    with torch.no_grad():
        logits = model(transform(test.images))  # (N, classes)
    return F.cross_entropy(logits, test.labels).item()


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source folder, run folder): a 1-epoch run of the last block of a saved Hugging Face classifier."""
    root = tmp_path_factory.mktemp("hf")
    save_hf_classifier(root / "vit-hf")
    out = root / "run"
    assert finetune.main([*SHORT, "--pretrained", str(root / "vit-hf"), "--trainable-blocks", "1",
                          "--out", str(out)]) == 0
    return root / "vit-hf", out


def test_a_hugging_face_run_reloads_with_its_own_test_loss_and_statistics(hf_run) -> None:
    _, out = hf_run
    summary = json.loads((out / "summary.json").read_text())
    model, checkpoint = load_trained_model(out)
    assert checkpoint["config"]["arch"] == "imported" and checkpoint["classes"] == ["circle", "square", "triangle",
                                                                                   "cross"]
    assert checkpoint["config"]["imported"]["mean"] == list(MEAN)
    assert loss_on_test(model, MEAN, STD) == pytest.approx(summary["test_loss"], rel=1e-5)
    assert loss_on_test(model, IMAGENET_MEAN, IMAGENET_STD) != pytest.approx(summary["test_loss"], rel=1e-5)
    from_safetensors, _ = load_trained_model(out / "model.safetensors")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), from_safetensors(images))


def test_the_frozen_blocks_hold_the_imported_weights_and_the_trained_one_moved(hf_run) -> None:
    source, out = hf_run
    trained, _ = load_trained_model(out)
    start = import_vit(source).model
    (frozen, last), (frozen_start, last_start) = trained.encoder.layers, start.encoder.layers
    for name, value in frozen.state_dict().items():
        assert torch.equal(value, frozen_start.state_dict()[name]), name
    assert torch.equal(trained.conv_proj.weight, start.conv_proj.weight)
    moved = [name for name, value in last.state_dict().items() if not torch.equal(value, last_start.state_dict()[name])]
    assert moved  # the last block trained
    assert trained.heads.head.out_features == 4


def test_the_model_card_names_the_import_and_its_command_remakes_the_settings(hf_run) -> None:
    source, out = hf_run
    card = (out / "MODEL_CARD.md").read_text()
    assert "# Model card: vit-hf (huggingface) fine-tuned on shapes" in card
    assert "`vit-hf` imported from huggingface" in card and "mean (0.2, 0.3, 0.4)" in card
    command = card.split("```bash\n")[1].split("\n```")[0]
    assert "--arch" not in command and f"--pretrained {source}" in command
    saved = json.loads((out / "config.json").read_text())
    remade = make_config(explicit_flags(shlex.split(command)[3:]))
    differs = {name for name, value in vars(remade).items() if saved[name] != value}
    assert differs <= {"preset", "quiet", "out"}, differs


@pytest.mark.slow
def test_a_timm_state_dict_named_on_the_command_line_trains_and_resumes_without_its_file(tmp_path: Path) -> None:
    """vit_tiny_patch16_224 at full depth (12 blocks) as a bare safetensors file: --timm-name says which ViT it is."""
    import timm
    from safetensors.torch import save_file

    model = randomise(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    file = tmp_path / "tiny.safetensors"
    save_file(model.state_dict(), str(file))
    out = tmp_path / "run"
    assert finetune.main([*SHORT, "--pretrained", str(file), "--timm-name", "vit_tiny_patch16_224",
                          "--image-size", "32", "--out", str(out)]) == 0
    spec = json.loads((out / "config.json").read_text())["imported"]
    assert (spec["name"], spec["native_image_size"], spec["vit"]["image_size"]) == ("vit_tiny_patch16_224", 224, 32)
    assert (spec["vit"]["num_layers"], spec["mean"]) == (12, [0.5, 0.5, 0.5])  # timm's pretrained_cfg for the name
    file.unlink()  # the spec rebuilds the model: a resumed run needs only its folder
    assert finetune.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert load_checkpoint(out)["epoch"] == 2
    trained, _ = load_trained_model(out)
    summary = json.loads((out / "summary.json").read_text())
    assert loss_on_test(trained, (0.5,) * 3, (0.5,) * 3) == pytest.approx(summary["test_loss"], rel=1e-5)
