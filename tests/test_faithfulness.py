"""Tests for vitlab.analysis.faithfulness: deletion, insertion and ROAD curves, against known answers.

A model whose probability is a known function of how many bright patches an image holds gives every curve in closed
form: for a given order exactly, and for random orders in expectation (hypergeometric). The shortcut model
(vitlab/teaching/shortcut.py) gives the behaviour a faithful map must show: removing its marker patches drops the
class at once.
"""

from __future__ import annotations

import itertools
import sys
from math import comb

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab import deletion_curve, explain, insertion_curve, road_curve
from vitlab.analysis.faithfulness import CurveSpec, perturbation_curves
from vitlab.errors import VitlabError
from vitlab.model import build_model
from vitlab.teaching.shortcut import marker_mask

pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


class BrightPatchModel(VisionTransformer):
    """Class 0's probability is `probability_by_count[m]`, m = how many patches are bright (mean red > 0.5)."""

    def __init__(self, image_size: int, patch_size: int, probability_by_count: list[float]) -> None:
        super().__init__(image_size=image_size, patch_size=patch_size, num_layers=1, num_heads=1, hidden_dim=4,
                         mlp_dim=4, num_classes=2)
        self.probability_by_count = torch.tensor(probability_by_count, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        brightness = F.avg_pool2d(x[:, :1], self.patch_size).flatten(1)  # (B, patches)
        probability = self.probability_by_count[(brightness > 0.5).sum(dim=1)]  # (B,)
        return torch.stack([probability.log(), (1 - probability).log()], dim=1).float()  # (B, 2): softmax = (p, 1-p)


def bright_images(batch: int, image_size: int, patch_size: int, bright: list[int]) -> Tensor:
    """(batch, 3, S, S): zeros, with the patches in `bright` (row-major indices) set to 1."""
    grid = image_size // patch_size
    patches = torch.zeros(batch, 3, grid * grid)
    patches[:, :, bright] = 1.0
    return patches.view(batch, 3, grid, grid).repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)


def expected_random_auc(f: list[float], patches: int, bright: int, counts: list[int], deletion: bool) -> float:
    """Closed form: the mean AUC over all orderings. After n patches are perturbed, the number of bright ones among
    them is hypergeometric (patches, bright, n); deletion keeps bright - x of them, insertion reveals x."""
    curve = []
    for n in counts:
        pmf = [comb(bright, x) * comb(patches - bright, n - x) / comb(patches, n) for x in range(min(n, bright) + 1)]
        curve.append(sum(p * f[bright - x if deletion else x] for x, p in enumerate(pmf)))
    points = [(n / patches, value) for n, value in zip(counts, curve, strict=True)]
    return sum((b - a) * (u + v) / 2 for (a, u), (b, v) in itertools.pairwise(points))


@pytest.mark.parametrize("curve", [deletion_curve, insertion_curve])
def test_every_ordering_of_a_tiny_case_gives_its_exact_curve_and_they_average_to_the_closed_form(curve) -> None:
    f = [0.1, 0.4, 0.9]  # class 0's probability with 0, 1 or 2 bright patches
    model = BrightPatchModel(8, 4, f)  # a 2x2 grid: 4 patches, of which 0 and 3 are bright
    orders = list(itertools.permutations(range(4)))  # all 24
    maps = torch.zeros(24, 4)
    for row, order in enumerate(orders):
        maps[row, list(order)] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # order[0] most relevant
    result = curve(model, bright_images(24, 8, 4, [0, 3]), maps, target=0, steps=4, baseline="zero")
    deletion = curve is deletion_curve
    for row, order in enumerate(orders):
        for k in range(5):
            hit = sum(patch in (0, 3) for patch in order[:k])  # bright patches among the first k
            assert result.probabilities[row, k].item() == pytest.approx(f[2 - hit if deletion else hit], abs=1e-6)
    exact = expected_random_auc(f, 4, 2, [0, 1, 2, 3, 4], deletion)
    assert result.mean_auc == pytest.approx(exact, abs=1e-6)
    assert result.random_auc == pytest.approx(exact, abs=0.05)  # 4 random maps of 24 images: close, not exact


