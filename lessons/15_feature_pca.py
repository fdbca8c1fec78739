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
# # Lesson 15: the model's features in two and three dimensions, with PCA
#
# A block's class token is a vector of 64 numbers in the demo model (768 in ViT-B/16): too many to look at.
# Principal component analysis finds the directions along which the states of many images vary most; projecting on
# the first two gives a map where every image is a dot. Colour the dots by class and you see, block by block, when
# the classes come apart. Doing it for the model before fine-tuning (the pretrained base) and after shows what
# fine-tuning changed: for the demo, blocks 1 and 2 were frozen, so their pictures are identical (checked with
# torch.equal), and all the separation the task needed had to be made in blocks 3 and 4.
#
# The second figure is the one DINO (Caron et al. 2021) and DINOv2 made famous: PCA of the patch tokens of a few
# images, the first three components shown as red, green and blue. Patches the model describes alike get alike
# colours, so object and background, or parts of the object, often come apart without any label.
#
# Builds on: `vitlab/analysis/projections.py` (`pca`, `class_separation`, `patch_pca_rgb`),
# `vitlab/analysis/probes.py` (`features_by_depth`), `vitlab/model.py` (`build_model`: the base before
# fine-tuning), `vitlab/capture.py`.
#
# Figures, in `lesson_outputs/15_feature_pca/`: `cls_pca_by_block.png` (class tokens of test images on their first
# two principal components, per block, coloured by class; before fine-tuning on top, after below),
# `patch_pca_rgb.png` (images, their patch features' first three components as RGB after fine-tuning, and before).

# %%
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.probes import features_by_depth
from vitlab.analysis.projections import class_separation, patch_pca_rgb, pca
from vitlab.capture import capture_forward
from vitlab.model import build_model, weights_cache_file
from vitlab.plotting import to_display
from vitlab.shipped import SHIPPED_BASES, shipped_base_file
from vitlab.teaching.lesson import Subject, assert_same, explain, save, start, study

FIGURES = ("cls_pca_by_block.png", "patch_pca_rgb.png")
MAX_COLUMNS = 6  # blocks drawn in the scatter figure (all are printed)
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/15_feature_pca.py [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`. In a notebook, put
# the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--arch", "vit_b_16"]`) and run the cells
# again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%
settings = start("15_feature_pca", FLAGS)
subject = study(settings)

# %% [markdown]
# ## PCA, written out
#
# The principal components are the eigenvectors of the covariance matrix with the largest eigenvalues; each
# eigenvalue is the variance along its component. vitlab's `pca` takes the SVD route instead; the two agree up to
# each component's sign (v and -v explain the same variance).


