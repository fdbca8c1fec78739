"""Every flag is used or refused: a preset's setting yields where it cannot apply (with a note), a typed flag that
cannot apply exits 2 with one line naming it and what it applies to, `--resume` keeps the saved run's settings, and
every on/off setting has a --no- form.

The refusals run `finetune.main` for real: a refusal must come before any work, so on a command line that was
wrongly accepted the test would train (and fail on its exit code 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from vitlab.data import DATASETS
from vitlab.errors import VitlabError
from vitlab.training import finetune, pretrain
from vitlab.training.checkpoint import load_checkpoint, save_checkpoint
from vitlab.training.config import DATASETS_FLAGS, FinetuneConfig, make_config
from vitlab.training.flags import explicit_flags, resolve_config
from vitlab.training.resume import ON_RESUME, resume_config

# One cheap epoch of the shapes from scratch (no trunk cache), at the notebook recipe's constant learning rate.
NOTEBOOK = ["--preset", "demo", "--pretrained", "none", "--trainable-blocks", "all", "--recipe", "notebook",
            "--lr", "1e-3", "--subset", "64", "--epochs", "1", "--batch-size", "32", "--quiet"]


def refused(argv: list[str], capsys: pytest.CaptureFixture, out: Path | None = None) -> str:
    """Run `python -m vitlab.finetune argv` in this process; assert exit 2, one line, nothing written; the line."""
    code = finetune.main(argv if out is None else [*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert out is None or not out.exists()
    return err


# ---------------------------------------------------------------------------------------------------------------
# A preset yields; every on/off setting can be undone
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_demo_preset_runs_under_torchrun_with_one_run_folder(tmp_path: Path) -> None:
    """Its trunk cache (one process only) yields to torchrun's two processes, with one note, instead of exiting 2."""
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "vitlab.finetune", "--preset", "demo", "--epochs", "1", "--subset", "128", "--out", str(out)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert [path.name for path in tmp_path.iterdir()] == ["demo"]  # exactly one run folder, where --out said
    assert json.loads((out / "config.json").read_text())["cache_trunk"] is False
    assert json.loads((out / "summary.json").read_text())["test_images"] == 128  # each test image counted once
    notes = [line for line in result.stdout.splitlines() if "--cache-trunk yields" in line]
    assert len(notes) == 1 and "torchrun" in notes[0], result.stdout  # said once, by rank 0


def test_the_demo_trunk_cache_yields_under_torchrun_and_a_typed_one_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in each process it starts
    notes: list[str] = []
    config = make_config({"preset": "demo"}, notes=notes)
    assert config.cache_trunk is False and config.max_rotation == 0.0  # the preset's own rotation still applies
    assert notes == ["--preset demo's --cache-trunk yields: a cached trunk runs in one process and torchrun started "
                     "several, so each step runs the whole model."]
    with pytest.raises(VitlabError, match="--cache-trunk runs in one process"):
        make_config(explicit_flags(["--preset", "demo", "--cache-trunk"]))


def test_a_presets_settings_yield_to_what_the_user_typed() -> None:
    notes: list[str] = []
    on_b16 = make_config(explicit_flags(["--preset", "demo", "--arch", "vit_b_16"]), notes=notes)
    assert (on_b16.pretrained, on_b16.weights, on_b16.trainable_blocks) == ("imagenet", "IMAGENET1K_V1", 2)
    assert notes == ["--preset demo's --pretrained fashion yields: vit_b_16's own base is imagenet."]
    laptop_tiny = make_config(explicit_flags(["--preset", "laptop", "--arch", "vit_tiny"]))
    assert (laptop_tiny.pretrained, laptop_tiny.weights) == ("fractal", None)
    assert make_config(explicit_flags(["--preset", "laptop", "--arch", "vit_b_32"])).image_size == 224  # 112 % 32
    rotated = make_config(explicit_flags(["--preset", "demo", "--max-rotation", "10"]), notes=notes)
    assert (rotated.cache_trunk, rotated.max_rotation) == (False, 10.0)
    assert "--cache-trunk yields: --max-rotation 10 needs the whole model" in notes[-1]
    scratch = make_config(explicit_flags(["--preset", "demo", "--trainable-blocks", "all"]), notes=notes)
    assert scratch.cache_trunk is False and "no frozen trunk" in notes[-1]