@pytest.mark.parametrize("curve", [deletion_curve, insertion_curve])
def test_the_random_map_baseline_matches_its_closed_form_on_vit_tinys_grid(curve) -> None:
    f = [0.05, 0.1, 0.3, 0.6, 0.95]  # 0 to 4 bright patches of 64
    model = BrightPatchModel(32, 4, f)
    bright = [9, 10, 17, 18]
    result = curve(model, bright_images(16, 32, 4, bright), torch.rand(16, 64), target=0, steps=16,
                   baseline="mean", random_count=32)
    exact = expected_random_auc(f, 64, 4, [4 * k for k in range(17)], curve is deletion_curve)
    assert result.random_auc == pytest.approx(exact, abs=0.015)  # 512 random orderings; their spread is about 0.1
    assert result.fractions.tolist() == pytest.approx([k / 16 for k in range(17)])


def test_the_perfect_map_scores_its_known_area() -> None:
    f = [0.05, 0.1, 0.3, 0.6, 0.95]
    model, bright = BrightPatchModel(32, 4, f), [9, 10, 17, 18]
    maps = torch.zeros(2, 64)
    maps[:, bright] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    result = deletion_curve(model, bright_images(2, 32, 4, bright), maps, target=0, steps=64, baseline="zero")
    # One patch a step: 0.95, 0.6, 0.3, 0.1, then 0.05 for the 60 steps left.
    curve = [0.95, 0.6, 0.3, 0.1] + [0.05] * 61
    area = sum((a + b) / 2 for a, b in itertools.pairwise(curve)) / 64
    assert result.auc.tolist() == pytest.approx([area, area], abs=1e-6)


