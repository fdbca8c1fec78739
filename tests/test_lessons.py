"""Tests for the course in lessons/: every lesson has the notebook shape, runs in its default mode and writes the
figures it declares, and fails loudly when vitlab's function differs from the algorithm it writes out.

Lessons run in this process through `vitlab.teaching.cells.run_lesson_file` (what `python lessons/NN_topic.py` runs),
so the session's trained demo model (`demo_cache`) is shared by all of them. Nothing here touches the network.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from einops import rearrange

from vitlab.teaching.cells import Cell, questions, read_cells, run_lesson_file

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
LESSON_FILES = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.py"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def lesson_file(prefix: str) -> Path:
    return next(path for path in LESSON_FILES if path.stem.startswith(prefix))


def declared_figures(path: Path) -> tuple[str, ...]:
    """The FIGURES tuple a lesson's code assigns, read without running it."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FIGURES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} declares no FIGURES")


def numbered(text: str) -> list[str]:
    return re.findall(r"^\d\. ", text, flags=re.MULTILINE)


# ---------------------------------------------------------------------------------------------------------------
# Shape: cheap checks on every lesson file, nothing run
# ---------------------------------------------------------------------------------------------------------------


def test_the_course_has_its_lessons_in_order():
    numbers = [int(path.stem[:2]) for path in LESSON_FILES]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 16


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda path: path.stem)
def test_a_lesson_is_a_percent_notebook_with_prose_beside_its_code(path: Path):
    cells = read_cells(path)
    markdown = [cell for cell in cells if cell.kind == "markdown"]
    code = "\n".join(cell.source for cell in cells if cell.kind == "code")

    assert cells[0].kind == "markdown" and cells[0].source.startswith(f"# Lesson {int(path.stem[:2])}:")
    assert "Builds on: `vitlab/" in cells[0].source
    assert 2 <= len(numbered(questions(cells) or "")) <= 4, "the last cell is a '## Questions' markdown cell"
    for name in declared_figures(path):
        assert any(name in cell.source for cell in markdown), f"no markdown cell describes {name}"
    first_code = next(cell for cell in cells if cell.kind == "code")
    assert "\nFLAGS: list[str] = []  # in a notebook" in first_code.source, "a notebook's settings: the first code cell"
    assert re.search(rf'start\("{path.stem}", FLAGS\b', code), "the settings cell reads FLAGS for this lesson"
    assert len(markdown) >= 4 and sum(cell.kind == "code" for cell in cells) >= 4
    for forbidden in ("def main", "__name__", "assert_close", "allclose(", "sys.argv", "__file__"):
        assert forbidden not in code, f"{path.name} uses {forbidden!r}: lessons run as cells (see vitlab.teaching)"


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda path: path.stem)
def test_markdown_cells_hold_only_comments(path: Path):
    """A line without '#' inside a markdown cell would be prose to Jupyter but lost to `python lesson.py`."""
    marker = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("# %%"):
            marker = "markdown" if "[markdown]" in line else "code"
        elif marker == "markdown" and line.strip():
            assert line.startswith("#"), f"{path.name}:{number} is code inside a markdown cell"


def algorithm_cells(cells: list[Cell]) -> list[tuple[int, str]]:
    """(cell index, function name) for each hand-written algorithm: a function whose name ends in _by_hand."""
    found = []
    for index, cell in enumerate(cells):
        if cell.kind == "code":
            found += [(index, node.name) for node in ast.parse(cell.source).body
                      if isinstance(node, ast.FunctionDef) and node.name.endswith("_by_hand")]
    return found


@pytest.mark.parametrize("path", [p for p in LESSON_FILES if "_by_hand" in p.read_text()], ids=lambda p: p.stem)
def test_a_written_out_algorithm_has_a_cell_of_its_own_and_is_checked_after_it(path: Path):
    cells = read_cells(path)
    for index, name in algorithm_cells(cells):
        body = ast.parse(cells[index].source).body
        assert all(isinstance(node, ast.FunctionDef | ast.Assign) for node in body), (
            f"{name}'s cell does more than define it: the algorithm stands alone, the check follows")
        later = "\n".join(cell.source for cell in cells[index + 1:] if cell.kind == "code")
        assert "assert_same(" in later and f"{name}" in later, f"no assert_same after {name}"