def test_every_on_off_setting_has_a_no_form() -> None:
    assert make_config(explicit_flags(["--preset", "demo", "--no-cache-trunk"])).cache_trunk is False
    flags = explicit_flags(["--compile", "--no-compile", "--quiet", "--no-quiet"])  # the last one typed wins
    assert flags == {"compile": False, "quiet": False}
    switches = [field.name for field in fields(FinetuneConfig) if field.type == "bool"]
    assert switches == ["compile", "cache_trunk", "quiet", "tensorboard"]
    for name in switches:
        assert explicit_flags(["--no-" + name.replace("_", "-")]) == {name: False}
    assert pretrain.build_parser().parse_args(["--no-ship", "--no-quiet"]).ship is False


def test_the_command_prints_each_note_once_and_quiet_silences_them(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(finetune, "train_and_test", lambda config, checkpoint=None: {})
    assert finetune.main(["--preset", "demo", "--trainable-blocks", "all"]) == 0
    assert capsys.readouterr().out.count("vitlab: note: --preset demo's --cache-trunk yields") == 1
    assert finetune.main(["--preset", "demo", "--trainable-blocks", "all", "--quiet"]) == 0
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------------------------
# A typed flag that cannot apply is refused
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "named"), [
    (["--preset", "demo", "--val-size", "999999"], "--val-size applies only to the datasets whose validation images "
     "are held out of their training images (cifar100, cifar10, fashion_mnist), and fashion"),
    (["--dataset", "shapes", "--arch", "vit_tiny", "--val-size", "100"], "--val-size applies only"),
    (["--preset", "demo", "--data-dir", "/tmp"], "--data-dir applies only to the datasets read from disk (cifar100, "
     "cifar10, fashion_mnist, folder), and fashion ships inside vitlab"),
    (["--preset", "demo", "--subset", "18000"], "--subset 18000 would keep every image of fashion (18,000 train"),
    (["--dataset", "shapes", "--arch", "vit_tiny", "--subset", "8000"], "--subset 8000 would keep every image of "
     "shapes (8,000 train"),
    (["--pretrained", "none", "--weights", "IMAGENET1K_SWAG_E2E_V1", "--image-size", "224"],
     "--weights applies only to runs that start from torchvision's weights"),
    (["--preset", "demo", "--cache-trunk", "--max-rotation", "5"], "--cache-trunk allows the flip as the only"),
])
def test_a_typed_flag_that_cannot_apply_exits_2_naming_it(argv, named, tmp_path, capsys):
    assert named in refused(argv, capsys, tmp_path / "run")


@pytest.mark.parametrize(("argv", "named"), [
    (["--arch", "vit_tiny"], "--arch vit_tiny and --pretrained {hf} both choose the model"),
    (["--weights", "IMAGENET1K_V1"], "--weights applies only to runs that start from torchvision's weights"),
    (["--timm-name", "vit_tiny_patch16_224"], "--timm-name applies only to a timm state-dict file"),
    (["--image-size", "36"], "--image-size 36 is not allowed: it must be a multiple of 8 (vit-hf's patch size)"),
    (["--trainable-blocks", "3"], "--trainable-blocks 3 is not allowed: it must be from 0 to 2 (vit-hf has 2"),
])
def test_a_flag_that_cannot_apply_to_an_imported_model_exits_2(argv, named, hf_folder, tmp_path, capsys):
    typed = ["--pretrained", str(hf_folder), "--dataset", "shapes", *argv]
    assert named.format(hf=hf_folder) in refused(typed, capsys, tmp_path / "run")