class CountingBrightPatchModel(BrightPatchModel):
    """`BrightPatchModel` that counts the images it is shown."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.images_seen = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images_seen += x.shape[0]
        return super().forward(x)


def test_the_random_maps_insertion_curve_is_their_deletion_curve_reversed_at_no_extra_pass() -> None:
    model, bright = CountingBrightPatchModel(32, 4, [0.05, 0.1, 0.3, 0.6, 0.95]), [9, 10, 17, 18]
    images, maps = bright_images(3, 32, 4, bright), torch.rand(3, 64, generator=torch.Generator().manual_seed(99))
    specs = {kind: CurveSpec(kind, 8, "mean") for kind in ("deletion", "insertion")}
    curves = perturbation_curves(model, images, {"map": maps}, specs, target=0, random_count=4)
    deletion, insertion = curves["deletion"]["map"], curves["insertion"]["map"]
    assert torch.equal(insertion.random_curve, deletion.random_curve.flip(0))
    assert insertion.random_auc == pytest.approx(deletion.random_auc, abs=1e-6)
    assert not torch.equal(insertion.probabilities, deletion.probabilities.flip(1))  # the map's own: two curves
    # Per image: the map's 7 inner points of each curve, the random maps' 7 deletion points each (their insertion
    # images are the same ones), the untouched image and the fully removed one.
    assert model.images_seen == 3 * (7 + 7 + 4 * 7 + 2)


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["mean", "zero"])
def test_deleting_the_shortcut_marker_drops_the_class_at_once(shortcut, baseline: str) -> None:
    images = shortcut.test_images[:24]
    for maps in (marker_mask(24).float(), explain(shortcut.model, images, "integrated_gradients")):
        deletion = deletion_curve(shortcut.model, images, maps, steps=16, baseline=baseline)  # 4 patches a step
        assert deletion.probabilities[:, 0].mean() > 0.9  # the model is sure of every label
        assert deletion.probabilities[:, 1].mean() < 0.15  # the marker's 4 patches gone: the class is gone
        assert deletion.random_curve[1] > 0.85  # 4 random patches gone: almost never the marker
        assert deletion.mean_auc < deletion.random_auc - 0.5
        insertion = insertion_curve(shortcut.model, images, maps, steps=16, baseline=baseline)
        assert insertion.probabilities[:, 1].mean() > 0.9
        assert insertion.mean_auc > insertion.random_auc + 0.1


@pytest.mark.slow
def test_road_imputes_the_marker_away_where_blur_lets_it_through(shortcut) -> None:
    """A blur of one patch's width leaves the marker's colour in place; ROAD's imputation from the neighbours does
    not. Least relevant first, the marker stays and so does the class."""
    images, oracle = shortcut.test_images[:24], marker_mask(24).float()
    blur = deletion_curve(shortcut.model, images, oracle, steps=16, baseline="blur")
    most = road_curve(shortcut.model, images, oracle, steps=8, order="most")  # 8 patches a step
    least = road_curve(shortcut.model, images, oracle, steps=8, order="least")
    assert blur.probabilities[:, 1].mean() > 0.2
    assert most.probabilities[:, 1].mean() < 0.1 and most.mean_auc < most.random_auc - 0.5
    assert least.probabilities[:, -1].mean() > 0.8 and least.mean_auc > least.random_auc
    assert most.fractions.tolist() == pytest.approx([k / 8 for k in range(8)])  # never all: nothing to impute from


def test_curves_are_seeded_and_leave_the_global_generator_alone() -> None:
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=4, pretrained=True).eval()
    images, maps = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    state = torch.random.get_rng_state()
    first = road_curve(model, images, maps, steps=4, seed=3)
    again = road_curve(model, images, maps, steps=4, seed=3)
    other = road_curve(model, images, maps, steps=4, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first.probabilities, again.probabilities) and first.random_auc == again.random_auc
    assert first.random_auc != other.random_auc
    with torch.inference_mode():
        inside = deletion_curve(model, images, maps, steps=4)
    assert torch.equal(inside.probabilities, deletion_curve(model, images, maps, steps=4).probabilities)


def test_an_images_road_curve_does_not_depend_on_the_other_images_of_its_batch() -> None:
    """The imputation's noise is seeded per image: a batch gives each image the curve it gets alone."""
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=4, pretrained=True).eval()
    images, maps = torch.randn(3, 3, 32, 32), torch.rand(3, 64)
    together = road_curve(model, images, maps, steps=4, target=1)
    for index in range(3):
        alone = road_curve(model, images[index:index + 1], maps[index:index + 1], steps=4, target=1)
        torch.testing.assert_close(together.probabilities[index], alone.probabilities[0], atol=1e-6, rtol=0)


def test_road_without_scipy_names_the_explain_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "scipy" or name.startswith("scipy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "scipy", None)  # `import scipy.sparse.linalg` raises ImportError
    model = build_model("vit_tiny", num_classes=4, pretrained=False).eval()
    with pytest.raises(VitlabError, match=r'ROAD needs the scipy library.*pip install "vitlab\[explain\]"'):
        road_curve(model, torch.randn(1, 3, 32, 32), torch.rand(1, 64))
    assert deletion_curve(model, torch.randn(1, 3, 32, 32), torch.rand(1, 64), steps=2).auc.shape == (1,)


def test_bad_arguments_are_refused_with_a_message() -> None:
    model = build_model("vit_tiny", num_classes=4, pretrained=False).eval()
    images, maps = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with pytest.raises(VitlabError, match="steps must be between 1 and the number of patches"):
        deletion_curve(model, images, maps, steps=65)
    with pytest.raises(VitlabError, match="baseline must be"):
        insertion_curve(model, images, maps, baseline="noise")
    with pytest.raises(VitlabError, match=r"maps must be \(B, patches\) = \(2, 64\)"):
        deletion_curve(model, images, maps[:, :10])
    with pytest.raises(VitlabError, match="order must be"):
        road_curve(model, images, maps, order="middle")
    with pytest.raises(VitlabError, match="random_count must be at least 1"):
        deletion_curve(model, images, maps, random_count=0)
