"""Tests for the bench (vitlab.bench): the notebook's way it measures against, its measuring kit, and every row.

Every row runs here with the tiny model, tiny batches and one repeat, to prove the code path works and the record is
well formed; whether vitlab meets its targets is for `python -m vitlab.bench` on a quiet machine to say.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.bench import explain as bench_explain
from vitlab.bench import rows as bench_rows
from vitlab.bench.baseline import (
    NotebookDataset,
    notebook_eval_steps,
    notebook_loader,
    notebook_model,
    notebook_test_transform,
    notebook_train_steps,
    notebook_train_transform,
)
from vitlab.bench.cli import ROWS, build_parser, format_table, main, skip_reason
from vitlab.bench.measure import Settings, cifar_like, interleaved, row_result
from vitlab.bench.rows import bench_capture_overhead, bench_peak_memory, capture_samples
from vitlab.data import BatchTransform
from vitlab.model import build_model, count_parameters


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark must never download anything: a connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access is disabled in vitlab's bench tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def tiny(**overrides) -> Settings:
    """Settings that run any row in seconds: vit_tiny, batch 4, one repeat."""
    return Settings(**{"device": torch.device("cpu"), "quick": True, "repeats": 1, "batch_size": 4,
                       "arch": "vit_tiny", **overrides})


def assert_well_formed(result: dict, row: str) -> None:
    for key in ("row", "baseline", "vitlab", "unit", "ratio", "target", "met", "device", "notes"):
        assert key in result, key
    assert result["row"] == row
    assert result["vitlab"] > 0 and result["device"]
    if result["baseline"] is not None:
        assert result["baseline"] > 0 and result["ratio"] > 0
    assert result["met"] in (True, False, None)
    json.dumps(result)  # everything in a row goes into the JSON as is


def run_cli(tmp_path: Path, *argv: str) -> list[dict]:
    """`python -m vitlab.bench ARGV --json ...` in this process; the rows of its JSON."""
    path = tmp_path / "bench.json"
    assert main([*argv, "--json", str(path)]) == 0
    return json.loads(path.read_text())["rows"]


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
    images, labels = cifar_like(5, seed=0)
    dataset = NotebookDataset(images, labels, notebook_train_transform(32))
    tensor, label = dataset[2]
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32 and label == int(labels[2])
    with pytest.raises(ValueError, match="uint8"):
        NotebookDataset(images.astype(np.float32), labels, notebook_train_transform(32))


def test_notebook_loops_count_the_images_of_the_steps_asked_for() -> None:
    images, labels = cifar_like(12, seed=0)
    model = notebook_model("vit_tiny")
    loader = notebook_loader(images, labels, 4, train=True, image_size=32)
    assert notebook_train_steps(model, loader, steps=2, device="cpu") > 0
    assert notebook_eval_steps(model, notebook_loader(images, labels, 4, train=False, image_size=32), 1, "cpu") > 0
    with pytest.raises(ValueError, match="no batches"):
        notebook_eval_steps(model, loader, 0, "cpu")


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------


def test_interleaved_warms_up_then_alternates() -> None:
    calls: list[str] = []

    def side(name: str):
        return lambda: calls.append(name) or float(len(calls))

    a, b = interleaved(side("A"), side("B"), repeats=4, warmup=1)
    assert "".join(calls) == "AB" + "AB" + "BA" + "AB" + "BA"
    assert a == [3.0, 6.0, 7.0, 10.0] and b == [4.0, 5.0, 8.0, 9.0]  # each side's own results, in its order


def test_rows_flag_a_noisy_machine() -> None:
    quiet = row_result("capture_overhead", tiny(), 1.0, 1.02, "s/batch", ratio=1.02, target="<= 1.05x",
                       samples_baseline=[1.0, 1.1], samples_vitlab=[1.02, 1.05])
    assert quiet["ratio_best"] == pytest.approx(1.02) and quiet["spread"] == pytest.approx(1.1)
    assert "noisy" not in quiet["notes"]
    noisy = row_result("data_pipeline", tiny(), 100.0, 400.0, "images/s", ratio=4.0, target=">= 4x",
                       samples_baseline=[30.0, 100.0], samples_vitlab=[400.0, 420.0])
    assert noisy["ratio_best"] == pytest.approx(4.2) and "noisy" in noisy["notes"]  # images/s: best is the largest


@pytest.mark.parametrize(("ratio", "target", "met"), [
    (4.1, ">= 4x", True), (3.9, ">= 4x", False), (1.06, "<= 1.05x", False), (1.05, "<= 1.05x", True),
    (None, "<= 1.05x", None), (2.0, "report", None), (2.0, "<= 30 min", None),
])
def test_a_ratio_target_is_checked_and_any_other_is_not(ratio, target, met) -> None:
    assert row_result("train_step", tiny(), 1.0, 1.0, "images/s", ratio=ratio, target=target)["met"] is met


# ---------------------------------------------------------------------------------------------------------------
# Every row runs (tiny settings) and returns a well-formed record
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", ["data_pipeline", "train_step", "eval_throughput"])
def test_timing_rows_run_and_are_well_formed(row: str) -> None:
    result = ROWS[row].measure(tiny())
    assert_well_formed(result, row)
    assert len(result["samples_baseline"]) == len(result["samples_vitlab"]) == 1
    assert result["ratio"] == pytest.approx(result["vitlab"] / result["baseline"])


def test_explain_row_keeps_every_run_of_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run's seconds come back in order (the row shows their spread, not only the median), with the last run's
    parts."""
    runs = iter([(2.0, {"curves": 1.0}), (5.0, {"curves": 3.0}), (3.0, {"curves": 2.0})])

    def fake_timed(device: torch.device, work: object) -> tuple[object, float]:
        seconds, parts = next(runs)
        return type("Report", (), {"seconds": parts})(), seconds

    monkeypatch.setattr(bench_explain, "timed", fake_timed)
    samples, parts = bench_explain.report_seconds(torch.nn.Identity(), torch.zeros(1, 3, 32, 32), repeats=3)
    assert samples == [2.0, 5.0, 3.0] and parts == {"curves": 2.0}


