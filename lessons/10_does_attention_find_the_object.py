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
# # Lesson 10: does attention find the object, and does the model need what it attends to?
#
# Two different questions. First: does the attention map land on the object? Second: does the model use those
# patches? Landing on the object is not the same as needing it.
#
# Builds on: `vitlab/analysis/attention.py` (`rollout`), `vitlab/analysis/localization.py` (`pointing_game`,
# `attention_mass_ratio`, `random_maps`; `vitlab/training/demo.py`'s localization scores compute the first part for
# the demo model), `vitlab/capture.py` (`capture_forward`).
#
# Figures, in `lesson_outputs/10_does_attention_find_the_object/`: `localization_scores.png` (pointing game and
# per-image mass ratio, rollout vs random), `perturbation_curve.png` (accuracy as patches are removed, three
# orders), `perturbed_examples.png` (what the model sees at a few steps of each order).

# %%
import torch
from einops import repeat
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.attention import rollout
from vitlab.analysis.localization import attention_mass_ratio, object_patches, pointing_game, random_maps
from vitlab.capture import Geometry, capture_forward, geometry
from vitlab.plotting import draw_overlay
from vitlab.teaching.lesson import Subject, assert_same, explain, save, start, study

FIGURES = ("localization_scores.png", "perturbation_curve.png", "perturbed_examples.png")
ORDERS = ("most attended first", "least attended first", "random order")
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/10_does_attention_find_the_object.py [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`.
# In a notebook, put the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--arch", "vit_b_16"]`)
# and run the cells again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%
settings = start("10_does_attention_find_the_object", FLAGS)
subject = study(settings)
model, geo = subject.model, geometry(subject.model)

# %% [markdown]
# ## 1. Does the map land on the object?
#
# The demo's photos come with object masks, so attention rollout can be scored: the pointing game (is the map's
# maximum on an object patch?) and the attention mass ratio (the map's share on the object divided by the object's
# share of the image; 1.0 = chance), each against a random map. Three lines each.
#
# A photo's mask is not drawn by hand: it is the garment's silhouette, the pixels brighter than the black
# background with the holes inside filled (`vitlab/data/fashion.py`). That is a fair answer here because the
# clothes lie on black, but it is thresholded, not exact: a faint edge can fall outside it, and a patch counts as
# object when any of its pixels is. vitlab's synthetic `shapes` dataset keeps exact masks, the known answer its
# own localization tests use; pass `--checkpoint` with a run trained on it to score a model against those.


# %%
def pointing_by_hand(maps: Tensor, objects: Tensor) -> float:
    """The pointing game, written out: the share of maps (B, patches) whose hottest patch is an object patch."""
    hottest = maps.argmax(dim=1)  # (B,): the patch each map points at
    return objects[torch.arange(len(maps)), hottest].float().mean().item()


def mass_ratio_by_hand(maps: Tensor, objects: Tensor) -> Tensor:
    """Attention mass ratio per image, written out: (B, patches) maps and bool objects -> (B,); 1.0 = chance."""
    on_object = (maps * objects).sum(dim=1) / maps.sum(dim=1)  # (B,): share of the map's mass on the object
    return on_object / objects.float().mean(dim=1)  # divided by the object's share of the patches


# %% [markdown]
# Scored on a few hundred test images; vitlab's `pointing_game` and `attention_mass_ratio` must give the same
# numbers. Images without masks (CIFAR) cannot be scored.

# %%
scored = subject.examples.take(500 if subject.small else 16)
per_image, pointing = {}, {}
if scored.masks is None:
    print("  (no localization_scores.png: these images have no object masks; the demo's photos do)\n")
else:
    with torch.no_grad():
        _, captured = capture_forward(model, subject.inputs(scored.images))
    objects = object_patches(scored.masks, geo)  # (B, patches)
    candidates = {"rollout": rollout(captured.attentions), "random map": random_maps(objects.shape)}
    for name, maps in candidates.items():
        pointing[name] = pointing_by_hand(maps, objects)
        per_image[name] = mass_ratio_by_hand(maps, objects)  # (B,)
        assert_same(pointing_game(maps, objects), pointing[name], vitlab="vitlab's pointing_game",
                    lesson="pointing_by_hand")
        assert_same(attention_mass_ratio(maps, objects), per_image[name].mean().item(),
                    vitlab="vitlab's attention_mass_ratio", lesson="mass_ratio_by_hand (mean over images)")
    explain(f"""
        Model: {subject.name}, {len(scored)} test images; objects cover on average
        {100 * objects.float().mean():.0f}% of the patches. Attention rollout: pointing game
        {100 * pointing['rollout']:.0f}% (random map {100 * pointing['random map']:.0f}%), attention mass ratio
        {per_image['rollout'].mean():.2f} (random map {per_image['random map'].mean():.2f}; 1.0 = chance).
        Asserted: the lesson's pointing_by_hand and mass_ratio_by_hand equal vitlab's pointing_game and
        attention_mass_ratio.
    """)