# ---------------------------------------------------------------------------------------------------------------
# Running: every lesson in its default mode, on the shared demo model
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda path: path.stem)
def test_lesson_runs_and_writes_its_figures(path: Path, demo_cache: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # anything written outside --out would land here
    threads, search_path = torch.get_num_threads(), list(sys.path)

    assert run_lesson_file(path, ["--out", str(tmp_path / "out")]) == 0

    for name in declared_figures(path):
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2000, f"{name} is not a real PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    printed = capsys.readouterr().out
    assert "Model: demo vit_tiny (fashion)" in printed or "ViT-B/16" in printed  # it explains what it computed
    assert len(numbered(printed.split("## Questions")[-1])) == len(numbered(questions(read_cells(path))))
    assert torch.get_num_threads() == threads and sys.path == search_path  # the run leaves the caller as it was


@pytest.mark.slow
def test_missing_imagenet_weights_give_a_message_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # empty: no cached weights
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # set_dir() would override TORCH_HOME
    attempts = []

    def offline(url: str, *args, **kwargs) -> None:
        attempts.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)

    code = run_lesson_file(lesson_file("04"), ["--arch", "vit_b_16", "--out", str(tmp_path / "out")])

    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("vitlab: ") and "Traceback" not in error
    assert "vit_b_16-c867db91.pth" in error and str(tmp_path / "torch_home") in error  # what is missing, where
    assert len(attempts) == 1  # it tried the ordinary download once, which failed as it does offline
    assert not (tmp_path / "out").exists()


def _channels_last(real: Callable) -> Callable:  # vit-pytorch's order: does not match conv_proj's (c p1 p2) weights
    return lambda images, patch_size: rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size,
                                                p2=patch_size)


def _forgets_the_last_block(real: Callable) -> Callable:
    return lambda attentions, head_fusion="mean", **options: real(attentions[:-1], head_fusion, **options)


def _fits_another_objective(real: Callable) -> Callable:  # 1000x the weight decay: not the lesson's minimum
    from vitlab.analysis.probes import ProbeConfig

    return lambda features, labels, num_classes, config=None: real(features, labels, num_classes,
                                                                   ProbeConfig(weight_decay=1.0))


# A lesson that writes its algorithm out checks that vitlab's function equals it: break the function the lesson
# uses (its name in the lesson, as it was imported), and assert_same says which differs from what.
BROKEN = {
    "01": ("patchify", _channels_last, "torchvision's conv_proj"),
    "03": ("position_embedding_similarity", lambda real: lambda model: 0.5 * real(model), None),
    "06": ("mean_attention_distance", lambda real: lambda attentions, size: real(attentions, size) + 1, None),
    "07": ("rollout", _forgets_the_last_block, None),
    "10": ("pointing_game", lambda real: lambda maps, objects: real(-maps, objects), None),  # the coldest patch
    "11": ("gradient_weighted_attention",  # explains the wrong class
           lambda real: lambda model, images, target: real(model, images, (target + 1) % 4), None),
    "12": ("logit_lens", lambda real: lambda model, states: real(model, states) + 0.1, None),
    "13": ("fit_probe", _fits_another_objective, None),
    "14": ("token_norms", lambda real: lambda states: 1.01 * real(states), None),
    "15": ("pca", lambda real: lambda x, k: real(2 * x, k), "vitlab.analysis.projections.pca"),  # 4x the variances
    "16": ("ablate_heads", lambda real: lambda model, heads: real(model, {0: [0]}), None),
    "17": ("deletion_curve",  # removes the least relevant patches first
           lambda real: lambda model, images, maps, *args, **kw: real(model, images, -maps, *args, **kw), None),
}


@pytest.mark.slow
@pytest.mark.parametrize("prefix", sorted(BROKEN))
def test_a_lesson_fails_loudly_when_vitlab_differs_from_its_algorithm(prefix: str, demo_cache: Path, tmp_path: Path):
    name, breaks, named = BROKEN[prefix]
    named = named or f"vitlab's {name}"

    with pytest.raises(AssertionError, match=rf"{re.escape(named)}\b.*differs from the lesson's \w+"):
        run_lesson_file(lesson_file(prefix), ["--out", str(tmp_path)], replace={name: breaks})


@pytest.mark.slow
def test_lesson_9_fails_loudly_when_a_frozen_block_changed(demo_cache: Path, tmp_path: Path):
    def trains_everything(freeze: Callable) -> Callable:  # a bug: the "frozen" blocks train too
        return lambda model, trainable_blocks: freeze(model, len(model.encoder.layers))

    with pytest.raises(AssertionError, match="Block 1 was frozen, yet its attention changed"):
        run_lesson_file(lesson_file("09"), ["--out", str(tmp_path)], replace={"freeze_all_but_last": trains_everything})


@pytest.mark.slow
def test_lesson_15_fails_loudly_when_a_frozen_block_differs_from_the_base(demo_cache: Path, tmp_path: Path):
    def changes_the_first_block(real: Callable) -> Callable:  # a bug: the "before" model is not the frozen base
        def before(subject: Any):
            model, name, frozen = real(subject)
            with torch.no_grad():
                model.encoder.layers[0].mlp[0].bias.add_(0.01)
            return model, name, frozen
        return before

    with pytest.raises(AssertionError, match="Block 1 was frozen, yet its class tokens differ"):
        run_lesson_file(lesson_file("15"), ["--out", str(tmp_path)], replace={"model_before": changes_the_first_block})