# %%
def pca_by_hand(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k eigenvectors (k, D) of the covariance of x (N, D) with the largest eigenvalues (k,)."""
    centred = x.double() - x.double().mean(dim=0)
    covariance = centred.T @ centred / (len(x) - 1)  # (D, D)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending, vectors in columns
    return eigenvectors.flip(1)[:, :k].T, eigenvalues.flip(0)[:k]


# %% [markdown]
# ## Before and after fine-tuning
#
# The model before fine-tuning, when it can be rebuilt offline: the shipped base for the demo, the run's starting
# weights for a checkpoint, a random initialisation for an ImageNet model (vitlab did not fine-tune it). Frozen
# blocks compute with the same weights on the same input, so their class tokens must be identical.


# %%
def model_before(subject: Subject) -> tuple[VisionTransformer | None, str, int]:
    """The model before fine-tuning when it can be rebuilt offline: (model or None, what it is, frozen blocks)."""
    config = subject.run_config or {}
    classes = len(subject.classes)
    if subject.source == "imagenet":
        torch.manual_seed(0)
        random = build_model(subject.arch, num_classes=classes, pretrained=False, trainable_blocks=0)
        return random.eval(), "a random initialisation (this model was not fine-tuned by vitlab)", 0
    frozen = len(subject.model.encoder.layers) - int(config.get("trainable_blocks", 0))
    pretrained = config.get("pretrained")
    if pretrained in SHIPPED_BASES:
        base = build_model(subject.arch, num_classes=classes, pretrained=shipped_base_file(name=pretrained),
                           trainable_blocks=0)
        return base.eval(), f"vitlab's shipped {pretrained} base", frozen
    if pretrained == "imagenet" and weights_cache_file(subject.arch).is_file():
        base = build_model(subject.arch, num_classes=classes, pretrained=weights_cache_file(subject.arch),
                           trainable_blocks=0)
        return base.eval(), f"torchvision's ImageNet {subject.arch}", frozen
    if pretrained not in ("imagenet", "none", None) and subject.arch != "imported" and Path(pretrained).is_file():
        base = build_model(subject.arch, num_classes=classes, pretrained=pretrained, trainable_blocks=0)
        return base.eval(), f"the weights in {pretrained}", frozen
    if pretrained == "none":
        torch.manual_seed(int(config.get("seed", 0)))
        random = build_model(subject.arch, num_classes=classes, pretrained=False, trainable_blocks=0)
        return random.eval(), "a random initialisation (not necessarily the run's own)", 0
    return None, f"not shown (pretrained={pretrained!r}: its weights are not on this machine)", 0


def check_frozen_identical(before: Tensor, after: Tensor, frozen: int) -> None:
    """Frozen blocks compute with the same weights on the same input: their class tokens must be identical."""
    for block in range(frozen):
        if not torch.equal(before[block], after[block]):
            raise AssertionError(f"Block {block + 1} was frozen, yet its class tokens differ between the base and "
                                 f"the fine-tuned model.")


# %%
measured = subject.examples.take(512 if subject.small else 12)
inputs, labels = subject.inputs(measured.images), measured.labels
before, before_name, frozen = model_before(subject)
models = [m for m in (before, subject.model) if m is not None]
row_titles = (["before"] if before is not None else []) + ["after"]
features = [features_by_depth(model, inputs).cls for model in models]  # each (blocks, N, D)
if before is not None:
    check_frozen_identical(features[0], features[-1], frozen)

# %% [markdown]
# ## Class tokens on two components, block by block
#
# PCA fitted per block and per model. vitlab's `pca` must equal `pca_by_hand` (checked on the last block's class
# tokens). Separation: the share of each 2-D picture's variance explained by the class means (1 = each class one
# point, 0 = all class means in one place).

# %%
points, separation = [], []
for states in features:  # one (blocks, N, D) per model
    result, (components, variances) = pca(states[-1].double(), 2), pca_by_hand(states[-1], 2)
    signs = (result.components * components).sum(dim=1, keepdim=True).sign()  # (2, 1): v and -v are one component
    for theirs, ours in ((result.components, signs * components), (result.explained_variance, variances)):
        assert_same(theirs, ours, vitlab="vitlab.analysis.projections.pca", lesson="pca_by_hand", rtol=1e-6,
                    atol=1e-6)
    projected = [pca(block, 2).project(block) for block in states]  # each (N, 2)
    points.append(projected)
    separation.append([class_separation(p, labels) for p in projected])
explain(f"""
    Model: {subject.name}; before fine-tuning: {before_name}. Class tokens of {len(measured)} test images.
    Asserted: the lesson's pca_by_hand (covariance eigenvectors) equals vitlab's
    pca{f'; blocks 1 to {frozen} (frozen) give identical class tokens' if frozen else ''}. Separation per block
    (first two components' share of the variance in brackets):
""")
print("\n".join(f"  block {block + 1:2d}: " + ", ".join(
    f"{row_titles[row]} {separation[row][block]:.2f} ({pca(features[row][block], 2).explained_ratio.sum():.0%})"
    for row in range(len(models))) for block in range(len(points[0]))) + "\n")


# %%
def figure_scatter(points: list[list[Tensor]], separation: list[list[float]], labels: Tensor, names: list[str],
                   row_titles: list[str], title: str) -> Figure:
    """Rows: models; columns: blocks (at most MAX_COLUMNS, evenly spaced); dots coloured by class."""
    blocks = len(points[0])
    columns = sorted({round(i * (blocks - 1) / (MAX_COLUMNS - 1)) for i in range(MAX_COLUMNS)}) \
        if blocks > MAX_COLUMNS else list(range(blocks))
    fig = Figure(figsize=(2.6 * len(columns) + 1.2, 2.7 * len(points) + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(len(points), len(columns), squeeze=False)
    colours = labels.numpy() if len(names) <= 10 else (labels % 10).numpy()
    for row, row_points in enumerate(points):
        for column, block in enumerate(columns):
            ax, xy = axes[row, column], row_points[block].numpy()
            dots = ax.scatter(xy[:, 0], xy[:, 1], c=colours, cmap="tab10", vmin=0, vmax=9, s=6, alpha=0.7)
            ax.set_title(f"{row_titles[row]}\nblock {block + 1}: separation {separation[row][block]:.2f}",
                         fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    if len(names) <= 10:
        handles = [dots.legend_elements()[0][i] for i in range(len(labels.unique()))]
        fig.legend(handles, [names[i] for i in labels.unique().tolist()], loc="outside right center", fontsize=8)
    return fig


save(figure_scatter(points, separation, labels, subject.splits.classes, row_titles,
                    f"{subject.name}: class tokens on their first two principal components"), settings.out, FIGURES[0])

# %% [markdown]
# ## Patch features as colours (DINO-style)
#
# PCA of the last block's patch tokens over a few dozen images, the first three components as red, green and
# blue, each scaled to [0, 1]; after fine-tuning, and before.


# %%
def patch_maps(models: list[VisionTransformer], inputs: Tensor, shown: int) -> list[Tensor]:
    """Last block's patch tokens of each model -> (shown, g, g, 3) RGB; PCA fitted on all `inputs` of that model."""
    maps = []
    for model in models:
        with torch.no_grad():
            _, captured = capture_forward(model, inputs)
        rgb = patch_pca_rgb(captured.hidden_states[-1][:, 1:], captured.geometry.grid_size)  # (B, g, g, 3)
        maps.append(rgb[:shown])
    return maps


def figure_rgb(images: Tensor, maps: list[Tensor], row_titles: list[str], title: str) -> Figure:
    """Row 1 the images (B, 3, S, S); one more row per (B, g, g, 3) RGB map."""
    count = len(images)
    fig = Figure(figsize=(1.9 * count, 2.0 * (len(maps) + 1) + 0.5), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(len(maps) + 1, count, squeeze=False)
    for column in range(count):
        axes[0, column].imshow(to_display(images[column]))
        for row, rgb in enumerate(maps, start=1):
            axes[row, column].imshow(rgb[column].numpy(), interpolation="nearest")
            axes[row, column].set_title(row_titles[row - 1], fontsize=8)
        for row in range(len(maps) + 1):
            axes[row, column].set_axis_off()
    return fig


shown = subject.inputs(subject.pick(6 if subject.small else 4).images)
rgb_inputs = torch.cat([shown, inputs[: 64 if subject.small else 4]])
explain(f"""
    The RGB maps: PCA of block {len(points[0])}'s patch tokens over {len(rgb_inputs)} images (the {len(shown)}
    shown and more), the first three components as red, green and blue, each scaled to [0, 1].
""")
save(figure_rgb(shown, patch_maps(models[::-1], rgb_inputs, len(shown)), [f"patch PCA, {t}" for t in row_titles[::-1]],
                f"{subject.name}: patch features as colours (DINO-style)"), settings.out, FIGURES[1])

# %% [markdown]
# ## Questions
#
# 1. The separation score is the share of the 2-D picture's variance that the class means explain. Why can
#    classes be perfectly separable by the model's head and still look mixed in two principal components?
# 2. PCA knows nothing about the classes. When the classes come apart along the first component anyway, what does
#    that say about what the model spends its variance on?
# 3. In patch_pca_rgb.png, do the garment and the black background get different colours? Before or after
#    fine-tuning, or both? Which of the model's tasks (filling in hidden patches of fractals and photos, naming the
#    clothes) would need that? Do a sleeve and a shirt's body get different colours?
# 4. Which classes overlap in the last block's picture? Are they the ones you would confuse yourself (shirt,
#    T-shirt/top, pullover, coat), and are they the same ones lesson 11 finds most confused?