def test_an_imported_model_takes_a_presets_settings_that_fit_and_yields_the_rest(hf_folder: Path) -> None:
    notes: list[str] = []
    config = make_config(explicit_flags(["--preset", "demo", "--pretrained", str(hf_folder)]), notes=notes)
    assert (config.arch, config.weights, config.image_size, config.trainable_blocks) == ("imported", None, 32, 2)
    assert config.cache_trunk is False and config.imported["vit"]["num_layers"] == 2
    assert "--preset demo's --arch vit_tiny yields: the --pretrained checkpoint brings its own architecture." in notes


def test_a_timm_state_dict_needs_its_name_and_a_model_that_does_not_map_is_refused(tmp_path, capsys) -> None:
    timm = pytest.importorskip("timm")
    import torch

    file = tmp_path / "weights.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1).state_dict(), file)
    assert "Add --timm-name NAME" in refused(["--pretrained", str(file)], capsys, tmp_path / "run")
    distilled = tmp_path / "deit.pth"
    torch.save(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=1).state_dict(), distilled)
    named = refused(["--pretrained", str(distilled), "--timm-name", "deit_tiny_distilled_patch16_224"], capsys,
                    tmp_path / "run")
    assert named.startswith(f"vitlab: --pretrained {distilled}: ") and "distillation" in named


def test_a_flag_that_applies_is_taken(tmp_path: Path) -> None:
    config = make_config(explicit_flags(["--arch", "vit_tiny", "--dataset", "cifar100", "--val-size", "10",
                                         "--data-dir", str(tmp_path), "--subset", "49989"]))
    assert (config.val_size, config.data_dir, config.subset) == (10, str(tmp_path), 49989)
    with pytest.raises(VitlabError, match="--subset 49990 would keep every image of cifar100 .49,990 train, 10 val"):
        make_config(explicit_flags(["--arch", "vit_tiny", "--val-size", "10", "--subset", "49990"]))
    assert make_config(explicit_flags(["--preset", "laptop", "--dataset", "cifar10"])).val_size == 2000
    demo = make_config(explicit_flags(["--preset", "demo", "--subset", "17999", "--max-rotation", "0"]))
    assert demo.cache_trunk and demo.subset == 17999  # a typed rotation of 0 is what the cache needs


def test_every_dataset_has_a_row_saying_which_data_flags_it_takes() -> None:
    assert set(DATASETS) <= set(DATASETS_FLAGS)
    assert {"fashion", "fashion_mnist"} <= set(DATASETS_FLAGS)  # named before their loaders join vitlab.data
    assert set(ON_RESUME) == {field.name for field in fields(FinetuneConfig)}  # a new flag decides its resume rule