@pytest.mark.slow
def test_run_all_runs_lessons_as_scripts_and_prints_a_table(demo_cache: Path, tmp_path: Path):
    completed = subprocess.run(
        [sys.executable, str(LESSONS_DIR / "run_all.py"), "--only", "01", "--quiet", "--out-root", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "VITLAB_CACHE": str(demo_cache)}, timeout=300,
    )

    assert completed.returncode == 0, completed.stderr
    assert re.search(r"01_patches\s+\d+\.\d\s+ok", completed.stdout)
    assert "1 of 1 lessons succeeded" in completed.stdout
    assert (tmp_path / "01_patches" / "patch_grid.png").read_bytes().startswith(PNG_SIGNATURE)


# ---------------------------------------------------------------------------------------------------------------
# Lessons 12 to 16 on other models: a checkpoint, and ViT-B/16 with planted random weights
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["12", "13", "14", "15", "16"])
def test_lessons_12_to_16_study_a_checkpoint(prefix: str, demo_cache: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]):
    path, checkpoint = lesson_file(prefix), demo_cache / "demo" / "best.pt"

    assert run_lesson_file(path, ["--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 0

    assert f"vit_tiny from {checkpoint}" in capsys.readouterr().out
    assert all((tmp_path / name).read_bytes().startswith(PNG_SIGNATURE) for name in declared_figures(path))


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["12", "14", "15"])  # 13 (24 probes) and 16 (144 ablations): minutes, run by hand
def test_lessons_12_14_15_run_on_vit_b_16_with_planted_weights(prefix: str, demo_cache: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    from torchvision.models import vit_b_16

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # set_dir() would override TORCH_HOME
    cache_file = tmp_path / "torch_home" / "hub" / "checkpoints" / "vit_b_16-c867db91.pth"
    cache_file.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(vit_b_16().state_dict(), cache_file)  # random weights where torchvision looks: nothing downloaded
    (tmp_path / "no_data").mkdir()  # a folder without CIFAR: the lesson falls back to its generated images
    path = lesson_file(prefix)

    argv = ["--arch", "vit_b_16", "--data-dir", str(tmp_path / "no_data"), "--out", str(tmp_path)]
    assert run_lesson_file(path, argv) == 0

    assert all((tmp_path / name).read_bytes().startswith(PNG_SIGNATURE) for name in declared_figures(path))


# ---------------------------------------------------------------------------------------------------------------
# Lessons on a timm or Hugging Face checkpoint (--checkpoint PATH, imported by vitlab.import_vit)
# ---------------------------------------------------------------------------------------------------------------


def test_an_imported_subject_has_its_own_classes_and_normalisation(hf_folder: Path, tmp_path: Path) -> None:
    from vit_sources import LABELS, MEAN, STD

    from vitlab.teaching.flags import parse_args
    from vitlab.teaching.subject import study

    subject = study(parse_args("07_rollout", ["--checkpoint", str(hf_folder), "--data-dir", str(tmp_path)]))
    assert (subject.classes, subject.source, subject.labels_match) == (list(LABELS.values()), "imported", False)
    images = subject.examples.images[:2]  # uint8 (2, 3, 32, 32): the model's own size, so no resize
    expected = (images.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(subject.inputs(images), expected)


def test_a_headless_checkpoint_is_refused_with_how_to_give_it_a_head(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from vit_sources import save_hf_features

    from vitlab.errors import VitlabError
    from vitlab.teaching.flags import parse_args
    from vitlab.teaching.subject import study

    folder = tmp_path / "vit-features"
    save_hf_features(folder)
    with pytest.raises(VitlabError) as refused:
        study(parse_args("07_rollout", ["--checkpoint", str(folder), "--data-dir", str(tmp_path)]))
    message = str(refused.value)
    assert message.startswith(f"--checkpoint {folder}: ") and "no classification head" in message
    assert f"python -m vitlab.finetune --pretrained {folder} --dataset fashion" in message


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["07", "08", "12"])
def test_a_lesson_studies_a_hugging_face_checkpoint(prefix: str, hf_folder: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = lesson_file(prefix)

    assert run_lesson_file(path, ["--checkpoint", str(hf_folder), "--out", str(tmp_path / "out")]) == 0

    printed = capsys.readouterr().out
    assert "vit-hf (huggingface)" in printed or f"{hf_folder} (imported)" in printed
    assert all((tmp_path / "out" / name).read_bytes().startswith(PNG_SIGNATURE) for name in declared_figures(path))


def test_a_timm_file_without_its_config_is_refused_before_anything_loads(tmp_path: Path, capsys) -> None:
    timm = pytest.importorskip("timm")
    file = tmp_path / "weights.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1).state_dict(), file)

    assert run_lesson_file(lesson_file("01"), ["--checkpoint", str(file), "--out", str(tmp_path / "out")]) == 2

    assert "without timm's config.json beside it" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
