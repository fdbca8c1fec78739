# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 2: patch embeddings, the filters a ViT describes each patch with
#
# Lesson 1 showed that the patch embedding is one matrix: each of its rows (one per hidden unit) is a filter of
# 3 x p x p numbers, dotted with every patch. Principal component analysis of those filters shows the basis the
# model uses to describe a patch, as in the ViT paper's Figure 7 (left), where ViT-B/16's components look like
# smooth colour blobs and low-frequency stripes.
#
# Builds on: `vitlab/analysis/structure.py` (`patch_filter_components`), `vitlab/model.py` (`build_model`),
# `vitlab/plotting.py` (`plot_filter_components`).
#
# Figures, in `lesson_outputs/02_patch_embeddings/`: `filter_components.png` (the first 28 principal components of
# the trained filters, as images), `training_change_components.png` (the same for W_trained - W_init),
# `explained_variance.png` (how much variance the first components explain: trained, initial, and the change).

# %%
import copy

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.structure import patch_filter_components
from vitlab.model import build_model
from vitlab.plotting import plot_filter_components
from vitlab.shipped import SHIPPED_BASES, shipped_card
from vitlab.teaching.lesson import Subject, explain, save, start, study

FIGURES = ("filter_components.png", "training_change_components.png", "explained_variance.png")
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/02_patch_embeddings.py [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`. In a notebook,
# put the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--arch", "vit_b_16"]`) and run the cells
# again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%
settings = start("02_patch_embeddings", FLAGS)
subject = study(settings)
model = subject.model

# %% [markdown]
# ## The trained filters' principal components
#
# `conv_proj.weight` holds one filter per hidden unit. Each filter is a point in 3 x p x p dimensions, so there
# are at most that many components (or as many as there are filters, if fewer).

# %%
trained = model.conv_proj.weight.detach()  # (hidden, 3, p, p)
dims = trained[0].numel()
most = min(dims, trained.shape[0])
components, explained = patch_filter_components(model, num_components=28)
_, trained_all = patch_filter_components(model, num_components=most)
curves = {"trained filters": trained_all}
TOP = 5
explain(f"""
    Model: {subject.name}. conv_proj holds {trained.shape[0]} filters of shape {tuple(trained.shape[1:])}:
    each filter is a point in {dims} dimensions, so there are at most {most} principal components. The first
    {TOP} components of the trained filters explain {100 * trained_all[:TOP].sum():.0f}% of their variance.
""")
save(plot_filter_components(components, explained), settings.out, FIGURES[0])
print("Each component is stretched to the full display range on its own: compare patterns, not brightness.\n")

# %% [markdown]
# ## What training changed
#
# A small model trained briefly still carries much of its random initialisation in these filters, and random
# filters have no preferred directions. So the lesson rebuilds the exact starting point (vitlab's fine-tuning and
# pretraining jobs seed torch right before building the model) and analyses what training added: the change
# W_trained - W_init. For the demo model, whose filters are the shipped base's (frozen while fine-tuning), that is
# what masked-patch pretraining put there: first on generated fractals, then on the unlabelled clothing photos.


# %%
def initial_filters(subject: Subject) -> tuple[Tensor, str] | None:
    """conv_proj's weights before any training, and where they came from; None when that is not known here.

    vitlab's fine-tuning and pretraining both call torch.manual_seed(seed) and then build_model(...): doing the
    same gives the same random initialisation. For a run on the shipped base, the base's own pretraining (its
    card's seed) is where the filters started: fine-tuning froze them.
    """
    config = subject.run_config
    if config is None or config["arch"] != "vit_tiny" or config.get("pretrained") not in (None, "none", *SHIPPED_BASES):
        return None
    seed, where = config["seed"], f"the run started from seed {config['seed']}"
    if config.get("pretrained") in SHIPPED_BASES:  # the fashion base starts from the fractal base's weights
        seed = shipped_card(name="fractal")["config"]["seed"]
        where = f"the shipped fractal base's pretraining (vitlab.training.pretrain) started from seed {seed}"
        if config["pretrained"] != "fractal":
            where += f", and the {config['pretrained']} base went on from the fractal base"
    torch.manual_seed(seed)
    initial = build_model(config["arch"], num_classes=len(subject.classes), pretrained=False)
    return initial.conv_proj.weight.detach(), where


def components_of(model: VisionTransformer, filters: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """patch_filter_components on a copy of `model` whose conv_proj holds `filters` (D, 3, p, p)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.conv_proj.weight.copy_(filters)
    return patch_filter_components(twin, num_components=count)


start_point = initial_filters(subject)
initial, where = start_point if start_point is not None else (None, "")
if initial is not None and (trained - initial).norm() > initial.norm():
    initial = None  # moved more than its own size: this is not the run's starting point after all
if initial is None:
    print("  (no training_change_components.png: the starting weights of this model are not known here)\n")
else:
    change = trained - initial
    _, initial_all = components_of(model, initial, most)
    change_components, change_explained = components_of(model, change, 28)
    _, change_all = components_of(model, change, most)
    curves["initial (random) filters"] = initial_all
    curves["what training changed"] = change_all
    explain(f"""
        Where the filters started: {where}. Rebuilding that initialisation shows training moved the filters by
        {100 * change.norm() / initial.norm():.0f}% of their size. First {TOP} components: initial random
        filters {100 * initial_all[:TOP].sum():.0f}%, trained filters {100 * trained_all[:TOP].sum():.0f}%, the
        change W_trained - W_init {100 * change_all[:TOP].sum():.0f}%. Where the change is concentrated,
        training moved all filters along a few shared directions: those are what the model learned to measure in
        a patch.
    """)
    fig = plot_filter_components(change_components, change_explained)
    fig.suptitle("Principal components of what training changed in the filters (W_trained - W_init)")
    save(fig, settings.out, FIGURES[1])

# %% [markdown]
# ## How concentrated each set of filters is
#
# The cumulative share of the variance the first components explain, for the trained filters and, where known,
# the initial ones and the change.


# %%
def figure_explained_variance(curves: dict[str, Tensor], title: str) -> Figure:
    """Cumulative explained variance against the number of components, one line per set of filters."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for label, ratios in curves.items():
        style = "o--" if label.startswith("initial") else "o-"  # dashed: it may lie right on the trained curve
        ax.plot(range(1, len(ratios) + 1), 100 * ratios.cumsum(0).numpy(), style, markersize=3, label=label)
    ax.set(xlabel="number of principal components", ylabel="variance explained (%, cumulative)",
           title=title, ylim=(0, 101))
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


save(figure_explained_variance(curves, f"{subject.name}: patch-embedding filters"), settings.out, FIGURES[2])

# %% [markdown]
# ## Questions
#
# 1. Random filters spread their variance over all components almost evenly. Why? What does a steep curve (a few
#    components explain most) tell you about a set of filters?
# 2. Look at the first components of the change: do they respond to brightness, to colour, to edges? Which of these
#    separates a garment from the black background, and which could tell a sandal's straps from a sneaker's solid
#    side?
# 3. The demo model's patches are 4x4 pixels, 48 numbers. How many principal components can its 64 filters have?
#    And ViT-B/16's 768 filters of 16x16x3?
# 4. The demo's filters were learned by predicting hidden patches, on fractals and then on the photos, without
#    ever seeing a label, and fine-tuning left them frozen; yet the model tells ten kinds of clothing apart (lesson 8
#    prints how often). What must a patch filter measure to be useful for both tasks?
