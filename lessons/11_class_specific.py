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
# # Lesson 11: class-specific explanations, "why this class?" rather than "where does it look?"
#
# Rollout (lesson 7) answers one question per image, whatever class you care about: it only follows attention
# weights. Gradient-weighted attention (Chefer, Gur & Wolf, 2021) asks a class. Asking for the predicted class shows
# the evidence for it; asking for another class shows what, if anything, spoke for that one. The lesson draws both
# next to rollout, and measures how class-specific the maps are (the cosine similarity of the two classes' maps;
# rollout's would be exactly 1) and, where there are object masks (the garments' silhouettes), how much of each
# lands on the garment. Then it asks the question a student of these photos asks first: where does the model look
# to tell apart the two classes it mixes up most often (on clothing, think of a shirt against a T-shirt/top or a
# coat)? Evidence for each of the two, on the same photo.
#
# Builds on: `vitlab/analysis/attention.py` (`gradient_weighted_attention`, `rollout`),
# `vitlab/analysis/localization.py` (`pointing_game`, `attention_mass_ratio`), `vitlab/capture.py` (`capture`).
#
# Figures, in `lesson_outputs/11_class_specific/`: `class_specific_maps.png` (images x: rollout, predicted class,
# other class), `class_specific_scores.png` (how similar the two classes' maps are, how strong, and how
# object-focused), `confused_pair.png` (photos of the most confused pair of classes, evidence for each).

# %%
import argparse

import torch
import torch.nn.functional as F
from einops import rearrange
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.attention import gradient_weighted_attention, rollout
from vitlab.analysis.localization import attention_mass_ratio, object_patches, pointing_game, random_maps
from vitlab.capture import Geometry, capture, capture_forward, geometry
from vitlab.errors import VitlabError
from vitlab.plotting import draw_overlay
from vitlab.teaching.lesson import Subject, assert_same, explain, save, start, study

FIGURES = ("class_specific_maps.png", "class_specific_scores.png", "confused_pair.png")
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/11_class_specific.py [--other CLASS] [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`.
# In a notebook, put the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--other", "shirt"]`) and
# run the cells again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%


def own_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--other", metavar="CLASS", default=None,
                        help="the class to contrast with the prediction (default: each image's runner-up)")


settings = start("11_class_specific", FLAGS, own_flags)
subject = study(settings)
geo = geometry(subject.model)
other = None
if settings.other is not None:
    if settings.other not in subject.classes:
        listed = ", ".join(subject.classes[:10]) + (", ..." if len(subject.classes) > 10 else "")
        raise VitlabError(f"--other {settings.other!r} is not one of this model's classes: {listed}")
    other = subject.classes.index(settings.other)

# %% [markdown]
# ## Gradient-weighted attention, written out
#
# Weight each block's attention by the gradient of the class's logit with respect to it, keep the positive part
# (attention that raised the score), average the heads and accumulate through the blocks like rollout:
# R = I, then for each block R = R + mean over heads of max(dA * A, 0) @ R, with dA = d logit[target] / d A.


# %%
def relevance_by_hand(model: VisionTransformer, inputs: Tensor, target: Tensor) -> Tensor:
    """Gradient-weighted attention: inputs (B, 3, S, S), target (B,) -> (B, patches)."""
    with torch.enable_grad(), capture(model) as captured:
        logits = model(inputs)  # (B, classes)
    score = logits.gather(1, target[:, None]).sum()  # each image's logit for its target class, summed
    gradients = torch.autograd.grad(score, captured.attentions)  # d score / d A: one (B, heads, T, T) per block
    relevance = torch.eye(captured.geometry.num_tokens)  # (T, T): before the first block, each token is itself
    for attention, gradient in zip(captured.attentions, gradients, strict=True):
        raised = (gradient * attention.detach()).clamp(min=0)  # (B, heads, T, T): attention that raised the logit
        relevance = relevance + raised.mean(dim=1) @ relevance  # (B, T, T): accumulate, like rollout
    return relevance[:, 0, 1:]  # the class token's row, over the patch tokens


# %% [markdown]
# Two classes per image: the predicted one and another (each image's runner-up, or `--other CLASS`). For both,
# vitlab's `gradient_weighted_attention` must equal the lines above.


