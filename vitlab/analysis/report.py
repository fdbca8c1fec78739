"""Every relevance map and every test of a map, for a set of images, in one call: `explain_report`.

    report = explain_report(model, images)                  # images (B, 3, S, S), normalised
    scores = report.methods["integrated_gradients"]
    scores.maps                                             # (B, patches), as explain() returns it
    scores.curves["deletion"].mean_auc                      # read against report.random_auc("deletion")
    scores.randomization.mean                               # (levels,) Spearman, trained vs randomised weights
    report.rows()                                           # one row of numbers per method, the random maps last
    report.seconds                                          # where the time went

The methods are `vitlab.analysis.explain.METHODS`; the tests are deletion and insertion (one fill for both),
ROAD most relevant first, and the cascading randomisation. The work is shared wherever the answer allows:

- every curve of every map goes through `perturbation_curves` together, so the random maps' curves are computed
  once for all methods, perturbed images go through the model in batches, and an image two curves share (the
  untouched image, the fully removed one) once;
- the randomisation check reuses the maps already computed, and one randomised copy per level serves every method.

Each number equals what the single-purpose function gives (`deletion_curve`, `randomization_check`, ...) for that
method; tests/test_report.py checks it. A method or test whose optional library is missing is left out, and
`unavailable` says what to install.

`precision="bfloat16"` runs every forward and backward pass of the report under `torch.autocast` in bfloat16, for
large models on hardware with bfloat16 arithmetic (recent GPUs; CPUs with AVX512-BF16 or AMX): ViT-B/16's report for
one image took 60-70 s instead of 207-227 s on 2 such CPU cores (AMD x86 family 26), 134-146 s instead of 294 s on 2
cores of family 25, whose AVX-512 units are half as wide. The maps, probabilities, AUCs and correlations stay
float32; what bfloat16 changes in them is measured in docs/explain.md ("What it costs").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.explain import (
    METHOD_EXTRAS,
    METHODS,
    Target,
    borrowed,
    check_images,
    explain,
    resolve_target,
)
from vitlab.analysis.extras import missing_extra
from vitlab.analysis.faithfulness import Baseline, CurveResult, CurveSpec, perturbation_curves
from vitlab.analysis.randomization import RandomizationResult, randomization_checks
from vitlab.capture_grad import autograd_on, grad_ready
from vitlab.errors import VitlabError

Metric = Literal["deletion", "insertion", "road", "randomization"]
METRICS: tuple[Metric, ...] = ("deletion", "insertion", "road", "randomization")
Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[Precision, ...] = ("float32", "bfloat16")
RANDOM = "random maps"  # the name of the random-map baseline in `rows`


@dataclass(frozen=True)
class MethodScores:
    """One method's maps and what each test says of them."""

    maps: Tensor  # (B, patches) relevance, as explain() returns it
    curves: dict[str, CurveResult]  # "deletion", "insertion", "road": the curves the report computed
    randomization: RandomizationResult | None  # None when the report left the check out


@dataclass(frozen=True)
class ExplainReport:
    """Every method's maps and scores for one set of images, with the random baselines to read them against."""

    targets: Tensor  # (B,) the class each map explains
    methods: dict[str, MethodScores]  # method name -> its scores, in METHODS' order
    unavailable: dict[str, str]  # a method or test left out -> why (an optional library is missing; how to install)
    seconds: dict[str, float]  # wall seconds per part: "explain <method>", "curves", "randomization"

    def random_auc(self, curve: str) -> float:
        """The mean AUC of the seeded random maps for `curve` ("deletion", "insertion", "road")."""
        return next(iter(self.methods.values())).curves[curve].random_auc

    def rows(self) -> list[dict[str, float | str]]:
        """One row per method (mean AUCs; Spearman at the first and the last randomisation level), then the random
        maps' row: the table docs/explain.md and the lessons print."""
        rows = []
        for name, scores in self.methods.items():
            row: dict[str, float | str] = {"method": name}
            row |= {curve: result.mean_auc for curve, result in scores.curves.items()}
            if scores.randomization is not None:
                row["spearman_first"], row["spearman_last"] = scores.randomization.mean[[0, -1]].tolist()
            rows.append(row)
        if self.methods:
            first = next(iter(self.methods.values()))
            baseline: dict[str, float | str] = {"method": RANDOM}
            baseline |= {curve: result.random_auc for curve, result in first.curves.items()}
            if first.randomization is not None:
                baseline["spearman_first"] = baseline["spearman_last"] = first.randomization.random_baseline
            rows.append(baseline)
        return rows


