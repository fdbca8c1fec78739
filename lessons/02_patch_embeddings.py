"""Lesson 2: patch embeddings, the filters a ViT describes each patch with.

Lesson 1 showed that the patch embedding is one matrix: each of its rows (one per hidden unit) is a filter of
3 x p x p numbers, dotted with every patch. Principal component analysis of those filters shows the basis the
model uses to describe a patch, as in the ViT paper's Figure 7 (left): smooth colour blobs and low-frequency
stripes, like the first filters of a CNN. The lesson compares the trained filters with the same model's random
initialisation: training concentrates the filters on a few directions.

Builds on: vitlab/attention.py (`patch_filter_components`), vitlab/plotting.py (`plot_filter_components`).

Run: python lessons/02_patch_embeddings.py [--arch vit_b_16 | --checkpoint PATH] [--out DIR]
Figures: filter_components.png (the first 28 principal components as images), explained_variance.png (how much
of the filters' variance the first components explain, trained vs random).

Questions:
1. The first component usually shows brightness or colour, not an edge. Why would a model care most about the
   average colour of a patch? (Think of what separates the shapes from their background.)
2. The demo model's patches are 4x4 pixels: 48 numbers. How many principal components can its filters have at
   most, and how many does ViT-B/16 (16x16 patches, 768 filters) have?
3. Random filters spread their variance over all components almost evenly. What does the steeper curve of the
   trained filters tell you about what the model learned?
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # find lessons/_common.py, however we were started

import torch  # noqa: E402
from _common import explain, load_subject, parse_args, print_questions, run_lesson, save  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.models import VisionTransformer  # noqa: E402

from vitlab.attention import patch_filter_components  # noqa: E402
from vitlab.plotting import plot_filter_components  # noqa: E402

FIGURES = ("filter_components.png", "explained_variance.png")


def random_twin(model: VisionTransformer) -> VisionTransformer:
    """A model of the same shape at its random initialisation (fixed seed), for comparison."""
    torch.manual_seed(0)
    return VisionTransformer(image_size=model.image_size, patch_size=model.patch_size,
                             num_layers=len(model.encoder.layers), num_heads=model.encoder.layers[0].num_heads,
                             hidden_dim=model.hidden_dim, mlp_dim=model.mlp_dim)


def figure_explained_variance(trained: Tensor, random: Tensor, title: str) -> Figure:
    """Cumulative explained variance against the number of components, trained vs random filters."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for ratios, label in ((trained, "trained filters"), (random, "random initialisation")):
        ax.plot(range(1, len(ratios) + 1), 100 * ratios.cumsum(0).numpy(), "o-", markersize=3, label=label)
    ax.set(xlabel="number of principal components", ylabel="variance explained (%, cumulative)",
           title=title, ylim=(0, 101))
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


@run_lesson
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__file__, __doc__, argv)
    subject = load_subject(args)
    model = subject.model
    filters = model.conv_proj.weight  # (hidden, 3, p, p)
    dims = filters[0].numel()
    components, explained = patch_filter_components(model, num_components=28)
    _, explained_all = patch_filter_components(model, num_components=dims)
    _, random_all = patch_filter_components(random_twin(model), num_components=dims)

    top = 5
    explain(f"""
        Model: {subject.name}. conv_proj holds {filters.shape[0]} filters of shape {tuple(filters.shape[1:])}, so
        each filter is a point in {dims} dimensions and there are at most {min(dims, filters.shape[0])} principal
        components.

        Trained: the first {top} components explain {100 * explained_all[:top].sum():.0f}% of the variance of the
        filters (the first alone {100 * explained_all[0]:.0f}%). Random initialisation: {100 * random_all[:top].sum():.0f}%.
        Training made the filters agree on a few directions: these are the patterns the model measures in
        every patch. In filter_components.png each component is stretched to the full display range on its own, so
        compare patterns, not brightness, between panels.
    """)
    save(plot_filter_components(components, explained), args.out, FIGURES[0])
    save(figure_explained_variance(explained_all, random_all,
                                   f"{subject.name}: patch-embedding filters"), args.out, FIGURES[1])
    print_questions(__doc__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
