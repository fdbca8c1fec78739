"""Tests for vitlab.bench and vitlab.bench.baseline: the benchmark runs and reports; it never asserts a speed.

Every row runs here with the tiny model, tiny batches and one repeat, to prove the code path works and the result is
well formed. Whether vitlab meets its targets is for `python -m vitlab.bench` on a quiet machine to say.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab import bench
from vitlab.bench import transfer
from vitlab.bench.baseline import (
    NotebookDataset,
    notebook_eval_steps,
    notebook_loader,
    notebook_model,
    notebook_test_transform,
    notebook_train_steps,
    notebook_train_transform,
)
from vitlab.data import BatchTransform
from vitlab.model import build_model, count_parameters


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark must never download anything: a connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access is disabled in vitlab's bench tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def tiny(**overrides) -> bench.Settings:
    """Settings that run any row in seconds: vit_tiny, batch 4, one repeat."""
    values = dict(device=torch.device("cpu"), quick=True, repeats=1, batch_size=4, arch="vit_tiny")
    return bench.Settings(**{**values, **overrides})


def assert_well_formed(result: dict, row: str) -> None:
    for key in ("row", "baseline", "vitlab", "unit", "ratio", "target", "met", "device", "notes"):
        assert key in result, key
    assert result["row"] == row
    assert result["vitlab"] > 0 and result["device"]
    if result["baseline"] is not None:
        assert result["baseline"] > 0 and result["ratio"] > 0
    assert result["met"] in (True, False, None)
    json.dumps(result)  # everything in a row goes into the JSON as is


# ---------------------------------------------------------------------------------------------------------------
# The baseline is the notebook's way: known answers
# ---------------------------------------------------------------------------------------------------------------


def _constant_image(colour: tuple[int, int, int], size: int = 32) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (size, size, 3)).copy()  # (S, S, 3)


@pytest.mark.parametrize("train", [True, False])
def test_constant_image_gives_the_same_values_through_both_pipelines(train: bool) -> None:
    """Same shape, same normalisation: the comparison is apples to apples (rotation 0; a flip leaves it unchanged)."""
    colour = (10, 128, 250)
    image = _constant_image(colour)
    theirs_transform = notebook_train_transform(224, max_rotation_degrees=0) if train else notebook_test_transform()
    theirs = theirs_transform(Image.fromarray(image))  # (3, 224, 224)
    ours = BatchTransform(224, train=train, max_rotation_degrees=0)(
        torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)  # (32, 32, 3) -> (1, 3, 32, 32)
    )[0]
    assert theirs.shape == ours.shape == (3, 224, 224)
    expected = (torch.tensor(colour) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(theirs, expected.view(3, 1, 1).expand(3, 224, 224), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_unrotated_random_image_resizes_alike_in_both_pipelines() -> None:
    """Beyond constants: PIL's bilinear upscale and vitlab's agree up to uint8 rounding (either flip)."""
    image = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    theirs = notebook_train_transform(224, max_rotation_degrees=0)(Image.fromarray(image))  # (3, 224, 224)
    ours = BatchTransform(224, train=True, max_rotation_degrees=0, flip=False)(
        torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
    )[0]
    difference = min((theirs - ours).abs().mean(), (theirs.flip(-1) - ours).abs().mean())
    assert difference < 0.02  # one uint8 step is 1 / 255 / 0.225 = 0.017 after normalisation


def test_notebook_model_freezes_like_the_notebook() -> None:
    """The notebook reported 21,340,516 trainable of 85,875,556 parameters; vitlab's builder agrees."""
    assert count_parameters(notebook_model("vit_b_16")) == (21_340_516, 85_875_556)
    assert count_parameters(build_model("vit_b_16", 100, pretrained=False)) == (21_340_516, 85_875_556)


def test_notebook_dataset_serves_pil_transformed_images() -> None:
    images, labels = bench.cifar_like(5, seed=0)
    dataset = NotebookDataset(images, labels, notebook_train_transform(32))
    tensor, label = dataset[2]
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32 and label == int(labels[2])
    with pytest.raises(ValueError, match="uint8"):
        NotebookDataset(images.astype(np.float32), labels, notebook_train_transform(32))


def test_notebook_loops_return_images_per_second() -> None:
    images, labels = bench.cifar_like(8, seed=0)
    model = notebook_model("vit_tiny")
    loader = notebook_loader(images, labels, 4, train=True, image_size=32)
    assert notebook_train_steps(model, loader, steps=2, device="cpu") > 0
    assert notebook_eval_steps(model, notebook_loader(images, labels, 4, train=False, image_size=32), 1, "cpu") > 0


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------


