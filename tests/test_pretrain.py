"""python -m vitlab.pretrain end to end (a tiny budget), resuming, and the shipped base with its hash check."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from vitlab.analysis.structure import distance_ratios, position_embedding_spearman
from vitlab.bench.rows import transfer_runs
from vitlab.data import BatchTransform, load_dataset
from vitlab.data.unlabelled import ImageSource
from vitlab.errors import WeightsUnavailableError
from vitlab.model import build_model
from vitlab.shipped import SHIPPED_BASES, card_name, shipped_base_file, shipped_card, shipped_weights_dir
from vitlab.training import pretrain
from vitlab.training.checkpoint import load_checkpoint, save_checkpoint
from vitlab.training.simmim import MaskedImageModel
from vitlab.training.train import make_scheduler

TINY = ["--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "8", "--num-classes", "5", "--quiet"]


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert pretrain.main([*TINY, "--out", str(out)]) == 0
    return out


def test_a_short_run_writes_the_whole_run_folder(pretrained_run: Path) -> None:
    history = json.loads((pretrained_run / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    for record in history:
        assert all(torch.isfinite(torch.tensor(record[k])) for k in ("pixel", "class", "position_spearman"))
    card = json.loads((pretrained_run / "card.json").read_text())
    assert card["epochs"] == 2 and card["images_seen"] == 2 * 2 * 8
    assert card["command"].startswith("python -m vitlab.pretrain --epochs 2")
    assert card["metrics"]["position_spearman"] == history[-1]["position_spearman"]
    assert card["sha256"] == hashlib.sha256((pretrained_run / "base.pt").read_bytes()).hexdigest()
    # base.pt is the body of a vit_tiny: build_model loads it with a fresh head for the target task.
    model = build_model("vit_tiny", num_classes=4, pretrained=pretrained_run / "base.pt", trainable_blocks=0)
    saved = torch.load(pretrained_run / "base.pt", weights_only=True)["model"]
    torch.testing.assert_close(model.encoder.pos_embedding, saved["encoder.pos_embedding"], rtol=0, atol=0)


def test_resuming_after_an_epoch_gives_the_same_weights_as_one_run(
    pretrained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = tmp_path / "partial"
    real_save = pretrain.save_json

    def save_then_stop(path: Path, value: object) -> Path:  # Ctrl-C right after epoch 1 is on disk
        written = real_save(path, value)
        if Path(path).name == "history.json":
            raise KeyboardInterrupt
        return written

    monkeypatch.setattr(pretrain, "save_json", save_then_stop)
    assert pretrain.main([*TINY, "--out", str(partial)]) == 130
    monkeypatch.setattr(pretrain, "save_json", real_save)
    assert len(json.loads((partial / "history.json").read_text())) == 1 and not (partial / "base.pt").exists()
    assert pretrain.main(["--resume", str(partial), "--quiet"]) == 0
    resumed = torch.load(partial / "base.pt", weights_only=True)["model"]
    uninterrupted = torch.load(pretrained_run / "base.pt", weights_only=True)["model"]
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name


def test_a_run_folder_is_never_overwritten(pretrained_run: Path, capsys: pytest.CaptureFixture) -> None:
    before = (pretrained_run / "checkpoint.pt").read_bytes()
    assert pretrain.main([*TINY, "--out", str(pretrained_run)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert (pretrained_run / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("name", SHIPPED_BASES)
def test_the_shipped_base_passes_its_hash_check_and_loads(name: str) -> None:
    path = shipped_base_file(name=name)
    card = shipped_card(name=name)
    assert path.name == f"vit_tiny_{name}-{card['sha256'][:8]}.pt"
    assert path.stat().st_size <= 8 * 2**20  # weights shipped in the package stay small
    model = build_model("vit_tiny", num_classes=4, pretrained=True if name == "fractal" else path, trainable_blocks=0)
    state = torch.load(path, weights_only=True)["model"]
    torch.testing.assert_close(model.encoder.pos_embedding, state["encoder.pos_embedding"], rtol=0, atol=0)


@pytest.mark.parametrize("name", SHIPPED_BASES)
@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "missing", "no_card"])
def test_a_damaged_shipped_base_is_refused_with_the_rebuild_command(tmp_path: Path, damage: str, name: str) -> None:
    folder = tmp_path / "weights"
    shutil.copytree(shipped_weights_dir(), folder)
    weights = next(folder.glob(f"vit_tiny_{name}-*.pt"))
    data = bytearray(weights.read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "missing":
        weights.unlink()
    else:
        (folder / card_name(name)).unlink()
    with pytest.raises(WeightsUnavailableError, match="python -m vitlab.pretrain"):
        shipped_base_file(folder, name)


def shapes_probe() -> torch.Tensor:
    return BatchTransform(32, train=False)(load_dataset("shapes").test.images[:250])  # (250, 3, 32, 32)


def photos_probe() -> torch.Tensor:
    return BatchTransform(32, train=False)(load_dataset("fashion").val.images[:250])  # (250, 3, 32, 32)


@pytest.mark.parametrize("name, probe", [("fractal", "shapes"), ("fashion", "shapes"), ("fashion", "photos")])
def test_the_shipped_base_has_the_structure_the_lessons_teach(name: str, probe: str) -> None:
    """The lessons' structure thresholds, measured on the shipped weights; a random init fails every one of them."""
    base = build_model("vit_tiny", num_classes=4, pretrained=shipped_base_file(name=name), trainable_blocks=0).eval()
    torch.manual_seed(0)
    random = build_model("vit_tiny", num_classes=4, pretrained=False, trainable_blocks=0).eval()
    images = shapes_probe() if probe == "shapes" else photos_probe()
    base_ratios, random_ratios = distance_ratios(base, images), distance_ratios(random, images)
    assert position_embedding_spearman(base) <= -0.6 < position_embedding_spearman(random)
    assert float(base_ratios[0].min()) <= 0.5 < float(random_ratios[0].min())
    assert float(base_ratios[-1].mean()) >= 0.8


