"""timm and Hugging Face checkpoints in the explorer's runs folder (vitlab.explorer.imported): listed, fenced, and
explored with their own class names and the function their library computes.

The explorer feeds every model ImageNet-normalised pixels; an imported model is re-expressed to take them, so its
probabilities must equal the source library's own on the model's own normalisation of the same image.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from vit_sources import LABELS, MEAN, STD, save_hf_classifier, save_hf_features, save_timm_hub

from vitlab.errors import CheckpointError
from vitlab.explorer.sources import list_runs, load_model_source, resolve_checkpoint, source_stamp
from vitlab.explorer.views import analyse_image

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """(runs folder holding vit-hf/ and vit-timm/, the Hugging Face model, the timm model)."""
    root = tmp_path_factory.mktemp("explorer") / "runs"
    hf = save_hf_classifier(root / "vit-hf")
    timm_model = save_timm_hub(root / "vit-timm")
    (root / "notes").mkdir()  # a folder that is no checkpoint: not listed
    return root, hf, timm_model


def test_the_runs_folder_lists_timm_and_hugging_face_checkpoints(runs) -> None:
    root, _, _ = runs
    assert sorted(path.name for path in list_runs(root)) == ["vit-hf", "vit-timm"]


def test_a_hugging_face_checkpoint_is_explored_with_its_labels_and_its_own_function(runs) -> None:
    root, hf, _ = runs
    path = resolve_checkpoint("vit-hf", root)
    loaded = load_model_source("checkpoint", path)
    assert loaded.classes == list(LABELS.values()) and "vit-hf imported from huggingface" in loaded.description
    image = loaded.images.images[0]  # uint8 (3, 32, 32): the model's own size
    own = (image.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        expected = hf(pixel_values=own[None]).logits[0].softmax(dim=-1)  # (3,)
    torch.testing.assert_close(analyse_image(loaded.model, image).probs, expected, atol=1e-5, rtol=0)
    assert source_stamp("checkpoint", path).startswith("imported:")


def test_a_timm_hub_folder_is_explored_with_timms_own_function(runs) -> None:
    root, _, timm_model = runs
    loaded = load_model_source("checkpoint", resolve_checkpoint(root / "vit-timm", root))
    image = loaded.images.images[1]
    own = (image.float() / 255 - 0.5) / 0.5  # timm's pretrained_cfg statistics
    with torch.no_grad():
        expected = timm_model(own[None])[0].softmax(dim=-1)  # (5,)
    torch.testing.assert_close(analyse_image(loaded.model, image).probs, expected, atol=1e-5, rtol=0)
    assert loaded.classes == [f"class {index}" for index in range(5)]


def test_a_checkpoint_whose_weights_lie_outside_the_runs_folder_is_neither_listed_nor_read(runs, tmp_path) -> None:
    root, _, _ = runs
    outside = tmp_path / "elsewhere"
    shutil.copytree(root / "vit-hf", outside)
    linked = root.parent / "linked_runs"
    (linked / "vit-linked").mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(outside / name, linked / "vit-linked" / name)
    (linked / "vit-linked" / "model.safetensors").symlink_to(outside / "model.safetensors")
    assert list_runs(linked) == []
    with pytest.raises(CheckpointError, match="reads files outside the runs folder"):
        resolve_checkpoint("vit-linked", linked)


def test_a_headless_checkpoint_is_refused_with_how_to_give_it_a_head(tmp_path: Path) -> None:
    from vitlab.explorer.imported import load_imported

    folder = tmp_path / "runs" / "vit-features"
    save_hf_features(folder)
    with pytest.raises(CheckpointError) as refused:
        load_imported(folder)
    message = str(refused.value)
    assert "no classification head" in message and "the explorer has no predictions to show" in message
    assert f"python -m vitlab.finetune --pretrained {folder} --out runs/NAME" in message