# ---------------------------------------------------------------------------------------------------------------
# --resume keeps the saved run's settings
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run at a constant learning rate (the notebook recipe)."""
    out = tmp_path_factory.mktemp("resume") / "notebook"
    assert finetune.main([*NOTEBOOK, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(("typed", "named"), [
    (["--preset", "demo"], "--preset demo cannot be used with --resume"),
    (["--lr", "0.5"], "Cannot resume {run} with --lr 0.5: that run was made with lr=0.001"),
    (["--seed", "7"], "with --seed 7: that run was made with seed=42, and a resumed run continues"),
    (["--batch-size", "16"], "batch_size=32"), (["--subset", "32"], "subset=64"),
    (["--recipe", "default"], "recipe='notebook'"), (["--max-rotation", "5"], "max_rotation=0.0"),
    (["--cache-trunk"], "with --cache-trunk: that run was made with cache_trunk=False"),
    (["--pretrained", "fractal"], "pretrained='none'"),
    (["--epochs", "0"], "--epochs 0 is not allowed"), (["--data-dir", "/tmp"], "--data-dir applies only"),
])
def test_a_flag_the_saved_run_fixes_is_refused_with_resume(typed, named, notebook_run, capsys):
    before = load_checkpoint(notebook_run)["epoch"]
    assert named.format(run=notebook_run) in refused(["--resume", str(notebook_run), *typed], capsys)
    assert load_checkpoint(notebook_run)["epoch"] == before


def test_out_with_resume_may_only_name_the_resumed_folder(notebook_run: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "elsewhere"
    assert "cannot be used with --resume" in refused(["--resume", str(notebook_run), "--out", str(other)], capsys)
    assert not other.exists()
    config, _ = resume_config(explicit_flags(["--resume", str(notebook_run), "--out", str(notebook_run) + "/"]))
    assert config.out == str(notebook_run)


def test_resume_takes_what_changes_how_the_run_is_carried_out(notebook_run: Path) -> None:
    typed = ["--resume", str(notebook_run), "--device", "cpu", "--no-quiet", "--compile", "--seed", "42"]
    config, checkpoint = resolve_config(typed)
    assert (config.device, config.quiet, config.compile, config.seed) == ("cpu", False, True, 42)
    assert checkpoint["epoch"] == 1


@pytest.mark.slow
def test_a_constant_rate_run_takes_more_epochs_on_resume_and_a_cosine_one_does_not(notebook_run, tmp_path, capsys):
    longer = tmp_path / "longer"
    longer.mkdir()
    for name in ("checkpoint.pt", "best.pt", "config.json", "history.json"):
        (longer / name).write_bytes((notebook_run / name).read_bytes())
    assert finetune.main(["--resume", str(longer), "--epochs", "2", "--quiet"]) == 0
    assert [r["epoch"] for r in json.loads((longer / "history.json").read_text())] == [1, 2]
    assert "already completed 2 epochs" in refused(["--resume", str(longer), "--epochs", "1"], capsys)
    cosine = tmp_path / "cosine"
    assert finetune.main([*NOTEBOOK, "--recipe", "default", "--out", str(cosine)]) == 0
    assert "cannot stretch" in refused(["--resume", str(cosine), "--epochs", "2"], capsys)


def test_a_run_saved_with_the_old_recipe_name_seed_resumes_as_notebook(notebook_run: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(notebook_run)
    checkpoint["config"]["recipe"] = "seed"  # config.json and checkpoints written before the recipe's rename
    old = tmp_path / "old"
    save_checkpoint(old / "checkpoint.pt", {k: v for k, v in checkpoint.items() if k != "format"})
    config, saved = resume_config(explicit_flags(["--resume", str(old), "--quiet"]))
    assert config.recipe == "notebook" and saved["epoch"] == 1
    assert finetune.train_and_test(config, saved)["epochs"] == 1  # done: straight to the test pass


# ---------------------------------------------------------------------------------------------------------------
# python -m vitlab.pretrain --resume
# ---------------------------------------------------------------------------------------------------------------

PRETRAIN = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4", "--num-classes", "3", "--quiet"]


def test_pretrain_resume_refuses_other_settings_and_takes_threads(tmp_path: Path, capsys) -> None:
    run = tmp_path / "pretrain"
    assert pretrain.main([*PRETRAIN, "--out", str(run)]) == 0
    for typed, named in ((["--lr", "0.1"], "with --lr 0.1: that run was made with lr=0.001"),
                         (["--out", str(tmp_path / "x")], "cannot be used with --resume"),
                         (["--mask-ratio", "0.25"], "mask_ratio=0.5")):
        assert pretrain.main(["--resume", str(run), *typed]) == 2
        err = capsys.readouterr().err
        assert named in err and len(err.strip().splitlines()) == 1, err
    config, checkpoint = pretrain.make_config(["--resume", str(run), "--threads", "1", "--no-quiet", "--ship"])
    assert (config.threads, config.quiet, config.ship, checkpoint["epoch"]) == (1, False, True, 1)