@pytest.mark.slow
def test_with_few_labels_the_shipped_base_beats_training_from_scratch(tmp_path: Path) -> None:
    """Transfer pays: the bench's 500-image comparison, one seed (76% against 64% when measured)."""
    runs = transfer_runs(42, "cpu", {"subset": 500, "epochs": 10}, tmp_path)
    assert runs["pretrained"]["test_acc"] > runs["scratch"]["test_acc"] + 0.05


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--batch-size", "-5"), ("--lr", "nan"),
                                         ("--mask-ratio", "1.5"), ("--mask-block", "3"), ("--threads", "0"),
                                         ("--seed", "-1"), ("--system-seed", "18446744073709551616")])
def test_bad_settings_exit_2_before_any_work(flag: str, value: str, tmp_path: Path, capsys) -> None:
    assert pretrain.main([flag, value, "--out", str(tmp_path / "run")]) == 2
    message = capsys.readouterr().err
    assert f"{flag} {value}" in message and "for example" in message and len(message.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # no run folder for a run that did not happen


def test_ship_writes_a_base_and_card_that_pass_the_hash_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "weights"
    target.mkdir()
    (target / "vit_tiny_fractal-00000000.pt").write_bytes(b"stale")  # an older shipped file is replaced
    monkeypatch.setattr(pretrain, "shipped_weights_dir", lambda: target)
    assert pretrain.main([*TINY, "--out", str(tmp_path / "run"), "--ship"]) == 0
    shipped = shipped_base_file(target)
    assert shipped.read_bytes() == (tmp_path / "run" / "base.pt").read_bytes()
    assert [p.name for p in target.glob("*.pt")] == [shipped.name]


def test_pretraining_uses_fine_tunings_optimiser_and_schedule(tmp_path: Path) -> None:
    """One optimiser and one schedule (vitlab.training.train): the position embedding learns 10x faster, undecayed."""
    config, _ = pretrain.make_config([*TINY, "--lr", "2e-3", "--weight-decay", "0.1"])
    run = pretrain.setup(config, None, tmp_path)
    rates = {}
    for group in run.optimizer.param_groups:
        for param in group["params"]:
            rates[id(param)] = (group["lr"], group["weight_decay"])
    named = dict(run.objective.named_parameters())
    assert rates[id(named["vit.encoder.pos_embedding"])] == pytest.approx((2e-2, 0.0))
    assert rates[id(named["vit.conv_proj.weight"])] == pytest.approx((2e-3, 0.1))
    for token in ("vit.class_token", "mask_token"):
        assert rates[id(named[token])] == pytest.approx((2e-3, 0.0))
    assert isinstance(run.optimizer, torch.optim.AdamW) and run.recipe.grad_clip == 1.0
    expected = make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), run.recipe, 4)
    for _ in range(4):  # 2 epochs x 2 steps: under 10 steps, round(5%) is no warmup at all
        assert run.scheduler.get_last_lr()[0] / 2e-3 == pytest.approx(expected.get_last_lr()[0])
        run.optimizer.step()
        run.scheduler.step()
        expected.optimizer.step()
        expected.step()


