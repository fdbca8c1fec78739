"""Tests for the course in lessons/: every lesson runs in its default mode and writes the figures it declares.

Lessons are imported from their files with importlib (importing must not run them) and their `main(argv)` is
called in this process, so the session's trained demo model (`demo_cache`) is shared by all of them. Nothing here
touches the network.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import urllib.error
from pathlib import Path
from types import ModuleType

import pytest
import torch
from einops import rearrange

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
LESSON_FILES = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.py"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def load_lesson(path: Path) -> ModuleType:
    """Import a lesson from its file, as a test or a notebook would: this must not run it."""
    spec = importlib.util.spec_from_file_location(f"lesson_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lesson_file(prefix: str) -> Path:
    return next(path for path in LESSON_FILES if path.stem.startswith(prefix))


def questions_of(doc: str) -> list[str]:
    return re.findall(r"^\d\. ", doc[doc.index("Questions") :], flags=re.MULTILINE)


# ---------------------------------------------------------------------------------------------------------------
# Structure: cheap checks on every lesson file
# ---------------------------------------------------------------------------------------------------------------


def test_the_course_has_its_lessons_in_order():
    numbers = [int(path.stem[:2]) for path in LESSON_FILES]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 16


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda path: path.stem)
def test_importing_a_lesson_runs_nothing(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # a lesson that ran on import would write lesson_outputs/ here
    threads = torch.get_num_threads()
    search_path = list(sys.path)
    lesson = load_lesson(path)

    assert list(tmp_path.iterdir()) == []
    assert torch.get_num_threads() == threads
    assert sys.path == search_path  # lessons import vitlab.teaching.lesson like any module: no sys.path insert
    assert callable(lesson.main)
    assert lesson.FIGURES and all(name.endswith(".png") for name in lesson.FIGURES)
    doc = lesson.__doc__
    assert doc.startswith(f"Lesson {int(path.stem[:2])}:")
    assert "Builds on: vitlab/" in doc
    assert 2 <= len(questions_of(doc)) <= 4
    for name in lesson.FIGURES:
        assert name in doc, f"{path.name}'s docstring does not describe {name}"


# ---------------------------------------------------------------------------------------------------------------
# Running: every lesson in its default mode, on the shared demo model
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda path: path.stem)
def test_lesson_runs_and_writes_its_figures(path: Path, demo_cache: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]):
    lesson = load_lesson(path)

    assert lesson.main(["--out", str(tmp_path)]) == 0

    for name in lesson.FIGURES:
        figure = tmp_path / name
        assert figure.is_file(), f"{path.name} did not write {name}"
        data = figure.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2000, f"{name} is not a real PNG"
    printed = capsys.readouterr().out
    assert "Model: demo vit_tiny (shapes)" in printed or "ViT-B/16" in printed  # it explains what it computed
    assert len(questions_of(printed)) == len(questions_of(lesson.__doc__))  # and asks its questions


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
    lesson = load_lesson(lesson_file("04"))

    code = lesson.main(["--arch", "vit_b_16", "--out", str(tmp_path / "out")])

    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("vitlab: ")
    assert "vit_b_16-c867db91.pth" in error and str(tmp_path / "torch_home") in error  # what is missing, where
    assert "Traceback" not in error
    assert len(attempts) == 1  # it tried the ordinary download once, which failed as it does offline


@pytest.mark.slow
def test_lesson_1_fails_loudly_when_the_patches_are_flattened_in_the_wrong_order(
    demo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    lesson = load_lesson(lesson_file("01"))

    def channels_last(images, patch_size):  # vit-pytorch's order: does not match conv_proj's (c p1 p2) weights
        return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)

    monkeypatch.setattr(lesson, "patchify", channels_last)

    with pytest.raises(AssertionError, match="does NOT equal torchvision's conv_proj"):
        lesson.main(["--out", str(tmp_path)])


def _forgets_the_last_block(real):
    return lambda attentions, head_fusion="mean", **options: real(attentions[:-1], head_fusion, **options)


# A lesson that writes its algorithm out asserts that vitlab's function equals it: break vitlab's, and it says so.
BROKEN_VITLAB = {
    "03": ("position_embedding_similarity", lambda real: lambda model: 0.5 * real(model)),
    "06": ("mean_attention_distance", lambda real: lambda attentions, patch_size: real(attentions, patch_size) + 1),
    "07": ("rollout", _forgets_the_last_block),
    "10": ("pointing_game", lambda real: lambda maps, objects: real(-maps, objects)),  # points at the coldest patch
    "11": ("gradient_weighted_attention",  # explains the wrong class
           lambda real: lambda model, images, target: real(model, images, (target + 1) % 4)),
}


@pytest.mark.slow
@pytest.mark.parametrize("prefix", sorted(BROKEN_VITLAB))
def test_a_lesson_fails_loudly_when_vitlab_differs_from_its_algorithm(prefix: str, demo_cache: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    lesson = load_lesson(lesson_file(prefix))
    name, breaks = BROKEN_VITLAB[prefix]
    monkeypatch.setattr(lesson, name, breaks(getattr(lesson, name)))

    with pytest.raises(AssertionError, match=rf"vitlab's {name} .*differs from"):
        lesson.main(["--out", str(tmp_path)])


@pytest.mark.slow
def test_lesson_9_fails_loudly_when_a_frozen_block_changed(demo_cache: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    lesson = load_lesson(lesson_file("09"))
    freeze = lesson.freeze_all_but_last

    def train_everything(model, trainable_blocks):  # a bug: the "frozen" blocks train too
        freeze(model, len(model.encoder.layers))

    monkeypatch.setattr(lesson, "freeze_all_but_last", train_everything)

    with pytest.raises(AssertionError, match="Block 1 was frozen, yet its attention changed"):
        lesson.main(["--out", str(tmp_path)])


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
# Lessons 13, 15 and 16: probes, token norms and PCA (vitlab.analysis.probes, vitlab.analysis.norms,
# vitlab.analysis.projections)
# ---------------------------------------------------------------------------------------------------------------


def _fits_another_objective(real):  # a probe fitted with 1000x the weight decay is not the lesson's minimum
    from vitlab.analysis.probes import ProbeConfig

    return lambda features, labels, num_classes, config=None: real(features, labels, num_classes,
                                                                   ProbeConfig(weight_decay=1.0))


BROKEN_VITLAB_ANALYSES = {
    "12": ("logit_lens", "vitlab.analysis.lens.logit_lens",
           lambda real: lambda model, states: real(model, states) + 0.1),
    "13": ("fit_probe", "vitlab.analysis.probes.fit_probe", _fits_another_objective),
    "14": ("token_norms", "vitlab.analysis.norms.token_norms", lambda real: lambda states: 1.01 * real(states)),
    "15": ("pca", "vitlab.analysis.projections.pca", lambda real: lambda x, k: real(2 * x, k)),  # 4x the variances
    "16": ("ablate_heads", "vitlab.analysis.ablation.ablate_heads",
           lambda real: lambda model, heads: real(model, {0: [0]})),
}


@pytest.mark.slow
@pytest.mark.parametrize("prefix", sorted(BROKEN_VITLAB_ANALYSES))
def test_lessons_12_to_16_fail_loudly_when_vitlab_differs_from_their_algorithm(
    prefix: str, demo_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    lesson = load_lesson(lesson_file(prefix))
    name, qualified, breaks = BROKEN_VITLAB_ANALYSES[prefix]
    monkeypatch.setattr(lesson, name, breaks(getattr(lesson, name)))

    with pytest.raises(AssertionError, match=rf"(vitlab's \w+|{qualified}) .*differs from"):
        lesson.main(["--out", str(tmp_path)])


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["12", "13", "14", "15", "16"])
def test_lessons_12_to_16_study_a_checkpoint(prefix: str, demo_cache: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]):
    lesson = load_lesson(lesson_file(prefix))
    checkpoint = demo_cache / "demo" / "best.pt"

    assert lesson.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 0

    assert f"vit_tiny from {checkpoint}" in capsys.readouterr().out
    assert all((tmp_path / name).read_bytes().startswith(PNG_SIGNATURE) for name in lesson.FIGURES)


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
    lesson = load_lesson(lesson_file(prefix))
    (tmp_path / "no_data").mkdir()  # a folder without CIFAR: the lesson falls back to its generated images

    assert lesson.main(["--arch", "vit_b_16", "--data-dir", str(tmp_path / "no_data"), "--out", str(tmp_path)]) == 0

    assert all((tmp_path / name).read_bytes().startswith(PNG_SIGNATURE) for name in lesson.FIGURES)


@pytest.mark.slow
def test_lesson_15_fails_loudly_when_a_frozen_block_differs_from_the_base(demo_cache: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    lesson = load_lesson(lesson_file("15"))
    real = lesson.model_before

    def base_with_a_changed_first_block(subject):  # a bug: the "before" model is not the base the demo froze
        model, name, frozen = real(subject)
        with torch.no_grad():
            model.encoder.layers[0].mlp[0].bias.add_(0.01)
        return model, name, frozen

    monkeypatch.setattr(lesson, "model_before", base_with_a_changed_first_block)

    with pytest.raises(AssertionError, match="Block 1 was frozen, yet its class tokens differ"):
        lesson.main(["--out", str(tmp_path)])
