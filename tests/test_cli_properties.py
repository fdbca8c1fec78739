"""Property: every command line of finetune, pretrain and the lessons either exits 2 with ONE line, or is valid.

Command lines are generated from each CLI's flags, mixing values inside the allowed range with values outside it
(negatives, 0, huge, nan, inf, '1e9' for a count, words, empty), missing values, unknown flags and typos of flag
names. The ranges are written out here, independently of vitlab's rule tables. Each command line holds valid values
and at most one defect, so that every refusal can be attributed:

- a command line with a defect must exit 2 with a one-line message naming the flag, no traceback, nothing written;
- a valid one must get past the checks (the work itself is replaced by `Reached`, so it costs nothing), except
  where a check involving several flags refuses it, which must then also be one line and exit 2.

A handful of valid cheap command lines run for real (marked slow) and their outputs are checked.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from vitlab.data import DATASETS
from vitlab.model import ARCHS
from vitlab.teaching import subject
from vitlab.teaching.cells import run_lesson_file
from vitlab.training import finetune, pretrain
from vitlab.training.checkpoint import load_checkpoint
from vitlab.training.train import RECIPES

JUNK = ("abc", "", "five", "0x10", "1,5", "--", "NaN%")
FAST = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

Texts = st.SearchStrategy[str]
Flag = tuple[Texts, Texts] | None  # (valid values, invalid values) for a flag that takes a value; None: a switch


class Reached(Exception):
    """Raised in place of the work a command would start: its checks all passed."""


def reached(*args, **kwargs) -> None:
    """Stands in for the work (training, loading a model): raise Reached."""
    raise Reached()


def numbers(low: float, high: float, whole: bool = True, low_open: bool = False) -> Flag:
    """Texts for a number flag: in range (edges included), and outside: beyond the edges, nan, inf, words."""
    if whole:
        valid = st.one_of(st.sampled_from((int(low), int(high))), st.integers(int(low), int(high))).map(str)
        wrong = st.one_of(st.sampled_from((int(low) - 1, int(high) + 1, 0, -1, 2**64)).filter(
            lambda v: not low <= v <= high), st.integers(max_value=int(low) - 1), st.integers(min_value=int(high) + 1))
        not_whole = st.one_of(st.floats(allow_nan=True).map(repr), st.sampled_from(("1e9", "2.5", "1.0")))
        return valid, st.one_of(wrong.map(str), not_whole, st.sampled_from(JUNK))
    first = math.nextafter(low, math.inf) if low_open else low
    valid = st.one_of(st.sampled_from((first, high)), st.floats(low, high, exclude_min=low_open)).map(repr)
    last_out = low if low_open else math.nextafter(low, -math.inf)  # never -0.0 for a low of 0
    outside = st.one_of(st.sampled_from((last_out, math.nextafter(high, math.inf))),
                        st.floats(max_value=last_out), st.floats(min_value=math.nextafter(high, math.inf)))
    return valid, st.one_of(outside.map(repr), st.sampled_from(("nan", "inf", "-inf", "1e999")), st.sampled_from(JUNK))


def choices(allowed: tuple[str, ...]) -> Flag:
    return st.sampled_from(allowed), st.sampled_from(("", "VIT_TINY", "vit", "resnet50", "cifar1000", "1", "none!"))


def typo(flag: str, data: st.DataObject) -> str:
    """A misspelling argparse cannot take for the flag: a letter doubled or two neighbours swapped (never a prefix)."""
    name = flag[2:]
    at = data.draw(st.integers(0, len(name) - 1))
    doubled = name[:at] + name[at] + name[at:]
    swapped = name[:at] + name[at + 1:at + 2] + name[at] + name[at + 2:]
    return "--" + data.draw(st.sampled_from((doubled + "s", swapped if swapped != name else doubled + "x")))


DEFECTS = ("none", "value", "value", "value", "missing", "typo", "unknown")


def command_line(data: st.DataObject, flags: dict[str, Flag]) -> tuple[list[str], str | None]:
    """A generated argv over `flags`: valid values, plus at most one defect; and the text the refusal must name.

    One defect per command line makes each refusal attributable: the one line must name the flag it is about.
    """
    chosen = data.draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True))
    defect = data.draw(st.sampled_from(DEFECTS)) if chosen else data.draw(st.sampled_from(("none", "unknown")))
    broken = data.draw(st.sampled_from(chosen)) if chosen else None
    if defect in ("value", "missing") and flags[broken] is None:
        defect = "typo"  # a switch has no value to get wrong or to leave out
    argv, named = [], None
    for flag in chosen:
        if flags[flag] is None:
            argv.append(flag)
            continue
        text = data.draw(flags[flag][1] if flag == broken and defect == "value" else flags[flag][0])
        argv += [f"{flag}={text}"] if data.draw(st.booleans()) else [flag, text]
    if defect in ("value", "missing", "typo"):
        at = argv.index(next(a for a in argv if a == broken or a.startswith(broken + "=")))
        named = broken
        if defect == "missing":  # the flag alone, followed by the next flag or by nothing
            argv[at:at + 1 + (flags[broken] is not None and "=" not in argv[at])] = [broken]
        elif defect == "typo":
            named = typo(broken, data)
            argv[at] = argv[at].replace(broken, named, 1)
    if defect == "unknown":
        named = data.draw(st.sampled_from(("--no-such-flag", "--verbose", "-x", "--gpu")))
        starts = [i for i, a in enumerate(argv) if a.startswith("--")] + [len(argv)]  # never between flag and value
        argv.insert(data.draw(st.sampled_from(starts)), named)
    return argv, named


def outcome(main, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int | str, str]:
    """Run a CLI's main in-process: its exit code (or "reached"), and what it wrote to stderr."""
    try:
        code = main(argv)
    except Reached:
        code = "reached"
    except SystemExit as stop:  # argparse's own exits (usage errors)
        code = stop.code
    return code, capsys.readouterr().err