def test_a_pretraining_checkpoint_whose_optimiser_does_not_fit_is_a_clear_exit_2(pretrained_run: Path, tmp_path,
                                                                                  capsys) -> None:
    checkpoint = load_checkpoint(pretrained_run / "checkpoint.pt")
    groups = checkpoint["optimizer"]["param_groups"]
    groups[0]["params"], groups[1]["params"] = groups[0]["params"][:-1], groups[1]["params"] + groups[0]["params"][-1:]
    old = tmp_path / "old"
    save_checkpoint(old / "checkpoint.pt", {k: v for k, v in checkpoint.items() if k != "format"})
    assert pretrain.main(["--resume", str(old), "--epochs", "2"]) == 2  # as one saved by an optimiser grouped otherwise
    err = capsys.readouterr().err
    assert "does not fit this run's optimizer" in err and "Traceback" not in err


FASHION_TINY = ["--data", "fashion", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--quiet"]


@pytest.mark.parametrize("flag, value", [("--num-classes", "5"), ("--system-seed", "3"), ("--class-weight", "1")])
def test_a_fractal_setting_is_refused_for_photos(flag: str, value: str, tmp_path: Path, capsys) -> None:
    assert pretrain.main([*FASHION_TINY, flag, value, "--out", str(tmp_path / "run")]) == 2
    message = capsys.readouterr().err
    assert flag in message and "--data fractals only" in message and len(message.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_photo_batches_are_training_photos_or_their_mirror_images() -> None:
    photos = load_dataset("fashion")
    source = ImageSource(photos=photos.train.images[:50])
    images, labels = source.draw(64, torch.Generator().manual_seed(0))  # uint8 (64, 3, 32, 32)
    train = photos.train.images[:50].flatten(1)  # (50, 3072)
    mirrored = photos.train.images[:50].flip(-1).flatten(1)
    for image in images.flatten(1):
        assert (train == image).all(1).any() or (mirrored == image).all(1).any()
    assert labels.tolist() == [0] * 64  # unlabelled: no class loss is possible


def test_init_fractal_starts_from_the_shipped_fractal_base(tmp_path: Path) -> None:
    config, _ = pretrain.make_config([*FASHION_TINY, "--init", "fractal"])
    run = pretrain.setup(config, None, tmp_path)
    shipped = torch.load(shipped_base_file(name="fractal"), weights_only=True)["model"]
    body = run.objective.vit.state_dict()
    for name, value in shipped.items():
        assert torch.equal(body[name], value), name


def test_the_global_loss_is_the_class_tokens_error_on_the_small_image() -> None:
    torch.manual_seed(0)
    vit = build_model("vit_tiny", num_classes=3, pretrained=False, trainable_blocks=4)
    objective = MaskedImageModel(vit, global_weight=2.0)
    images = torch.randn(4, 3, 32, 32)
    mask = objective.random_mask(4, torch.Generator().manual_seed(1))  # (4, 64)
    total, parts = objective.loss(images, torch.zeros(4, dtype=torch.int64), mask)
    class_out = objective.encode(images, mask)[:, 0]  # (4, 64)
    small = images.reshape(4, 3, 8, 4, 8, 4).mean(dim=(3, 5)).flatten(1)  # (4, 192): each patch's mean colour
    expected = (objective.global_decoder(class_out) - small).abs().mean()
    torch.testing.assert_close(parts["global"], expected.detach())
    torch.testing.assert_close(total, parts["pixel"] + 2.0 * expected)
