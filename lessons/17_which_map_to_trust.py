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
# # Lesson 17: which map should you trust?
#
# Lessons 7, 10 and 11 drew attention, rollout and gradient-weighted maps. There are many more ways to ask "which
# patches matter?", and on the same image they disagree. None of them is ground truth: a map can sit on the object
# and still not be what the model uses. Where does the model look to tell a shirt from a T-shirt? Ask seven methods
# and you get seven answers. This lesson puts seven methods side by side and tests them three ways:
#
# - **Deletion and insertion** (Petsiuk et al. 2018): remove the patches most relevant first and watch the target
#   class's probability (a faithful map makes it fall at once: low area under the curve), or reveal them on a blank
#   image (it rises at once: high area). Every number is read against random maps, which know nothing.
# - **The randomisation check** (Adebayo et al. 2018): re-initialise the model's weights from the top down; a map that
#   explains the model must change. One that does not is drawing the image, not the model.
# - **A known answer**: a model trained so that only a small coloured marker decides the class. A faithful method
#   must put the marker's 4 patches first.
#
# Builds on: `vitlab/analysis/explain.py` (`explain`, `METHODS`), `vitlab/analysis/faithfulness.py`
# (`deletion_curve`), `vitlab/analysis/report.py` (`explain_report`), `vitlab/teaching/shortcut.py`.
#
# Figures, in `lesson_outputs/17_which_map_to_trust/`: `maps.png` (every method on the same test images, with its
# deletion and insertion areas), `randomization.png` (each method's rank correlation with its trained map as the
# weights are randomised), `shortcut.png` (the shortcut model: where each method puts the marker).

# %%
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.faithfulness import deletion_curve
from vitlab.analysis.report import RANDOM, explain_report
from vitlab.data import denormalize
from vitlab.teaching.lesson import assert_same, explain, save, start, study
from vitlab.teaching.shortcut import MARKER_PATCHES, hits_by_method, train_shortcut_model

FIGURES = ("maps.png", "randomization.png", "shortcut.png")
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--checkpoint", "runs/demo"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/17_which_map_to_trust.py [--checkpoint PATH] [--out DIR]`. In a notebook, put the
# same flags in `FLAGS`, in the first code cell, and run the cells again. Without flags the lesson studies vitlab's
# small demo model and images from its own test split. (`--arch vit_b_16` works, on one image: every method and test
# costs thousands of ViT-B/16 forward passes, many minutes on a CPU.)

# %%
settings = start("17_which_map_to_trust", FLAGS)
subject = study(settings)
model = subject.model

# %% [markdown]
# ## Deletion, written out
#
# Rank the patches by the map, most relevant first. At each of `steps + 1` points remove the next share of them,
# painting each removed patch with the image's mean colour, and read the target's probability. The area under this
# curve (trapezoids, divided by its width) is the deletion score: lower means the map found what the model needs.


# %%
def deletion_by_hand(model: VisionTransformer, image: Tensor, relevance: Tensor, target: int,
                     steps: int) -> Tensor:
    """image (3, S, S), relevance (patches,) -> the target's probability (steps + 1,) as patches are removed."""
    patch, grid = model.patch_size, image.shape[-1] // model.patch_size
    order = relevance.argsort(descending=True, stable=True)  # (patches,) most relevant first
    mean_colour = image.mean(dim=(1, 2), keepdim=True)  # (3, 1, 1)
    curve = []
    for k in range(steps + 1):
        removed = torch.zeros(grid * grid, dtype=torch.bool)
        removed[order[:round(k * grid * grid / steps)]] = True
        pixels = removed.view(grid, grid).repeat_interleave(patch, 0).repeat_interleave(patch, 1)  # (S, S)
        perturbed = torch.where(pixels, mean_colour, image)  # (3, S, S)
        curve.append(model(perturbed[None]).softmax(-1)[0, target])
    return torch.stack(curve)


# %% [markdown]
# Every method on a few test images, scored by every test (`explain_report` shares the work: the random maps'
# curves once, the perturbed images in batches). Then vitlab's deletion curve must equal the lesson's for the first
# image and the first method.

# %%
shown = subject.pick(4 if subject.small else 1)
images = subject.inputs(shown.images)  # (B, 3, S, S)
report = explain_report(model, images)
first_method = next(iter(report.methods))
with torch.no_grad():
    ours = deletion_by_hand(model, images[0], report.methods[first_method].maps[0], int(report.targets[0]), 16)
    theirs = deletion_curve(model, images[:1], report.methods[first_method].maps[:1], report.targets[:1], steps=16,
                            baseline="mean").probabilities[0]
assert_same(theirs, ours, vitlab=f"vitlab's deletion_curve ({first_method}, mean fill)", lesson="deletion_by_hand",
            rtol=1e-4, atol=1e-5)
rows = report.rows()
table = "\n".join(f"        {row['method']:22s} {row['deletion']:8.3f} {row['insertion']:9.3f} "
                  f"{row.get('road', float('nan')):6.3f} {row['spearman_last']:+9.2f}" for row in rows)