def assert_refused_or_reached(code: int | str, err: str, named: str | None, argv: list[str], written: Path) -> None:
    """A defect (`named`: the flag it is in) exits 2 with one line naming it; a valid line passes the checks."""
    event(f"{'valid' if named is None else 'one defect'}: {'passed the checks' if code == 'reached' else 'exit 2'}")
    assert code in (2, "reached"), (argv, code, err)
    assert not written.exists(), (argv, "wrote", written)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert err.startswith("vitlab: "), (argv, err)
        assert named is None or named in err, (argv, f"the message does not name {named}", err)
    else:
        assert named is None, (argv, f"a bad {named} got past the checks")


# ---------------------------------------------------------------------------------------------------------------
# python -m vitlab.finetune
# ---------------------------------------------------------------------------------------------------------------

FINETUNE_FLAGS = {
    # The ranges a user is promised, written out here rather than read from vitlab.cli.RULES.
    "--epochs": numbers(1, 10_000), "--batch-size": numbers(1, 65_536), "--lr": numbers(1e-8, 10, whole=False),
    # Valid for both archs (vit_tiny has 4 blocks); refused for both (ViT-B/16 has 12, the rule allows 10,000).
    "--trainable-blocks": (st.sampled_from(("0", "2", "4", "all")), numbers(0, 12)[1]),
    "--seed": numbers(0, 2**63 - 1), "--subset": numbers(1, 10**9),
    # Valid for every dataset (CIFAR has 50,000 training images); refused for every dataset.
    "--val-size": (numbers(1, 49_999)[0], numbers(1, 10**9)[1]), "--max-rotation": numbers(0, 180, whole=False),
    "--arch": choices(ARCHS), "--dataset": choices(tuple(d for d in DATASETS if d != "folder")),
    "--recipe": choices(tuple(RECIPES)), "--preset": choices(("demo",)),
    "--pretrained": (st.just("none"), st.sampled_from(("/no/such/weights.pth", "imagenet.pth", ""))),
    "--quiet": None, "--compile": None, "--cache-trunk": None,
    "--no-quiet": None, "--no-compile": None, "--no-cache-trunk": None,  # any preset's choice can be undone
}


