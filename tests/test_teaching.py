"""vitlab.teaching's machinery, on small lesson files written here: assert_same's messages, reading cells, and
where a lesson's settings come from as a script, under the runner and in a notebook kernel. No model is loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vitlab.teaching import lesson
from vitlab.teaching.cells import check_flags, questions, read_cells, run_lesson_file
from vitlab.teaching.checks import assert_same

ROOT = Path(__file__).resolve().parents[1]

# A lesson in the course's shape that loads no model: it prints its settings, and fails on purpose when asked to.
FAKE_LESSON = '''\
# ---
# jupyter:
#   kernelspec:
#     name: python3
# ---

# %% [markdown]
# # Lesson 5: a fake lesson
#
# Prose about it.

# %%
import torch

from vitlab.teaching.lesson import assert_same, start

FLAGS: list[str] = ["--threads", "3"]
settings = start("05_fake", FLAGS)
print(f"threads {settings.threads} torch {torch.get_num_threads()} out {settings.out}")


# %%
def double_by_hand(x):
    return 2 * x


# %%
assert_same(torch.tensor([2.0, 4.0]) if settings.out != "wrong" else torch.tensor([2.0, 5.0]),
            double_by_hand(torch.tensor([1.0, 2.0])), vitlab="vitlab's double", lesson="double_by_hand")

# %% [markdown]
# ## Questions
#
# 1. Why?
# 2. Why not?
'''


@pytest.fixture
def fake_lesson(tmp_path: Path) -> Path:
    path = tmp_path / "05_fake.py"
    path.write_text(FAKE_LESSON)
    return path


# ---------------------------------------------------------------------------------------------------------------
# assert_same
# ---------------------------------------------------------------------------------------------------------------


def test_assert_same_passes_within_float_rounding_and_for_equal_exact_values():
    assert_same(torch.ones(3), torch.ones(3) + 1e-7, vitlab="vitlab's f", lesson="f_by_hand")
    assert_same(torch.tensor([True, False]), torch.tensor([True, False]), vitlab="vitlab's f", lesson="f_by_hand")
    assert_same(0.25, 0.25, vitlab="vitlab's f", lesson="f_by_hand")


def test_assert_same_names_both_sides_and_where_they_differ():
    lesson_value = torch.zeros(2, 3)
    vitlab_value = lesson_value.clone()
    vitlab_value[1, 2] = 0.5

    with pytest.raises(AssertionError) as failed:
        assert_same(vitlab_value, lesson_value, vitlab="vitlab's rollout (mean fusion)", lesson="rollout_by_hand",
                    hint="Check the residual.")

    assert str(failed.value) == (
        "vitlab's rollout (mean fusion) differs from the lesson's rollout_by_hand: largest difference 0.5 at (1, 2) "
        "(vitlab 0.5, lesson 0); 1 of 6 values differ by more than the float rounding allowed (atol 1e-05 + rtol "
        "1.3e-06 x |lesson|). Check the residual.")


@pytest.mark.parametrize(("vitlab_value", "lesson_value", "says"), [
    (torch.ones(3), torch.ones(4), "the shapes differ: vitlab (3,), lesson (4,)"),
    (torch.tensor([True, True, False]), torch.tensor([True, False, True]), "2 of 3 values differ, the first at (1,)"),
    (torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]), "largest difference nan at (1,)"),
    (0.5, 0.25, "largest difference 0.25 (vitlab 0.5, lesson 0.25)"),
    (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.001]), "atol 0 + rtol 0.0001"),
])
def test_assert_same_explains_each_kind_of_difference(vitlab_value, lesson_value, says: str):
    tolerances = {"rtol": 1e-4, "atol": 0.0} if says.startswith("atol") else {}
    with pytest.raises(AssertionError, match="vitlab's f differs from the lesson's f_by_hand") as failed:
        assert_same(vitlab_value, lesson_value, vitlab="vitlab's f", lesson="f_by_hand", **tolerances)
    assert says in str(failed.value)


# ---------------------------------------------------------------------------------------------------------------
# Cells, and running a lesson file
# ---------------------------------------------------------------------------------------------------------------


def test_read_cells_splits_a_percent_file_and_keeps_its_line_numbers(fake_lesson: Path):
    cells = read_cells(fake_lesson)

    assert [cell.kind for cell in cells] == ["markdown", "code", "code", "code", "markdown"]
    assert cells[0].source == "# Lesson 5: a fake lesson\n\nProse about it.\n"
    lines = fake_lesson.read_text().splitlines()
    assert lines[cells[1].line - 1] == "import torch"
    assert lines[cells[2].line - 1] == "def double_by_hand(x):"
    assert questions(cells) == "## Questions\n\n1. Why?\n2. Why not?"


def test_read_cells_knows_jupytexts_other_cell_markers(tmp_path: Path):
    path = tmp_path / "cells.py"
    path.write_text("# %% A title [markdown]\n# prose\n# %% [md]\n# more\n# %% [raw]\nraw text\n"
                    "# %% tags=[\"keep\"]\nx = 1\n")

    assert [(cell.kind, cell.source) for cell in read_cells(path)] == [
        ("markdown", "prose\n"), ("markdown", "more\n"), ("code", "x = 1\n")]


def test_a_run_reads_flags_then_the_command_line_and_prints_the_questions(fake_lesson: Path, capsys):
    threads = torch.get_num_threads()

    assert run_lesson_file(fake_lesson, ["--threads", "2", "--out", "elsewhere"]) == 0

    printed = capsys.readouterr().out
    assert "threads 2 torch 2 out elsewhere" in printed  # the command line comes after FLAGS, so it wins
    assert printed.rstrip().endswith("## Questions\n\n1. Why?\n2. Why not?")
    assert torch.get_num_threads() == threads  # restored for the caller


def test_a_refused_flag_is_one_line_and_exit_2_and_a_failed_check_raises_at_its_line(fake_lesson: Path, capsys):
    assert run_lesson_file(fake_lesson, ["--thread", "2"]) == 2  # an abbreviation is a typo, not --threads
    error = capsys.readouterr().err
    assert error == "vitlab: unrecognized arguments: --thread 2; see python lessons/05_fake.py --help for every " \
                    "flag.\n"

    with pytest.raises(AssertionError, match="vitlab's double differs from the lesson's double_by_hand") as failed:
        run_lesson_file(fake_lesson, ["--out", "wrong"])
    frame = [entry for entry in failed.traceback if str(entry.path) == str(fake_lesson)][-1]
    assert fake_lesson.read_text().splitlines()[frame.lineno].startswith("assert_same(")


def test_replace_rebinds_a_name_after_the_cell_that_defines_it(fake_lesson: Path):
    with pytest.raises(AssertionError, match="differs from the lesson's double_by_hand"):
        run_lesson_file(fake_lesson, [], replace={"double_by_hand": lambda real: lambda x: 3 * x})
    with pytest.raises(ValueError, match="never defines no_such_name"):
        run_lesson_file(fake_lesson, [], replace={"no_such_name": lambda real: real})


def test_check_flags_stops_at_start_and_says_whether_the_lesson_takes_them(fake_lesson: Path, capsys):
    assert check_flags(fake_lesson, ["--threads", "4"]) is None
    assert "unrecognized arguments: --block 2" in str(check_flags(fake_lesson, ["--block", "2"]))
    assert "threads" not in capsys.readouterr().out  # nothing after start() ran


def test_in_a_notebook_kernel_start_reads_flags_and_ignores_the_kernels_argv(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(lesson, "in_notebook", lambda: True)
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/tmp/kernel-1.json"])
    threads = torch.get_num_threads()
    try:
        settings = lesson.start("05_fake", ["--threads", "3"])
    finally:
        torch.set_num_threads(threads)

    assert settings.threads == 3 and settings.out == "lesson_outputs/05_fake"


@pytest.mark.slow
def test_as_a_script_the_file_runs_through_the_runner_with_its_exit_codes(fake_lesson: Path):
    def script(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(fake_lesson), *argv], capture_output=True, text=True, timeout=120,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, cwd=fake_lesson.parent)

    ran, refused, failed = script("--threads", "2"), script("--nope"), script("--out", "wrong")

    assert ran.returncode == 0 and "threads 2 torch 2" in ran.stdout and "2. Why not?" in ran.stdout, ran.stderr
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "vitlab: unrecognized arguments: --nope; see python lessons/05_fake.py --help for every flag."]
    line = 1 + fake_lesson.read_text().splitlines().index("assert_same(torch.tensor([2.0, 4.0]) if settings.out != "
                                                        '"wrong" else torch.tensor([2.0, 5.0]),')
    assert failed.returncode == 1 and f'05_fake.py", line {line}' in failed.stderr  # the traceback shows the file
    assert "vitlab's double differs from the lesson's double_by_hand" in failed.stderr


@pytest.mark.slow
def test_importing_the_teaching_modules_loads_no_notebook_machinery():
    code = ("import sys, vitlab.teaching.lesson, vitlab.teaching.notebooks; "
            "print(sorted(m for m in ('jupytext', 'nbclient', 'IPython', 'ipykernel') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert completed.stdout.strip() == "[]", completed.stderr