def explain_report(model: VisionTransformer, images: Tensor, target: Target = None,
                   methods: Sequence[str] | None = None, metrics: Sequence[Metric] = METRICS, steps: int = 16,
                   road_steps: int = 8, baseline: Baseline = "mean", random_count: int = 4, seed: int = 0,
                   precision: Precision = "float32") -> ExplainReport:
    """Every method's maps for `images`, scored by every test of a map, sharing the work the tests have in common.

    Args:
        images: (B, 3, S, S) normalised inputs.
        target: None for each image's prediction, one class, or one per image (B,).
        methods: names in `METHODS` (default: all of them, in that order).
        metrics: the tests to run, from METRICS (default: all).
        steps: deletion and insertion points (steps + 1); road_steps: ROAD's points.
        baseline: what a removed patch shows in deletion and insertion: "mean" (default), "blur" or "zero".
        random_count, seed: the random maps of the baseline curves and the seed of the random weights.
        precision: "float32" (default), or "bfloat16" for every pass under autocast (see the module docstring).
    Returns:
        An `ExplainReport`. Methods and tests whose optional library is missing are left out and named in
        `unavailable` with the command that installs it.
    Raises:
        VitlabError: an unknown method, test or precision, or images, steps or a baseline that the tests refuse.
    """
    names = list(METHODS) if methods is None else list(methods)
    unknown = [name for name in [*names, *metrics] if name not in (*METHODS, *METRICS)]
    if unknown:
        raise VitlabError(f"Unknown method or test {unknown[0]!r}. Methods: {', '.join(METHODS)}; tests: "
                          f"{', '.join(METRICS)}.")
    if precision not in PRECISIONS:
        raise VitlabError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    check_images(model, images)
    unavailable = _unavailable(names, metrics)
    names = [name for name in names if name not in unavailable]
    seconds: dict[str, float] = {}
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16) if precision == "bfloat16" else nullcontext()
    with autograd_on(), autocast:
        images = grad_ready(images)  # (B, 3, S, S), a plain copy if made under inference mode
        with torch.no_grad(), borrowed(model):
            targets = resolve_target(model, images, target)  # (B,)
        maps = {}
        for name in names:
            started = time.perf_counter()
            maps[name] = explain(model, images, name, targets)  # (B, patches)
            seconds[f"explain {name}"] = time.perf_counter() - started
        specs = {"deletion": CurveSpec("deletion", steps, baseline),
                 "insertion": CurveSpec("insertion", steps, baseline), "road": CurveSpec("road", road_steps)}
        specs = {curve: spec for curve, spec in specs.items() if curve in metrics and curve not in unavailable}
        started = time.perf_counter()
        curves = perturbation_curves(model, images, maps, specs, targets, random_count, seed) if specs and maps else {}
        seconds["curves"] = time.perf_counter() - started
        started = time.perf_counter()
        checks = randomization_checks(model, images, {name: name for name in names}, targets, seed, trained=maps) \
            if "randomization" in metrics and maps else {}
        seconds["randomization"] = time.perf_counter() - started
    scores = {name: MethodScores(maps[name], {curve: curves[curve][name] for curve in curves}, checks.get(name))
              for name in names}
    return ExplainReport(targets.cpu(), scores, unavailable, seconds)


def _unavailable(methods: Sequence[str], metrics: Sequence[Metric]) -> dict[str, str]:
    """The methods and tests whose optional library is missing -> the message that says what to install."""
    needs = {name: (METHOD_EXTRAS[name], name) for name in methods if name in METHOD_EXTRAS}
    if "road" in metrics:
        needs["road"] = ("scipy.sparse.linalg", "ROAD")
    found = {name: missing_extra(module, needed_for) for name, (module, needed_for) in needs.items()}
    return {name: message for name, message in found.items() if message is not None}
