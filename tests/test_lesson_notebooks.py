"""The lessons as notebooks: `python -m vitlab.teaching.notebooks` writes .ipynb files, and two of them run in a real
python3 kernel with nbclient, showing their figures below the cells and writing them under the kernel's folder.

The kernel is a separate process: it finds this vitlab through PYTHONPATH (or the editable install) and the
session's demo model through VITLAB_CACHE, which `demo_cache` exports.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vitlab.teaching import notebooks

ROOT = Path(__file__).resolve().parents[1]
LESSONS_DIR = ROOT / "lessons"


def test_the_command_writes_one_notebook_per_lesson_into_its_own_folder(tmp_path: Path, capsys):
    jupytext = pytest.importorskip("jupytext")

    assert notebooks.main(["--lessons", str(LESSONS_DIR), "--only", "01", "07", "--out", str(tmp_path / "nb")]) == 0

    written = sorted(p.name for p in (tmp_path / "nb").iterdir())
    assert written == ["01_patches.ipynb", "07_rollout.ipynb"]
    notebook = jupytext.read(tmp_path / "nb" / "07_rollout.ipynb")
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds[0] == "markdown" and kinds[-1] == "markdown" and kinds.count("code") >= 5
    assert notebook.cells[0].source.startswith("# Lesson 7:") and notebook.metadata.kernelspec.name == "python3"
    assert all(not cell.get("outputs") for cell in notebook.cells)  # no outputs: Colab runs them
    assert "wrote" in capsys.readouterr().out


def test_the_command_refuses_the_lessons_own_folder_and_an_empty_one(tmp_path: Path, capsys):
    assert notebooks.main(["--lessons", str(LESSONS_DIR), "--out", str(LESSONS_DIR)]) == 2
    assert "is the lessons' own folder" in capsys.readouterr().err
    assert notebooks.main(["--lessons", str(tmp_path), "--out", str(tmp_path / "nb")]) == 2
    assert "holds no lesson file" in capsys.readouterr().err
    assert not (tmp_path / "nb").exists() and not list(LESSONS_DIR.glob("*.ipynb"))


def test_the_default_notebook_folder_is_ignored_by_git():
    for path in ("lesson_notebooks/07_rollout.ipynb", "lessons/lesson_outputs/07_rollout/rollout_maps.png"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path


def execute(notebook_path: Path, folder: Path, flags: str | None = None):
    """Run a notebook in the python3 kernel with `folder` as its working folder; optionally set its FLAGS."""
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(notebook_path)
    if flags is not None:
        first = next(cell for cell in notebook.cells if cell.cell_type == "code")  # FLAGS live in the first code cell
        assert "FLAGS: list[str] = []" in first.source
        first.source = first.source.replace("FLAGS: list[str] = []", f"FLAGS = {flags}")
    client = NotebookClient(notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(folder)}})
    client.execute()
    return notebook


def outputs(notebook, kind: str) -> list[dict]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
            if output.output_type == kind]


@pytest.mark.slow
def test_two_lessons_run_as_notebooks_in_a_kernel(demo_cache: Path, tmp_path: Path):
    pytest.importorskip("nbclient")
    notebooks.write_notebooks(notebooks.lesson_files(LESSONS_DIR, ["01", "07"]), tmp_path / "nb")

    patches = execute(tmp_path / "nb" / "01_patches.ipynb", tmp_path)
    rollout = execute(tmp_path / "nb" / "07_rollout.ipynb", tmp_path, flags='["--discard", "0.5", "--out", "mine"]')

    for notebook, folder, figures in ((patches, "lesson_outputs/01_patches", ["patch_grid", "patches_to_tokens"]),
                                      (rollout, "mine", ["rollout_maps", "rollout_scores"])):
        assert not outputs(notebook, "error")
        shown = [output for output in outputs(notebook, "display_data") if "image/png" in output.data]
        assert len(shown) == len(figures)  # each figure shown below its cell
        for name in figures:
            assert (tmp_path / folder / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    printed = "".join(output.text for output in outputs(rollout, "stream") if output.name == "stdout")
    assert "rollout max, discard 50%" in printed  # the first cell's FLAGS set --discard; the kernel's argv was ignored
    assert "Model: demo vit_tiny (fashion)" in printed and "## Questions" not in printed  # the cell shows them