def test_interleaved_warms_up_then_alternates() -> None:
    calls: list[str] = []

    def side(name: str):
        return lambda: calls.append(name) or float(len(calls))

    a, b = bench.interleaved(side("A"), side("B"), repeats=4, warmup=1)
    assert "".join(calls) == "AB" + "AB" + "BA" + "AB" + "BA"
    assert len(a) == len(b) == 4


def test_rows_flag_a_noisy_machine() -> None:
    quiet = bench.row_result("capture_overhead", tiny(), 1.0, 1.02, "s/batch", ratio=1.02, ratio_meaning="",
                             target="<= 1.05x", met=True, samples_baseline=[1.0, 1.1], samples_vitlab=[1.02, 1.05])
    assert quiet["ratio_best"] == pytest.approx(1.02) and quiet["spread"] == pytest.approx(1.1)
    assert "noisy" not in quiet["notes"]
    noisy = bench.row_result("data_pipeline", tiny(), 100.0, 400.0, "images/s", ratio=4.0, ratio_meaning="",
                             target=">= 4x", met=True, samples_baseline=[30.0, 100.0], samples_vitlab=[400.0, 420.0])
    assert noisy["ratio_best"] == pytest.approx(4.2) and "noisy" in noisy["notes"]  # images/s: best is the largest


def test_check_compares_against_the_target() -> None:
    assert bench.check(4.1, ">=", 4.0) is True
    assert bench.check(1.06, "<=", 1.05) is False
    assert bench.check(None, "<=", 1.05) is None


# ---------------------------------------------------------------------------------------------------------------
# Every row runs (tiny settings) and returns a well-formed dict
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", ["data_pipeline", "train_step", "eval_throughput"])
def test_timing_rows_run_and_are_well_formed(row: str) -> None:
    result = bench.BENCHES[row](tiny())
    assert_well_formed(result, row)
    assert len(result["samples_baseline"]) == len(result["samples_vitlab"]) == 1


def test_capture_row_measures_fresh_processes_and_checks_that_capture_changes_nothing() -> None:
    result = bench.bench_capture_overhead(tiny())
    assert_well_formed(result, "capture_overhead")
    assert len(result["process_ratios"]) == 3 and len(result["samples_vitlab"]) == 3  # 3 processes x 1 repeat
    assert result["ratio"] == sorted(result["process_ratios"])[1]  # the median process
    assert result["logits_identical"] is True


def test_capture_samples_are_interleaved_in_one_process() -> None:
    samples = bench.capture_samples("vit_tiny", 2, 1, 3, "cpu")
    assert len(samples["plain"]) == len(samples["captured"]) == 3 and samples["identical"] is True


def test_epoch_row_is_not_measured_without_cuda_unless_forced() -> None:
    result = bench.bench_epoch(tiny(run_epoch=True))
    assert result["measured"] is False and "needs CUDA" in result["notes"]
    assert "run with --epoch" in bench.bench_epoch(tiny())["notes"]


def test_epoch_row_runs_when_forced_on_a_small_epoch() -> None:
    result = bench.bench_epoch(tiny(run_epoch=True, force_epoch=True, epoch_images=60, compile=False))
    assert_well_formed(result, "epoch")
    assert (result["train_images"], result["val_images"]) == (54, 6)  # vitlab's 45,000 / 5,000 proportion
    assert result["met"] is None  # the 30 s target is for the full size on an H100


@pytest.mark.slow
def test_peak_memory_row_measures_fresh_processes() -> None:
    result = bench.bench_peak_memory(tiny())
    assert_well_formed(result, "peak_memory")
    assert result["unit"] == "MiB" and result["baseline"] > 50  # a process holding torch is never this small


@pytest.mark.slow
def test_demo_row_runs_the_demo_end_to_end() -> None:
    result = bench.bench_demo(tiny(demo_args=("--epochs", "1", "--subset", "32")))
    assert_well_formed(result, "demo")
    assert 0 <= result["test_acc"] <= 1 and result["ratio"] is None
    assert result["pointing_game"] is not None


def test_cached_trunk_step_row_compares_cached_and_full_steps() -> None:
    result = bench.BENCHES["cached_trunk_step"](tiny())
    assert_well_formed(result, "cached_trunk_step")
    assert result["ratio_meaning"] == "cached / uncached" and result["cache_images_per_second"] > 0


