"""Every flag of the lessons is used or refused: one line naming the flag, exit 2, nothing written.

The audit behind these tests is the table in lessons/README.md ("Flags"). Each lesson is asked through
`vitlab.teaching.cells`: `check_flags` stops at the lesson's `start` (no model is loaded), `run_lesson_file` runs it as
`python lessons/NN_topic.py` would.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from vitlab.teaching.cells import check_flags, run_lesson_file

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
LESSON_FILES = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.py"))

# Each lesson's own flags, with a value that lesson takes: every other lesson must refuse them.
OWN_FLAGS = {"04": ["--block", "2"], "05": ["--patch", "1", "2"], "07": ["--discard", "0.5"],
             "09": ["--trainable-blocks", "1"], "11": ["--other", "shirt"], "14": ["--factor", "2"]}

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def lesson_file(prefix: str) -> Path:
    return next(path for path in LESSON_FILES if path.stem.startswith(prefix))


def refused(path: Path, argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the lesson; assert it exits 2 with one line and writes nothing; return the line."""
    assert run_lesson_file(path, [*argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and error.startswith("vitlab: "), error
    assert not out.exists()
    return error


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda path: path.stem)
def test_data_dir_is_refused_for_the_demo_model_which_reads_no_files(path: Path, tmp_path: Path, capsys):
    (tmp_path / "data").mkdir()

    error = refused(path, ["--data-dir", str(tmp_path / "data")], tmp_path / "out", capsys)

    assert f"--data-dir {tmp_path / 'data'} does nothing for the demo model" in error


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda path: path.stem)
def test_arch_with_checkpoint_is_refused_even_when_they_agree(path: Path, tmp_path: Path, capsys, demo_cache: Path):
    error = refused(path, ["--arch", "vit_tiny", "--checkpoint", str(demo_cache / "demo")], tmp_path / "out", capsys)

    assert "--arch vit_tiny and --checkpoint" in error and "give one" in error


@pytest.mark.parametrize("abbreviation", [["--thread", "1"], ["--arc", "vit_tiny"], ["--dat", "."]])
def test_a_shortened_flag_is_a_typo_not_the_flag_it_begins(abbreviation: list[str], tmp_path: Path, capsys):
    error = refused(lesson_file("01"), abbreviation, tmp_path / "out", capsys)

    assert f"unrecognized arguments: {' '.join(abbreviation)}" in error


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda path: path.stem)
def test_a_lessons_own_flag_is_taken_by_it_and_refused_by_every_other(path: Path):
    for owner, flag in OWN_FLAGS.items():
        error = check_flags(path, flag)
        if path.stem.startswith(owner):
            assert error is None, (flag, str(error))
        else:
            assert f"unrecognized arguments: {' '.join(flag)}" in str(error), (flag, path.name)


@pytest.mark.parametrize("prefix", ["01", "08", "12"])
def test_data_dir_is_refused_for_a_checkpoint_trained_on_generated_images(prefix: str, tmp_path: Path, capsys,
                                                                        demo_cache: Path):
    (tmp_path / "data").mkdir()
    argv = ["--checkpoint", str(demo_cache / "demo"), "--data-dir", str(tmp_path / "data")]

    error = refused(lesson_file(prefix), argv, tmp_path / "out", capsys)

    assert "--data-dir" in error and "it was trained on fashion, which ships with vitlab" in error


def test_lesson_8_refuses_an_imagenet_arch_without_cifar_before_writing(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["--arch", "vit_b_32", "--data-dir", str(tmp_path / "empty")]

    error = refused(lesson_file("08"), argv, tmp_path / "out", capsys)

    assert f"--arch vit_b_32: this lesson fine-tunes it on CIFAR-100, which is not under {tmp_path / 'empty'}" in error


# ---------------------------------------------------------------------------------------------------------------
# run_all.py: it passes unknown flags on, after asking every lesson whether it takes them
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lessons_run_all", LESSONS_DIR / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("argv", "says"), [
    (["--arhc", "vit_b_16"], "17 of 17 lessons refuse the flags passed on, 01_patches first: unrecognized "
                             "arguments: --arhc vit_b_16"),
    (["--only", "01", "04", "--no-quiet", "--block", "2"], "1 of 2 lessons refuse the flags passed on, 01_patches "
                                                           "first: unrecognized arguments: --block 2"),
    (["--out", "figures"], "--out is set for each lesson by run_all"),
    (["--only", "99"], "No lesson matches --only 99"),
])
def test_run_all_refuses_before_running_any_lesson(argv: list[str], says: str, run_all: ModuleType, tmp_path: Path,
                                                   capsys, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(run_all, "run", lambda *args: pytest.fail("a lesson ran"))

    assert run_all.main([*argv, "--out-root", str(tmp_path / "figures")]) == 2

    error = capsys.readouterr().err
    assert error.startswith(f"vitlab: {says}") and len(error.strip().splitlines()) == 1, error
    assert "--no-quiet" not in error  # run_all's own switch, in both spellings, is never passed on
    assert not (tmp_path / "figures").exists()