def test_forward_probe_times_batched_bfloat16_passes_without_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's milliseconds per image are the median pass over the batch size, and what it times is a bfloat16
    forward pass of FORWARD_BATCH images without gradients (the kind the report's seconds are read against)."""
    clock, outputs = iter([1.6, 0.8, 3.2]), []

    def fake_timed(device: torch.device, work: object) -> tuple[object, float]:
        outputs.append(work())
        return outputs[-1], next(clock)

    monkeypatch.setattr(bench_explain, "timed", fake_timed)
    model = build_model("vit_tiny", 10, pretrained=False, progress=False, image_size=32).eval()
    assert bench_explain.forward_ms_per_image(model, torch.device("cpu")) == pytest.approx(1.6 / 16 * 1000)
    assert [(o.shape, o.dtype, o.requires_grad) for o in outputs] == [((16, 10), torch.bfloat16, False)] * 3


def test_capture_row_measures_fresh_processes_and_checks_that_capture_changes_nothing() -> None:
    result = bench_capture_overhead(tiny())
    assert_well_formed(result, "capture_overhead")
    assert len(result["process_ratios"]) == 3 and len(result["samples_vitlab"]) == 3  # 3 processes x 1 repeat
    assert result["ratio"] == sorted(result["process_ratios"])[1]  # the median process
    assert result["logits_identical"] is True


def test_capture_samples_are_interleaved_in_one_process() -> None:
    samples = capture_samples("vit_tiny", 2, 1, 3, "cpu")
    assert len(samples["plain"]) == len(samples["captured"]) == 3 and samples["identical"] is True


def test_epoch_row_is_not_measured_without_cuda_unless_forced(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the epoch row runs")
    (row,) = run_cli(tmp_path, "--rows", "epoch")  # no other flag: a row that does not run reads none
    assert row["measured"] is False and "needs CUDA; --force-epoch" in row["notes"]
    assert skip_reason("epoch", tiny(), build_parser().parse_args([])) == "run with --epoch"  # the default rows
    forced = tiny(force_epoch=True)
    assert skip_reason("epoch", forced, build_parser().parse_args(["--epoch", "--force-epoch"])) is None


def test_epoch_row_runs_when_forced_on_a_small_epoch(tmp_path: Path) -> None:
    (row,) = run_cli(tmp_path, "--device", "cpu", "--rows", "epoch", "--force-epoch", "--epoch-images", "60",
                     "--no-compile", "--arch", "vit_tiny", "--batch-size", "4", "--quick")
    assert_well_formed(row, "epoch")
    assert (row["train_images"], row["val_images"]) == (54, 6)  # vitlab's 45,000 / 5,000 proportion
    assert row["compiled"] is False and row["met"] is None  # the 30 s target is for the full size on an H100
    assert row["ratio"] == pytest.approx(row["baseline"] / row["vitlab"])  # notebook / vitlab, in time


@pytest.mark.slow
def test_peak_memory_row_measures_fresh_processes() -> None:
    result = bench_peak_memory(tiny())
    assert_well_formed(result, "peak_memory")
    assert result["unit"] == "MiB" and result["baseline"] > 50  # a process holding torch is never this small


@pytest.mark.slow
def test_demo_row_runs_the_demo_end_to_end() -> None:
    result = bench_rows.bench_demo(tiny(demo_args=("--epochs", "1", "--subset", "32")))
    assert_well_formed(result, "demo")
    assert 0 <= result["test_acc"] <= 1 and result["ratio"] is None
    assert result["pointing_game"] is not None


def test_the_frontier_row_runs_the_preset_once_per_epoch_count(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_job(args: list[str], out: Path, fresh_process: bool = False) -> dict:
        seen.append(args)
        epochs = int(args[args.index("--epochs") + 1])
        return {"test_acc": 0.8 + epochs / 100, "seconds": 10.0 * epochs}

    monkeypatch.setattr(bench_rows, "finetune_job", fake_job)
    row = bench_rows.bench_demo(tiny(), frontier=bench_rows.FRONTIER_EPOCHS)
    assert [a[a.index("--epochs") + 1] for a in seen] == [str(e) for e in bench_rows.FRONTIER_EPOCHS]
    assert all(a[:2] == ["--preset", "demo"] for a in seen)
    last = bench_rows.FRONTIER_EPOCHS[-1]
    assert row["frontier"][str(last)] == {"test_acc": pytest.approx(0.8 + last / 100), "seconds": 10.0 * last}
    assert row["vitlab"] == pytest.approx(0.8 + last / 100)  # the best accuracy on the frontier


def test_transfer_row_compares_the_demo_with_its_from_scratch_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_job(args: list[str], out: Path, fresh_process: bool = False) -> dict:
        seen.append(args)  # the pretrained side scores higher on seed 42 only; seed 43 is a tie
        scratch, seed = "none" in args, args[args.index("--seed") + 1]
        epochs = int(args[args.index("--epochs") + 1]) if "--epochs" in args else 5
        # From scratch takes 4 s an epoch, the preset 8 s in all: equal wall time is 2 epochs from scratch.
        return {"test_acc": 0.5 if scratch or seed != "42" else 0.9, "seconds": 4.0 * epochs if scratch else 8.0,
                "epochs": epochs}

    monkeypatch.setattr(bench_rows, "finetune_job", fake_job)
    row = bench_rows.bench_transfer(tiny(repeats=2), variants={"few": {"subset": 64}})
    pretrained, scratch = [a for a in seen if "none" not in a], [a for a in seen if "none" in a]
    assert len(pretrained) == 2 and len(scratch) == 4 and all("--subset" in a and "64" in a for a in seen)
    assert all(a[a.index("--pretrained"):][:len(bench_rows.FROM_SCRATCH)] == bench_rows.FROM_SCRATCH for a in scratch)
    assert [a[a.index("--seed") + 1] for a in seen] == ["42", "42", "42", "43", "43", "43"]
    assert ["none" in a for a in seen] == [False, True, True, True, False, True]  # the sides alternate their order
    equal_time = [a for a in scratch if a[-2:] == ["--epochs", "2"]]
    assert len(equal_time) == 2  # 8 s of the preset buys round(8 / 4) = 2 epochs from scratch, on each seed
    assert row["wins"] == {"few": {"scratch": 1, "scratch_equal_time": 1}} and row["met"] is False
    assert row["table"]["few"]["42"]["pretrained"]["test_acc"] == 0.9 and row["vitlab"] == pytest.approx(0.7)
    assert row["table"]["few"]["43"]["scratch_equal_time"]["epochs"] == 2


def test_tensorboard_row_alternates_the_demo_without_and_with_events(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], Path]] = []

    def fake_job(args: list[str], out: Path, fresh_process: bool = False) -> dict:
        seen.append((args, out))
        return {"seconds": 1.02 if "--tensorboard" in args else 1.0}

    monkeypatch.setattr(bench_rows, "finetune_job", fake_job)
    row = bench_rows.bench_tensorboard(tiny(repeats=3, demo_args=("--epochs", "1")))
    switches = [args[args.index("--preset") + 4] for args, _ in seen]
    assert switches == ["--no-tensorboard", "--tensorboard"] * 2 + ["--tensorboard", "--no-tensorboard",
                                                                    "--no-tensorboard", "--tensorboard"]
    assert all(args[:2] == ["--preset", "demo"] and args[-2:] == ["--epochs", "1"] for args, _ in seen)
    assert len({out for _, out in seen}) == 8  # a fresh run folder for every run
    assert row["ratio"] == pytest.approx(1.02) and row["met"] is True and row["target"] == "<= 1.03x"
    assert row["samples_baseline"] == [1.0] * 3 and row["unit"] == "s"


@pytest.mark.slow
def test_tensorboard_row_runs_the_demo_both_ways() -> None:
    result = bench_rows.bench_tensorboard(tiny(repeats=1, demo_args=("--epochs", "1", "--subset", "32")))
    assert_well_formed(result, "tensorboard")
    assert result["ratio"] == pytest.approx(result["vitlab"] / result["baseline"]) and result["baseline"] > 0


# ---------------------------------------------------------------------------------------------------------------
# Reporting and the command line
# ---------------------------------------------------------------------------------------------------------------


def test_table_lists_every_row_with_its_status() -> None:
    settings = tiny()
    table = format_table([
        row_result("data_pipeline", settings, 1000.0, 5000.0, "images/s", ratio=5.0, target=">= 4x", notes="a note"),
        row_result("demo", settings, None, 42.0, "s", target="<= 60 s", met=True, test_acc=0.99),
        row_result("epoch", settings, None, None, "", target="<= 30 s", notes="not measured (x)", measured=False),
        {"row": "train_step", "error": "RuntimeError: boom", "device": "cpu"},
    ])
    header = table.splitlines()[0]
    for column in ("row", "baseline", "vitlab", "ratio", "target", "met"):
        assert column in header
    assert "5.00x" in table and "99.0%" in table and "not measured" in table and "RuntimeError: boom" in table
    assert "5,000" in table and "yes" in table


def test_main_runs_selected_rows_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = run_cli(tmp_path, "--device", "cpu", "--arch", "vit_tiny", "--rows", "eval_throughput,data_pipeline",
                   "--repeats", "1", "--batch-size", "2", "--quick")
    assert "eval_throughput" in capsys.readouterr().out
    assert [r["row"] for r in rows] == ["eval_throughput", "data_pipeline"] and rows[0]["batch_size"] == 2
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["torch"] == torch.__version__ and report["device"]["type"] == "cpu" and "timestamp" in report
    assert report["settings"]["arch"] == "vit_tiny" and report["settings"]["repeats"] == 1