@FAST
@given(data=st.data())
def test_finetune_command_lines_exit_2_in_one_line_or_pass_the_checks(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(finetune, "train_and_test", reached)
    argv, named = command_line(data, FINETUNE_FLAGS)
    out = tmp_path / "run"
    code, err = outcome(finetune.main, [*argv, "--out", str(out)], capsys)
    assert_refused_or_reached(code, err, named, argv, out)


# ---------------------------------------------------------------------------------------------------------------
# python -m vitlab.pretrain
# ---------------------------------------------------------------------------------------------------------------

MASK_BLOCKS = (st.sampled_from(("1", "2", "4", "8")), st.sampled_from(("0", "3", "5", "16", "-2", "2.0", "1e9")))
PRETRAIN_FLAGS = {
    "--num-classes": numbers(1, 10_000), "--system-seed": numbers(0, 2**63 - 1), "--seed": numbers(0, 2**63 - 1),
    "--epochs": numbers(1, 100_000), "--steps-per-epoch": numbers(1, 10**7), "--batch-size": numbers(1, 65_536),
    "--lr": numbers(0, 1, whole=False, low_open=True), "--weight-decay": numbers(0, 1, whole=False),
    "--position-lr-scale": numbers(0, 1000, whole=False, low_open=True),
    "--mask-ratio": numbers(1 / 64, 63 / 64, whole=False),  # one hidden patch of the 8x8 grid, and one visible
    "--class-weight": numbers(0, 1000, whole=False), "--threads": numbers(1, 1024),
    "--mask-block": MASK_BLOCKS, "--quiet": None, "--ship": None, "--no-quiet": None, "--no-ship": None,
}


@FAST
@given(data=st.data())
def test_pretrain_command_lines_exit_2_in_one_line_or_pass_the_checks(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pretrain, "setup", reached)
    argv, named = command_line(data, PRETRAIN_FLAGS)
    out = tmp_path / "run"
    code, err = outcome(pretrain.main, [*argv, "--out", str(out)], capsys)
    assert_refused_or_reached(code, err, named, argv, out)


# ---------------------------------------------------------------------------------------------------------------
# The lessons' common flags (lesson 4, whose --block is a lesson's own), run as `python lessons/04_...py` runs it
# ---------------------------------------------------------------------------------------------------------------


LESSON_4 = Path(__file__).resolve().parents[1] / "lessons" / "04_attention_heads.py"


@pytest.fixture()
def lesson_paths(tmp_path: Path, demo_cache: Path) -> dict[str, Path]:
    """Real and fake things to point the lessons' path flags at."""
    (tmp_path / "data").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 4)
    return {"data": tmp_path / "data", "file": tmp_path / "a_file", "random": tmp_path / "random.pt",
            "run": demo_cache / "demo"}


def lesson_flags(paths: dict[str, Path], out: Path) -> dict[str, Flag]:
    labelled = lambda good, bad: (st.sampled_from(good), st.sampled_from(bad))  # noqa: E731
    return {
        "--arch": choices(("vit_tiny", "vit_b_16")),
        "--threads": numbers(1, 1024),
        "--block": numbers(1, 12),  # ViT-B/16's 12 blocks; the loaded model's own count is checked once it loads
        "--checkpoint": labelled((str(paths["run"]), str(paths["run"] / "best.pt")),
                                 ("/no/such/run", str(paths["random"]), str(paths["data"]), "")),
        "--data-dir": labelled((str(paths["data"]),), ("/no/such/folder", str(paths["file"]))),
        "--out": labelled((str(out),), (str(paths["file"]), str(paths["file"] / "under"), "", "  ")),
    }


