"""What a run hands a practitioner: TensorBoard events, metrics.csv, model.safetensors and MODEL_CARD.md."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pytest
import safetensors.torch
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vitlab.errors import CheckpointError
from vitlab.training import finetune
from vitlab.training.checkpoint import load_checkpoint, load_trained_model
from vitlab.training.config import make_config
from vitlab.training.flags import explicit_flags
from vitlab.training.model_card import command_line
from vitlab.training.run_log import CSV_COLUMNS, overlay_grid

SMALL = ["--preset", "demo", "--epochs", "2", "--subset", "256", "--quiet"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artefacts") / "run"
    assert finetune.main([*SMALL, "--out", str(out)]) == 0
    return out


def test_metrics_csv_holds_one_row_per_epoch_equal_to_the_history(run_folder: Path) -> None:
    history = json.loads((run_folder / "history.json").read_text())
    with (run_folder / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    for row, record in zip(rows, history, strict=True):
        for column in CSV_COLUMNS:
            assert float(row[column]) == pytest.approx(record[column], rel=1e-12)
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])  # the cosine schedule ends at 0


def test_tensorboard_holds_every_scalar_and_the_attention_images_each_epoch(run_folder: Path) -> None:
    events = EventAccumulator(str(run_folder), size_guidance={"images": 0}).Reload()
    history = json.loads((run_folder / "history.json").read_text())
    for tag, key in (("loss/train", "train_loss"), ("loss/val", "val_loss"), ("accuracy/val", "val_acc"),
                     ("learning_rate", "lr"), ("images_per_second", "images_per_second")):
        logged = events.Scalars(tag)
        assert [event.step for event in logged] == [1, 2]
        assert [event.value for event in logged] == pytest.approx([record[key] for record in history], rel=1e-6)
    for tag in ("attention/class_token_last_block", "attention/rollout"):
        images = events.Images(tag)
        assert [image.step for image in images] == [1, 2]
        assert images[0].width == 8 * (96 + 2) + 2  # eight 96-px tiles in one row


def test_model_safetensors_holds_best_pt_and_loads_as_the_same_model(run_folder: Path) -> None:
    best = load_checkpoint(run_folder / "best.pt", purpose="study")
    tensors = safetensors.torch.load_file(str(run_folder / "model.safetensors"))  # the safetensors library alone
    assert tensors.keys() == best["model"].keys()
    assert all(torch.equal(tensors[name], best["model"][name]) for name in tensors)
    images = torch.randn(3, 3, 32, 32)
    from_pt, _ = load_trained_model(run_folder / "best.pt")
    from_safetensors, checkpoint = load_trained_model(run_folder / "model.safetensors")
    assert checkpoint["classes"] == best["classes"] and checkpoint["config"] == best["config"]
    with torch.no_grad():
        assert torch.equal(from_pt(images), from_safetensors(images))


def test_a_folder_with_only_model_safetensors_is_studied_but_not_resumed(run_folder: Path, tmp_path: Path) -> None:
    only = tmp_path / "weights_only"
    only.mkdir()
    (only / "model.safetensors").write_bytes((run_folder / "model.safetensors").read_bytes())
    model, _ = load_trained_model(only)
    full, _ = load_trained_model(run_folder)
    assert model.heads.head.out_features == full.heads.head.out_features == 10  # the 10 classes of the photos
    assert torch.equal(model.heads.head.weight, full.heads.head.weight)
    with pytest.raises(CheckpointError, match="holds weights only"):
        load_checkpoint(only / "model.safetensors", purpose="resume")
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a model.safetensors written by"):
        load_trained_model(foreign)


def test_the_model_card_states_the_measured_result_and_a_command_that_remakes_the_run(run_folder: Path) -> None:
    card = (run_folder / "MODEL_CARD.md").read_text()
    summary = json.loads((run_folder / "summary.json").read_text())
    assert f"{summary['test_acc']:.2%} on {summary['test_images']:,} test images" in card
    assert f"{summary['wall_seconds']:.1f} s" in card and "`vit_tiny` at 32 px" in card
    assert (run_folder / "attention.png").stat().st_size > 10_000 and "](attention.png)" in card
    command = card.split("```bash\n")[1].split("\n```")[0]
    assert command.startswith("python -m vitlab.finetune ")
    saved = json.loads((run_folder / "config.json").read_text())
    remade = make_config(explicit_flags(shlex.split(command)[3:]))
    differs = {name for name, value in vars(remade).items() if saved[name] != value}
    assert differs <= {"preset", "quiet", "out"}, differs  # everything that shaped the weights is in the command


def test_command_line_writes_off_switches_and_leaves_defaults_out() -> None:
    config = make_config({"preset": "demo", "tensorboard": False})
    command = command_line(config)
    assert "--no-tensorboard" in command and "--preset" not in command and "--recipe" not in command
    assert "--cache-trunk" in command and "--trainable-blocks 2" in command


def test_no_tensorboard_writes_no_events_but_still_the_csv(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert finetune.main([*SMALL, "--epochs", "1", "--no-tensorboard", "--out", str(out)]) == 0
    assert not list(out.glob("events.out.tfevents.*"))
    assert (out / "metrics.csv").read_text().count("\n") == 2  # header and one epoch


def test_a_resumed_run_keeps_one_csv_row_per_epoch(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # The notebook recipe's constant learning rate is the one that lets a resumed run take more epochs.
    assert finetune.main([*SMALL, "--recipe", "notebook", "--epochs", "1", "--out", str(out)]) == 0
    assert finetune.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    with (out / "metrics.csv").open() as file:
        assert [int(row["epoch"]) for row in csv.DictReader(file)] == [1, 2]


def test_the_overlay_colours_the_hottest_patch_with_the_top_of_the_colour_map() -> None:
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)  # black: the picture is the colour map alone, halved
    maps = torch.zeros(2, 8, 8)
    maps[0, 0, 0] = 1.0  # image 0: the top-left patch is the hottest
    maps[1, 7, 7] = 1.0  # image 1: the bottom-right
    grid = overlay_grid(images, maps, size=32)  # (3, 36, 70): two 32-px tiles, 2-px padding
    tile0, tile1 = grid[:, 2:34, 2:34], grid[:, 2:34, 36:68]
    hottest = tile0[:, :4, :4].mean(dim=(1, 2))
    coldest = tile0[:, -4:, -4:].mean(dim=(1, 2))
    assert hottest.sum() > 1.0 > coldest.sum() + 0.5  # inferno: near white-yellow at the top, near black below
    torch.testing.assert_close(tile1[:, -4:, -4:].mean(dim=(1, 2)), hottest)