# %%
def class_maps(subject: Subject, inputs: Tensor, other: int | None) -> dict[str, tuple[Tensor, Tensor]]:
    """{"rollout" / "predicted class" / "other class": (maps (B, patches), class per image (B,))}, checked."""
    with torch.no_grad():
        logits, captured = capture_forward(subject.model, inputs)
    predicted = logits.argmax(dim=-1)
    contrast = torch.full_like(predicted, other) if other is not None else logits.topk(2, dim=-1).indices[:, 1]
    maps = {"rollout": (rollout(captured.attentions), predicted)}
    for name, target in (("predicted class", predicted), ("other class", contrast)):
        maps[name] = (relevance_by_hand(subject.model, inputs, target), target)
        assert_same(gradient_weighted_attention(subject.model, inputs, target)[0], maps[name][0],
                    vitlab="vitlab's gradient_weighted_attention", lesson="relevance_by_hand")
    return maps


measured = subject.examples.take(200 if subject.small else 4)
maps = class_maps(subject, subject.inputs(measured.images), other)
relevance, predicted = maps["predicted class"]
contrast_relevance, contrast = maps["other class"]
same_class = (predicted == contrast).float().mean().item()
similarity = F.cosine_similarity(relevance, contrast_relevance, dim=-1, eps=1e-12)  # (B,)
totals = {"predicted class": relevance.sum(dim=-1).mean().item(),
          "other class": contrast_relevance.sum(dim=-1).mean().item()}
contrast_name = "runner-up class" if other is None else f"class {settings.other!r}"
note = f" (the same as the prediction on {100 * same_class:.0f}% of images)" if same_class else ""
explain(f"""
    Model: {subject.name}, {len(measured)} test images; the other class is each image's {contrast_name}{note}.
    Cosine similarity between the predicted class's map and the other class's, mean over images:
    {similarity.mean():.2f}, lowest {similarity.min():.2f} (rollout gives one map for every class: similarity
    1). Mean total relevance: predicted class {totals['predicted class']:.2f}, other class
    {totals['other class']:.2f}: the maps say where each class's logit was pushed up, not which class won.
    Asserted: the lesson's relevance_by_hand equals vitlab.analysis.attention.gradient_weighted_attention.
""")
if not relevance.any():
    explain("""
        Every relevance map is zero: no attention weight raised the class logits, so the logits do not depend on
        attention (an untrained head does this). The mass ratios below are then undefined (nan).
    """)
ratios = None
if measured.masks is not None:
    objects = object_patches(measured.masks, geo)  # (B, patches)
    ratios = {name: attention_mass_ratio(flat, objects) for name, (flat, _) in maps.items()}
    ratios["random map"] = attention_mass_ratio(random_maps(objects.shape), objects)
    pointing = {name: pointing_game(flat, objects) for name, (flat, _) in maps.items()}
    print("\n".join(f"  {name:<16} mass ratio {ratios[name]:5.2f}" +
                    (f"   pointing game {pointing[name]:4.2f}" if name in pointing else "") for name in ratios) + "\n")

# %% [markdown]
# ## The maps, and how class-specific they are