def test_epoch_cached_row_needs_cuda_unless_forced() -> None:
    assert bench.BENCHES["epoch_cached"](tiny())["measured"] is False
    result = bench.BENCHES["epoch_cached"](tiny(force_epoch=True, epoch_images=60, compile=False))
    assert_well_formed(result, "epoch_cached")
    assert (result["train_images"], result["val_images"]) == (54, 6) and result["cache_seconds"] > 0


def test_cached_trunk_shapes_row_runs_both_sides_end_to_end() -> None:
    result = bench.BENCHES["cached_trunk_shapes"](tiny(demo_args=("--epochs", "1", "--subset", "64")))
    assert_well_formed(result, "cached_trunk_shapes")
    assert len(result["runs"]["uncached"]) == len(result["runs"]["cached"]) == 1
    assert result["cache_seconds"] > 0 and 0 <= result["test_acc_cached"] <= 1


# ---------------------------------------------------------------------------------------------------------------
# Reporting and the command line
# ---------------------------------------------------------------------------------------------------------------


def _fake_results() -> list[dict]:
    settings = tiny()
    return [
        bench.row_result("data_pipeline", settings, 1000.0, 5000.0, "images/s", ratio=5.0,
                         ratio_meaning="vitlab / notebook", target=">= 4x", met=True, notes="a note"),
        bench.row_result("demo", settings, None, 42.0, "s", ratio=None, ratio_meaning="", target="<= 60 s",
                         met=True, test_acc=0.99),
        bench.not_measured("epoch", settings, "needs CUDA", target="<= 30 s"),
        {"row": "train_step", "error": "RuntimeError: boom", "device": "cpu"},
    ]


def test_table_lists_every_row_with_its_status() -> None:
    table = bench.format_table(_fake_results())
    header = table.splitlines()[0]
    for column in ("row", "baseline", "vitlab", "ratio", "target", "met"):
        assert column in header
    assert "5.00x" in table and "99.0%" in table and "not measured" in table and "RuntimeError: boom" in table


def test_json_report_round_trips(tmp_path) -> None:
    settings = tiny()
    data = bench.report(_fake_results(), settings, 1.5, bench.describe_device(settings.device), ["--quick"])
    path = bench.write_json(tmp_path / "out" / "bench.json", data)
    loaded = json.loads(path.read_text())
    assert loaded["torch"] == torch.__version__ and loaded["device"]["type"] == "cpu"
    assert loaded["device"]["cores"] >= 1 and "timestamp" in loaded
    assert [r["row"] for r in loaded["rows"]] == ["data_pipeline", "demo", "epoch", "train_step"]


def test_main_runs_selected_rows_and_writes_json(tmp_path, capsys) -> None:
    path = tmp_path / "bench.json"
    code = bench.main(["--device", "cpu", "--arch", "vit_tiny", "--rows", "eval_throughput", "--repeats", "1",
                       "--batch-size", "2", "--json", str(path)])
    assert code == 0
    assert "eval_throughput" in capsys.readouterr().out
    rows = json.loads(path.read_text())["rows"]
    assert [r["row"] for r in rows] == ["eval_throughput"] and rows[0]["batch_size"] == 2


def test_main_refuses_unknown_rows(capsys) -> None:
    assert bench.main(["--rows", "nonsense"]) == 2
    assert "Choose from" in capsys.readouterr().err


def test_transfer_row_compares_the_demo_with_its_from_scratch_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_run(config):  # record what each side asked for; the pretrained side scores higher on seed 1 only
        seen.append(config)
        better = config.pretrained == "fractal" and config.seed == 1
        return {"test_acc": 0.9 if better else 0.5}

    monkeypatch.setattr(transfer.finetune, "run", fake_run)
    row = transfer.bench_transfer(tiny(), seeds=(1, 2), variants={"few": {"subset": 64}})
    pretrained = [c for c in seen if c.pretrained == "fractal"]
    scratch = [c for c in seen if c.pretrained == "none"]
    assert len(pretrained) == len(scratch) == 2
    assert all(c.trainable_blocks == 2 and c.cache_trunk and c.subset == 64 for c in pretrained)
    assert all(c.trainable_blocks == 4 and not c.cache_trunk and c.lr == 1e-3 for c in scratch)
    assert all(a.epochs == b.epochs for a, b in zip(pretrained, scratch, strict=True))  # same epochs on both sides
    assert row["wins"] == {"few": 1} and row["met"] is False  # seed 2 is a tie, not a win
    assert row["table"]["few"]["1"]["pretrained"]["test_acc"] == 0.9