# %%
def figure_localization(per_image: dict[str, Tensor], pointing: dict[str, float], title: str) -> Figure:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    fig.suptitle(title)
    ax_pointing, ax_mass = fig.subplots(1, 2, width_ratios=[1, 2])
    bars = ax_pointing.bar(list(pointing), [100 * v for v in pointing.values()], color=["tab:orange", "tab:grey"])
    ax_pointing.bar_label(bars, fmt="%.0f%%")
    ax_pointing.set(ylabel="images whose map maximum is on the object (%)", title="Pointing game", ylim=(0, 110))
    top = max(v.max().item() for v in per_image.values())
    bins = torch.linspace(0, top, 30).numpy()
    for (name, values), colour in zip(per_image.items(), ("tab:orange", "tab:grey"), strict=True):
        ax_mass.hist(values.numpy(), bins=bins, alpha=0.6, color=colour, label=f"{name} (mean {values.mean():.2f})")
    ax_mass.axvline(1.0, color="black", linestyle="--", linewidth=1, label="chance (1.0)")
    ax_mass.set(xlabel="attention mass ratio of one image (share on object / object's share of patches)",
                ylabel="images", title="Attention mass on the object, per image")
    ax_mass.legend()
    return fig


if per_image:
    save(figure_localization(per_image, pointing, f"{subject.name}: does attention rollout land on the object? "
                             f"({len(scored)} test images)"), settings.out, FIGURES[0])

# %% [markdown]
# ## 2. Does the model need the attended patches?
#
# A perturbation test asks the model: remove patches (paint them with the image's mean colour), most-attended
# first, and watch the accuracy; then least-attended first, and in random order. If the attention marks what
# matters, removing the most-attended patches should hurt the accuracy much faster than removing the
# least-attended ones.


# %%
def remove_patches(inputs: Tensor, removed: Tensor, geo: Geometry) -> Tensor:
    """Paint the removed patches with each image's mean colour.

    inputs: (B, 3, S, S) normalised model inputs; removed: (B, patches) bool. Returns a new (B, 3, S, S).
    """
    mask = repeat(removed, "b (gh gw) -> b 1 (gh p1) (gw p2)", gh=geo.grid_size, p1=geo.patch_size,
                  p2=geo.patch_size)  # (B, 1, S, S)
    mean_colour = inputs.mean(dim=(2, 3), keepdim=True)  # (B, 3, 1, 1)
    return torch.where(mask, mean_colour, inputs)


def removal_orders(maps: Tensor) -> dict[str, Tensor]:
    """For each order, the patch ranks (B, patches): entry [b, i] is the i-th patch to remove from image b."""
    generator = torch.Generator().manual_seed(0)
    return {ORDERS[0]: maps.argsort(dim=1, descending=True),
            ORDERS[1]: maps.argsort(dim=1),
            ORDERS[2]: torch.stack([torch.randperm(maps.shape[1], generator=generator) for _ in maps])}


def removed_mask(ranks: Tensor, count: int) -> Tensor:
    """(B, patches) bool: True for the first `count` patches of each image's order."""
    removed = torch.zeros(ranks.shape, dtype=torch.bool)
    return removed.scatter(1, ranks[:, :count], True)


def perturbation_curves(model: VisionTransformer, inputs: Tensor, targets: Tensor, orders: dict[str, Tensor],
                        counts: list[int], geo: Geometry) -> dict[str, Tensor]:
    """Share of images still predicted as `targets` after removing `count` patches, per order: (len(counts),)."""
    curves = {}
    with torch.no_grad():
        for name, ranks in orders.items():
            scores = [(model(remove_patches(inputs, removed_mask(ranks, count), geo)).argmax(dim=-1) == targets)
                      .float().mean() for count in counts]
            curves[name] = torch.stack(scores)
    return curves


