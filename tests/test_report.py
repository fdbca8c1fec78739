"""Tests for vitlab.analysis.report: every method and every test of a map in one call, the work shared.

Known answers: each number equals what the single-purpose function gives for that method alone (so sharing changes
only the time), and the perturbed images the curves send through the model are exactly the distinct ones, counted in
closed form. A missing optional library leaves its methods out and says how to install it.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import Tensor

from vitlab import deletion_curve, explain, insertion_curve, randomization_check, road_curve
from vitlab.analysis import gradients
from vitlab.analysis.explain import METHODS
from vitlab.analysis.faithfulness import FORWARD_BATCH, CurveSpec, perturbation_curves
from vitlab.analysis.gradients import integrated_gradients
from vitlab.analysis.randomization import spearman
from vitlab.analysis.report import METRICS, RANDOM, explain_report
from vitlab.errors import VitlabError
from vitlab.model import build_model
from vitlab.teaching.shortcut import marker_hits

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("vit_tiny", num_classes=5, pretrained=True, trainable_blocks=2).eval()


def tiny_images(batch: int, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def assert_same_curve(shared, alone) -> None:
    torch.testing.assert_close(shared.probabilities, alone.probabilities, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(shared.auc, alone.auc, atol=1e-6, rtol=1e-5)
    assert shared.random_auc == pytest.approx(alone.random_auc, abs=1e-6)


@pytest.mark.slow
def test_every_number_equals_the_single_purpose_functions() -> None:
    model, images = tiny_model(), tiny_images(2)
    report = explain_report(model, images, steps=4, road_steps=4, random_count=2, seed=3)
    assert list(report.methods) == list(METHODS) and not report.unavailable
    with torch.no_grad():
        assert report.targets.tolist() == model(images).argmax(dim=1).tolist()
    for name, scores in report.methods.items():
        maps = explain(model, images, name)
        torch.testing.assert_close(scores.maps, maps)
        options = {"random_count": 2, "seed": 3}
        assert_same_curve(scores.curves["deletion"], deletion_curve(model, images, maps, steps=4, baseline="mean",
                                                                    **options))
        assert_same_curve(scores.curves["insertion"], insertion_curve(model, images, maps, steps=4, baseline="mean",
                                                                      **options))
        assert_same_curve(scores.curves["road"], road_curve(model, images, maps, steps=4, **options))
        alone = randomization_check(model, images, name, seed=3)
        assert scores.randomization.levels == alone.levels
        torch.testing.assert_close(scores.randomization.correlations, alone.correlations, atol=1e-5, rtol=1e-4)
    assert set(report.seconds) == {f"explain {name}" for name in METHODS} | {"curves", "randomization"}


def test_the_curves_send_each_distinct_perturbed_image_through_the_model_once() -> None:
    """2 images, 2 maps and 2 random maps, 4 steps on 64 patches. Deletion and insertion with one fill share the
    untouched image and the fully removed one; their 3 inner points differ for every map but the random ones, whose
    insertion images are their deletion images: 2 + 3 x (2 x 2 + 2) = 20 images per image. ROAD's first point is
    the untouched image again: 3 x 4 more. Without sharing: 2 x 4 x (5 + 5 + 4)."""
    model, images = tiny_model(), tiny_images(2)
    maps = {"a": torch.rand(2, 64, generator=torch.Generator().manual_seed(7)), "b": torch.rand(2, 64)}
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        specs = {"deletion": CurveSpec("deletion", 4, "mean"), "insertion": CurveSpec("insertion", 4, "mean")}
        perturbation_curves(model, images, maps, specs, target=1, random_count=2)
        assert sum(seen) == 2 * 20 and set(seen[:-1]) <= {FORWARD_BATCH}  # full batches, then the rest
        seen.clear()
        perturbation_curves(model, images, maps, {**specs, "road": CurveSpec("road", 4)}, target=1, random_count=2)
        assert sum(seen) == 2 * (20 + 12) and set(seen[:-1]) <= {FORWARD_BATCH}
    finally:
        hook.remove()


def test_a_missing_library_leaves_its_methods_out_and_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name.split(".")[0] in ("pytorch_grad_cam", "captum", "scipy")]:
        monkeypatch.delitem(sys.modules, name)
    for library in ("pytorch_grad_cam", "captum", "scipy"):
        monkeypatch.setitem(sys.modules, library, None)  # importing it now raises ImportError
    report = explain_report(tiny_model(), tiny_images(1), metrics=("deletion", "insertion", "road"), steps=4)
    assert set(report.unavailable) == {"gradcam", "scorecam", "integrated_gradients", "road"}
    assert all('pip install "vitlab[explain]"' in message for message in report.unavailable.values())
    assert list(report.methods) == ["attention", "rollout", "chefer", "input_x_gradient"]
    assert all(set(scores.curves) == {"deletion", "insertion"} for scores in report.methods.values())


def test_rows_hold_each_method_and_the_random_baseline() -> None:
    model, images = tiny_model(), tiny_images(2)
    report = explain_report(model, images, methods=["attention", "input_x_gradient"], steps=4, road_steps=2)
    rows = report.rows()
    assert [row["method"] for row in rows] == ["attention", "input_x_gradient", RANDOM]
    assert rows[0]["deletion"] == report.methods["attention"].curves["deletion"].mean_auc
    assert rows[-1]["insertion"] == report.random_auc("insertion")
    assert rows[-1]["spearman_last"] == report.methods["attention"].randomization.random_baseline
    assert rows[1]["spearman_first"] == report.methods["input_x_gradient"].randomization.mean[0].item()
    assert set(METRICS) <= {key for row in rows for key in row} | {"randomization"}


def test_only_the_tests_asked_for_are_run_and_bad_names_are_refused() -> None:
    model, images = tiny_model(), tiny_images(1)
    report = explain_report(model, images, methods=["attention"], metrics=["deletion"], steps=2)
    assert set(report.methods["attention"].curves) == {"deletion"}
    assert report.methods["attention"].randomization is None
    with pytest.raises(VitlabError, match="Unknown method or test 'lime'"):
        explain_report(model, images, methods=["lime"])
    with pytest.raises(VitlabError, match="Unknown method or test 'pointing'"):
        explain_report(model, images, metrics=["pointing"])
    with pytest.raises(VitlabError, match=r"\(B, 3, 32, 32\)"):
        explain_report(model, torch.zeros(1, 3, 64, 64))
    with pytest.raises(VitlabError, match="precision must be one of float32, bfloat16, got 'float16'"):
        explain_report(model, images, precision="float16")


def test_integrated_gradients_do_not_depend_on_how_the_path_is_batched(monkeypatch: pytest.MonkeyPatch) -> None:
    """One path point per pass (IG_BATCH 1) gives the map all points at once give."""
    model, images = tiny_model(), tiny_images(3)
    targets = torch.tensor([0, 3, 1])
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        together = integrated_gradients(model, images, targets)
        assert seen == [30, 18]  # 32 inputs a pass hold 10 of the 16 points for 3 images, then the other 6
        seen.clear()
        monkeypatch.setattr(gradients, "IG_BATCH", 1)
        one_by_one = integrated_gradients(model, images, targets)
        assert seen == [3] * 16  # one point a pass
    finally:
        hook.remove()
    torch.testing.assert_close(one_by_one, together, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_bfloat16_keeps_the_shortcut_models_answers(shortcut) -> None:
    """bfloat16 changes the arithmetic, not what the tests say: on the shortcut model the same classes are explained,
    ScoreCAM and integrated gradients still put the marker's 4 patches first, each method's maps rank the patches
    as float32's do, and every AUC and correlation of the table stays within 0.05 of float32's. Grad-CAM's maps are
    left out of the rank test: after its ReLU most patches tie at 0, and a map whose few positive patches fall to 0
    in bfloat16 ranks nothing (32 shortcut images: Spearman 0.92 on average, 0 for one image)."""
    images = shortcut.test_images[:8]
    settings = {"steps": 8, "road_steps": 4, "random_count": 2}
    dtypes: dict[str, set[torch.dtype]] = {"float32": set(), "bfloat16": set()}
    precision = "float32"
    hook = shortcut.model.heads.register_forward_hook(lambda module, args, out: dtypes[precision].add(out.dtype))
    try:
        exact = explain_report(shortcut.model, images, **settings)
        precision = "bfloat16"
        fast = explain_report(shortcut.model, images, **settings, precision=precision)
    finally:
        hook.remove()
    assert dtypes == {"float32": {torch.float32}, "bfloat16": {torch.bfloat16}}  # every pass in its precision
    assert torch.equal(fast.targets, exact.targets)
    assert not torch.equal(fast.methods["integrated_gradients"].maps, exact.methods["integrated_gradients"].maps)
    for name in ("scorecam", "integrated_gradients"):
        assert marker_hits(fast.methods[name].maps) == (1.0, 1.0)
    for name, scores in fast.methods.items():
        if name != "gradcam":
            assert spearman(scores.maps, exact.methods[name].maps).mean() > 0.95, name
    for fast_row, exact_row in zip(fast.rows(), exact.rows(), strict=True):
        for key, value in exact_row.items():
            if key != "method":
                assert fast_row[key] == pytest.approx(value, abs=0.05), (exact_row["method"], key)