@FAST
@given(data=st.data())
def test_lesson_command_lines_exit_2_in_one_line_or_pass_the_checks(data, lesson_paths, tmp_path, capsys,
                                                                    monkeypatch):
    for loader in ("_demo", "_from_checkpoint", "_imagenet_model"):
        monkeypatch.setattr(subject, loader, reached)
    out = tmp_path / "out"
    argv, named = command_line(data, lesson_flags(lesson_paths, out))
    code, err = outcome(lambda argv: run_lesson_file(LESSON_4, argv), ["--out", str(out), *argv], capsys)
    assert_refused_or_reached(code, err, named, argv, out)


# ---------------------------------------------------------------------------------------------------------------
# A handful of valid cheap command lines, run for real; and one real process
# ---------------------------------------------------------------------------------------------------------------


def assert_finite_numbers(value, where: str) -> None:
    """Every number in a JSON value is finite."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert_finite_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert_finite_numbers(item, f"{where}[{index}]")
    elif isinstance(value, float):
        assert math.isfinite(value), where


@pytest.mark.slow
@settings(max_examples=2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**63 - 1), lr=st.floats(1e-4, 5e-2), batch=st.integers(32, 256))
def test_valid_finetune_runs_write_finite_results(seed, lr, batch, tmp_path_factory, demo_cache):
    out = tmp_path_factory.mktemp("finetune") / "run"
    argv = ["--preset", "demo", "--epochs", "1", "--subset", "64", "--seed", str(seed), "--lr", repr(lr),
            "--batch-size", str(batch), "--out", str(out), "--quiet"]
    assert finetune.main(argv) == 0, argv
    summary = json.loads((out / "summary.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert_finite_numbers(summary, "summary")
    assert_finite_numbers(history, "history")
    accuracies = [summary["test_acc"], summary["best_val_acc"],
                  *(record[key] for record in history for key in ("train_acc", "val_acc"))]
    assert all(0.0 <= a <= 1.0 for a in accuracies), accuracies
    assert load_checkpoint(out / "best.pt")["config"]["seed"] == seed
    for figure in ("curves.png", "predictions.png"):
        assert Image.open(out / figure).size[0] > 100


@pytest.mark.slow
@settings(max_examples=1, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mask_ratio=st.floats(0.1, 0.9), mask_block=st.sampled_from((1, 2, 4)), class_weight=st.floats(0, 2))
def test_valid_pretrain_runs_write_finite_results(mask_ratio, mask_block, class_weight, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    argv = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--num-classes", "5", "--quiet",
            "--mask-ratio", repr(mask_ratio), "--mask-block", str(mask_block), "--class-weight", repr(class_weight),
            "--out", str(out)]
    assert pretrain.main(argv) == 0, argv
    history = json.loads((out / "history.json").read_text())
    card = json.loads((out / "card.json").read_text())
    assert_finite_numbers(history, "history")
    assert_finite_numbers(card, "card")
    assert all(0.0 <= r["class_acc"] <= 1.0 and -1.0 <= r["position_spearman"] <= 1.0 for r in history)
    assert zipfile.is_zipfile(out / "base.pt") and "model" in load_checkpoint(out / "base.pt")


def test_a_real_process_refuses_garbage_in_one_line(tmp_path):
    """The in-process runs above cannot see what a real interpreter prints; one real process for pretrain
    (test_validation.py runs one for finetune)."""
    result = subprocess.run([sys.executable, "-m", "vitlab.pretrain", "--mask-ratio", "nan", "--epochs", "-3",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "--mask-ratio nan" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("main, flag", [(finetune.main, "--epochs"), (pretrain.main, "--epochs"),
                                        (finetune.main, "--arch")])
def test_a_double_dash_value_is_a_missing_value(main, flag, tmp_path, capsys):
    # argparse drops a "--" value and hands the flag an empty list no type check sees (found by the lesson property).
    code, err = outcome(main, [f"{flag}=--", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.startswith(f"vitlab: argument {flag}: expected one argument")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