tested = subject.examples.take(200 if subject.small else 8)
inputs = subject.inputs(tested.images)
with torch.no_grad():
    clean_logits, captured = capture_forward(model, inputs)
orders = removal_orders(rollout(captured.attentions))
counts = list(range(0, geo.num_patches + 1, max(1, geo.num_patches // 8)))
if subject.labels_match:
    targets, measure = tested.labels, "accuracy"
else:  # an ImageNet model on CIFAR or the photos: its classes are not the labels; track its own clean answer
    targets, measure = clean_logits.argmax(dim=-1), "predictions unchanged from the clean image"
curves = perturbation_curves(model, inputs, targets, orders, counts, geo)
quarter = counts.index(min(counts, key=lambda c: abs(c - geo.num_patches / 4)))
explain(f"""
    Perturbation test on {len(tested)} test images: patches painted with the image's mean colour, in three
    orders. {measure.capitalize()} with {100 * counts[quarter] / geo.num_patches:.0f}% of the patches removed:
    most attended first {100 * curves[ORDERS[0]][quarter]:.0f}%, least attended first
    {100 * curves[ORDERS[1]][quarter]:.0f}%, random order {100 * curves[ORDERS[2]][quarter]:.0f}% (clean:
    {100 * curves[ORDERS[0]][0]:.0f}%). Area under each curve (higher = the model copes better): most attended
    first {curves[ORDERS[0]].mean():.2f}, least attended first {curves[ORDERS[1]].mean():.2f}, random
    {curves[ORDERS[2]].mean():.2f}.
""")
verdict = ("removing the most-attended patches hurts faster: the attention marks patches the model needs"
           if curves[ORDERS[0]].mean() < curves[ORDERS[1]].mean() else
           "removing the most-attended patches does NOT hurt faster: here attention is a poor guide to what the "
           "model needs")
explain(f"Verdict: {verdict}.")


# %%
def figure_curves(counts: list[int], curves: dict[str, Tensor], patches: int, ylabel: str, title: str) -> Figure:
    fig = Figure(figsize=(6.5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    shares = [100 * c / patches for c in counts]
    for name, values in curves.items():
        ax.plot(shares, 100 * values.numpy(), "o-", markersize=4, label=f"{name} (area {values.mean().item():.2f})")
    ax.set(xlabel="patches removed (%)", ylabel=ylabel, title=title, ylim=(0, 105))
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def figure_examples(model: VisionTransformer, subject: Subject, image: Tensor, orders: dict[str, Tensor],
                    counts: list[int], geo: Geometry, title: str) -> Figure:
    """One image, one row per order, one column per number of removed patches; the prediction in each title."""
    fig = Figure(figsize=(2.1 * len(counts) + 1.2, 2.3 * len(orders) + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(len(orders), len(counts), squeeze=False)
    for row, (name, ranks) in enumerate(orders.items()):
        for column, count in enumerate(counts):
            perturbed = remove_patches(image[None], removed_mask(ranks, count), geo)  # (1, 3, S, S)
            with torch.no_grad():
                predicted = subject.classes[int(model(perturbed).argmax())]
            draw_overlay(axes[row, column], perturbed[0], None, title=f"{count} removed: {predicted}")
        axes[row, 0].text(-0.08, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, ha="right",
                          va="center", fontsize=10)
    return fig


save(figure_curves(counts, curves, geo.num_patches, f"{measure} (%)",
                   f"{subject.name}: removing patches ranked by rollout"), settings.out, FIGURES[1])
shown_counts = [c for c in counts if c <= geo.num_patches // 2][:5]
save(figure_examples(model, subject, inputs[0], {name: ranks[:1] for name, ranks in orders.items()}, shown_counts,
                     geo, f"{subject.name}: what the model sees (prediction in each title)"), settings.out, FIGURES[2])

# %% [markdown]
# ## Questions
#
# 1. A random map already wins the pointing game on some images. Why, and what does it depend on?
# 2. The gap between "most-attended first" and "least-attended first" is the evidence. What would the two curves
#    look like for a model that ignores attention entirely? For an attention map that is pure noise?
# 3. Removing patches makes images the model never saw in training. How could that alone lower the accuracy,
#    whichever patches you remove? Which of the three curves controls for it?
# 4. Painting with the mean colour is one choice. On these photos black is the background: painting a patch black
#    makes it look like background, not like a hole. What might change with black, noise, or a blurred copy?
