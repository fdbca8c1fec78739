"""Which map should you trust? Every relevance method on one image, side by side, with its deletion and insertion
areas and the random maps' (`vitlab.analysis.report.explain_report`), for the explorer's "Which map?" mode and the
tour's last step.

    found = compare_methods(model, image)             # image uint8 (3, H, W)
    found.maps["scorecam"]                            # (grid, grid) relevance
    found.deletion["scorecam"], found.random_deletion # lower than random: the map found what the model needs
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.report import explain_report
from vitlab.capture import geometry
from vitlab.explorer.views import model_inputs


@dataclass(frozen=True)
class MethodComparison:
    """Each method's map of one image and the two areas that score it, beside the random maps' areas."""

    target: int  # the class every map explains: the model's prediction
    maps: dict[str, Tensor]  # method -> (grid, grid) relevance
    deletion: dict[str, float]  # method -> deletion AUC (lower = more faithful)
    insertion: dict[str, float]  # method -> insertion AUC (higher = more faithful)
    random_deletion: float
    random_insertion: float
    unavailable: dict[str, str]  # a method left out -> what to install

    def rows(self) -> list[dict[str, str]]:
        """One row per method, then the random maps: the table the explorer shows."""
        rows = [{"method": name, "deletion AUC": f"{self.deletion[name]:.3f}",
                 "insertion AUC": f"{self.insertion[name]:.3f}"} for name in self.maps]
        return [*rows, {"method": "random maps", "deletion AUC": f"{self.random_deletion:.3f}",
                        "insertion AUC": f"{self.random_insertion:.3f}"}]


def compare_methods(model: VisionTransformer, image: Tensor, steps: int = 16) -> MethodComparison:
    """Every method of `vitlab.analysis.explain.METHODS` on `image` uint8 (3, H, W) for the predicted class, with
    deletion and insertion curves of `steps` steps (mean-colour fill) against 4 seeded random maps."""
    inputs = model_inputs(model, image)  # (1, 3, S, S)
    report = explain_report(model, inputs, metrics=["deletion", "insertion"], steps=steps)
    grid = geometry(model).grid_size
    return MethodComparison(
        target=int(report.targets[0]),
        maps={name: scores.maps[0].detach().float().cpu().view(grid, grid) for name, scores in report.methods.items()},
        deletion={name: scores.curves["deletion"].mean_auc for name, scores in report.methods.items()},
        insertion={name: scores.curves["insertion"].mean_auc for name, scores in report.methods.items()},
        random_deletion=report.random_auc("deletion") if report.methods else float("nan"),
        random_insertion=report.random_auc("insertion") if report.methods else float("nan"),
        unavailable=dict(report.unavailable))