# %%
def figure_maps(images: Tensor, maps: dict[str, tuple[Tensor, Tensor]], subject: Subject, geo: Geometry,
                title: str) -> Figure:
    rows = images.shape[0]
    fig = Figure(figsize=(2.3 * (len(maps) + 1), 2.4 * rows + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(rows, len(maps) + 1, squeeze=False)
    for row in range(rows):
        draw_overlay(axes[row, 0], images[row], None, title="image")
        for column, (name, (flat, classes)) in enumerate(maps.items(), start=1):
            label = "any class" if name == "rollout" else subject.classes[int(classes[row])]
            strength = "" if name == "rollout" else f"\ntotal {flat[row].sum():.2f}"
            grid_map = rearrange(flat[row], "(h w) -> h w", h=geo.grid_size)
            draw_overlay(axes[row, column], images[row], grid_map, title=f"{name}: {label}{strength}")
    return fig


def figure_scores(similarity: Tensor, totals: dict[str, float], ratios: dict[str, float] | None,
                  title: str) -> Figure:
    """Panels: how similar the two classes' maps are; their total relevance; their mass on the object (masks)."""
    panels = 2 if ratios is None else 3
    fig = Figure(figsize=(5 * panels, 4), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    axes[0].hist(similarity.numpy(), bins=20, range=(0, 1), color="tab:purple")
    axes[0].axvline(1.0, color="grey", linestyle="--", label="rollout (one map for all classes)")
    axes[0].set(xlabel="cosine similarity of the two classes' maps", ylabel="images",
                title="How class-specific are the maps?")
    axes[0].legend(loc="upper left", fontsize=8)
    bars = axes[1].bar(list(totals), list(totals.values()), color=["tab:orange", "tab:blue"])
    axes[1].bar_label(bars, fmt="%.2f")
    axes[1].set(ylabel="mean total relevance per image", title="Total relevance (sum over patches)")
    if ratios is not None:
        bars = axes[2].bar(list(ratios), list(ratios.values()),
                           color=["tab:grey", "tab:orange", "tab:blue", "lightgrey"])
        axes[2].bar_label(bars, fmt="%.2f")
        axes[2].axhline(1.0, color="black", linestyle="--", linewidth=1, label="chance")
        axes[2].set(ylabel="attention mass ratio (1.0 = chance)", title="How much lands on the object?")
        axes[2].legend()
    return fig


shown_inputs = subject.inputs(subject.pick(4).images)
save(figure_maps(shown_inputs, class_maps(subject, shown_inputs, other), subject, geo,
                 f"{subject.name}: rollout vs gradient-weighted attention for two classes\n"
                 f"(each map scaled to its own maximum)"), settings.out, FIGURES[0])
save(figure_scores(similarity, totals, ratios, f"{subject.name}: class-specific maps on {len(measured)} test images"),
     settings.out, FIGURES[1])

# %% [markdown]
# ## Where does the model look to tell two classes apart?
#
# The pair of classes that are most often each other's runner-up, over the measured images, is the pair the model
# finds hardest to tell apart. On up to four photos of that pair, the evidence for each of the two classes, side
# by side: where the maps differ is where the model tells them apart.


# %%
def most_confused_pair(predicted: Tensor, runner_up: Tensor) -> tuple[int, int, int]:
    """The two classes most often predicted with the other as runner-up: (B,), (B,) -> (class, class, images)."""
    pairs = torch.stack([torch.minimum(predicted, runner_up), torch.maximum(predicted, runner_up)], dim=1)  # (B, 2)
    unique, counts = pairs.unique(dim=0, return_counts=True)
    first, second = unique[counts.argmax()].tolist()
    return first, second, int(counts.max())


with torch.no_grad():
    top_two = subject.model(subject.inputs(measured.images)).topk(2, dim=-1).indices  # (B, 2)
first, second, pair_count = most_confused_pair(top_two[:, 0], top_two[:, 1])
in_pair = ((top_two == first) | (top_two == second)).all(dim=1).nonzero()[:4, 0]  # photos whose top two are the pair
pair_inputs = subject.inputs(measured.images[in_pair])  # (n, 3, S, S)
pair_maps = {"evidence": (relevance_by_hand(subject.model, pair_inputs, torch.full_like(in_pair, first)),
                          torch.full_like(in_pair, first)),
             "versus": (relevance_by_hand(subject.model, pair_inputs, torch.full_like(in_pair, second)),
                        torch.full_like(in_pair, second))}
pair_similarity = F.cosine_similarity(pair_maps["evidence"][0], pair_maps["versus"][0], dim=-1, eps=1e-12)  # (n,)
explain(f"""
    The most confused pair: {subject.classes[first]!r} and {subject.classes[second]!r}, the model's top two
    answers for {pair_count} of the {len(measured)} images. On the {len(in_pair)} photos drawn, the two classes'
    evidence maps have a mean cosine similarity of {pair_similarity.mean():.2f} (1: the same patches speak
    for both).
""")
save(figure_maps(pair_inputs, pair_maps, subject, geo,
                 f"{subject.name}: where the evidence for {subject.classes[first]!r} and for "
                 f"{subject.classes[second]!r} lies\n(each map scaled to its own maximum)"), settings.out, FIGURES[2])

# %% [markdown]
# ## Questions
#
# 1. Why must the gradient be taken with respect to the attention probabilities, and why does a frozen block still
#    get one? (Hint: vitlab makes the input require a gradient.)
# 2. Compare the total relevance of the predicted class with the runner-up's. The map keeps only attention that
#    raised that class's logit: how can a class the model rejected still collect as much positive evidence?
#    (Think of what else pushes its logit down.)
# 3. Where does the model look to tell a shirt from a T-shirt/top or a coat? Run with --other shirt and with
#    --other "T-shirt/top", and look at confused_pair.png: do the maps differ at the sleeves, the collar, the
#    buttons down the front, or not at all? Find a photo where the two maps disagree and explain what each says.
# 4. Rollout and gradient-weighted attention can both land on the garment. Which of them could tell you the model
#    is right for the wrong reason?