explain(f"""
    Model: {subject.name}, {len(shown)} test images ({', '.join(subject.label_name(int(y)) for y in shown.labels)}).
    Asserted: vitlab's deletion curve equals deletion_by_hand. Areas under the curves (deletion and ROAD: lower is
    better; insertion: higher is better) and the rank correlation with the trained map once every weight is random
    (near 0 is what a map of the model should reach); the last row is what random maps score. Their deletion and
    insertion areas are equal: a random order read backwards is as random, and revealing its first patches shows
    what deleting its last ones shows, so vitlab draws their insertion curve from their deletion images.

        method                 deletion insertion   ROAD  Spearman
{table}
""")
unavailable = "; ".join(report.unavailable.values())
if unavailable:
    print(f"  left out: {unavailable}")


# %%
def figure_maps(images: Tensor, report, grid: int) -> Figure:
    names = list(report.methods)
    fig = Figure(figsize=(1.6 * (len(names) + 1), 1.8 * len(images)), layout="constrained")
    axes = fig.subplots(len(images), len(names) + 1, squeeze=False)
    for row, image in enumerate(images):
        axes[row, 0].imshow(image.permute(1, 2, 0).numpy())
        axes[row, 0].set_title("image", fontsize=8)
        for column, name in enumerate(names, start=1):
            scores = report.methods[name]
            axes[row, column].imshow(scores.maps[row].view(grid, grid).numpy(), cmap="inferno")
            axes[row, column].set_title(f"{name}\ndel {scores.curves['deletion'].auc[row]:.2f} ins "
                                        f"{scores.curves['insertion'].auc[row]:.2f}", fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig


grid = model.image_size // model.patch_size
save(figure_maps(shown.images, report, grid), settings.out, FIGURES[0])

# %% [markdown]
# ## The randomisation check
#
# Each line is one method: its maps on copies of the model re-initialised from the head down to the embeddings,
# compared with its maps on the trained model by rank correlation. A line that stays near 1 does not depend on the
# weights; a line that falls explains the model. Class-agnostic attention ignores the head, so its first point is 1.


# %%
def figure_randomization(report) -> Figure:
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for name, scores in report.methods.items():
        ax.plot(scores.randomization.mean.numpy(), marker="o", label=name)
    levels = next(iter(report.methods.values())).randomization.levels
    ax.axhline(next(row["spearman_last"] for row in report.rows() if row["method"] == RANDOM), color="grey",
               linestyle="--", label=RANDOM)
    ax.set(xticks=range(len(levels)), xticklabels=levels, ylabel="Spearman with the trained map",
           xlabel="randomised, cumulative from the top", ylim=(-0.5, 1.05))
    ax.legend(fontsize=7)
    return fig


save(figure_randomization(report), settings.out, FIGURES[1])

# %% [markdown]
# ## A known answer: the shortcut model
#
# vit_tiny trained for a few seconds on images whose class is set only by an 8x8 marker's colour at a fixed place
# (4 patches); everything else is a distraction. Whatever the model looks at, it can only use the marker. A method
# passes when the marker's 4 patches are its top 4 on at least 95% of the test images.

# %%
shortcut = train_shortcut_model()
hits = hits_by_method(shortcut, count=50)
passing = [name for name, (_, top4) in hits.items() if top4 >= 0.95]
shares = "\n".join(f"        {name:22s} {first:9.0%} {top4:5.0%}" for name, (first, top4) in hits.items())
explain(f"""
    Shortcut model: {shortcut.accuracy:.0%} test accuracy after {shortcut.seconds:.0f} s of training. Share of 50 test
    images whose top patch is on the marker, and whose top 4 patches are exactly the marker's:

        method                 top patch top 4
{shares}

    Methods that pass (top 4 = the marker on >= 95%): {', '.join(passing) or 'none'}; the others do not.
""")
assert passing, "no method ranks the shortcut model's marker first on 95% of its test images"


# %%
def figure_shortcut(image: Tensor, maps: dict[str, Tensor], grid: int) -> Figure:
    fig = Figure(figsize=(1.6 * (len(maps) + 1), 2.1), layout="constrained")
    axes = fig.subplots(1, len(maps) + 1)
    axes[0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())  # (S, S, 3) in [0, 1]
    axes[0].set_title("marker image", fontsize=8)
    for ax, (name, relevance) in zip(axes[1:], maps.items(), strict=True):
        ax.imshow(relevance.view(grid, grid).numpy(), cmap="inferno")
        rows, cols = zip(*(divmod(p, grid) for p in MARKER_PATCHES), strict=True)
        ax.scatter(cols, rows, s=12, c="cyan", marker="x")  # the marker's patches
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    return fig


one = shortcut.test_images[:1]  # (1, 3, 32, 32) normalised
one_report = explain_report(shortcut.model, one, metrics=["deletion"])
save(figure_shortcut(denormalize(one)[0], {name: scores.maps[0] for name, scores in one_report.methods.items()}, 8),
     settings.out, FIGURES[2])

# %% [markdown]
# ## Questions
#
# 1. How can a map point at the object and still be unfaithful? Find a method whose maps sit on the object (the
#    garment, in photos of clothes) but whose deletion area is barely better than the random maps'.
# 2. Attention and rollout do not depend on the head. Which point of the randomisation figure shows it, and why is
#    a method that ignores the class a poor answer to "why this class and not the other"?
# 3. Deletion fills removed patches with the mean colour; on clothes photographed on black, what else could a
#    removed patch look like, and how might the choice change the scores (try `baseline="blur"` or ROAD)?
# 4. A method passes the shortcut test but has a mediocre deletion score on the demo images. Which result would you
#    trust more, and what would you test next?
