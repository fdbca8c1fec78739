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
# # Lesson 7: attention rollout, because one block's map is not the whole story
#
# The class token's attention in the last block says which tokens it reads. But after a few blocks token i is no
# longer patch i: every block mixed some of every token into every other, and the residual connection kept some
# of each token's own past. Attention rollout (Abnar & Zuidema, 2020) follows the mixing back to the input.
#
# Builds on: `vitlab/analysis/attention.py` (`rollout`, `cls_attention`), `vitlab/analysis/localization.py`
# (`pointing_game`, `attention_mass_ratio`, `random_maps`), `vitlab/capture.py` (`capture_forward`).
#
# Figures, in `lesson_outputs/07_rollout/`: `rollout_maps.png` (images x maps), `rollout_scores.png` (the pointing
# game and the mass ratio of every map).

# %%
import argparse

import torch
from einops import rearrange
from matplotlib.figure import Figure
from torch import Tensor

from vitlab.analysis.attention import cls_attention, rollout
from vitlab.analysis.localization import attention_mass_ratio, object_patches, pointing_game, random_maps
from vitlab.capture import Geometry, capture_forward, geometry
from vitlab.cli import Rule, number_flag
from vitlab.plotting import draw_overlay
from vitlab.teaching.lesson import assert_same, explain, save, start, study

FIGURES = ("rollout_maps.png", "rollout_scores.png")
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/07_rollout.py [--discard RATIO] [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`. In a
# notebook, put the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--discard", "0.5"]`) and run
# the cells again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%
DISCARD = Rule(0, 0.99, "--discard 0.9", whole=False)  # rollout takes [0, 1): at 1 every weight would go


def own_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--discard", type=number_flag("discard", DISCARD), default=0.9, metavar="RATIO",
                        help="share of each row's weakest attention weights to drop, for the last rollout "
                        "(default: 0.9)")


settings = start("07_rollout", FLAGS, own_flags)
subject = study(settings)
model, geo = subject.model, geometry(subject.model)

# %% [markdown]
# ## Rollout, written out
#
# For each block take the attention with the heads fused (mean, max or min), add the identity for the residual
# connection, renormalise the rows, and multiply the blocks together. The class token's row of the product says
# how much of each input patch reached it.

# %%
FUSIONS = {"mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1), "min": lambda a: a.amin(dim=1)}


def rollout_by_hand(attentions: list[Tensor], fusion: str = "mean") -> Tensor:
    """Attention rollout, written out: one (B, heads, T, T) per block, first block first -> (B, patches)."""
    identity = torch.eye(attentions[0].shape[-1])  # (T, T): the residual connection passes each token on
    joint = identity  # before the first block, every token is only itself
    for attention in attentions:
        flow = (FUSIONS[fusion](attention) + identity) / 2  # (B, T, T): half attention, half residual
        flow = flow / flow.sum(dim=-1, keepdim=True)  # every row is a mix again: it sums to 1
        joint = flow @ joint  # follow the mixing one block further back towards the input
    return joint[:, 0, 1:]  # the class token's row, over the patch tokens


# %% [markdown]
# Capture the attention of four test images, and check that vitlab's `rollout` equals the ten lines above for
# every fusion.

# %%
shown = subject.pick(4)
inputs = subject.inputs(shown.images)  # (4, 3, S, S) at the model's input size
with torch.no_grad():
    _, captured = capture_forward(model, inputs)
for fusion in FUSIONS:
    assert_same(rollout(captured.attentions, head_fusion=fusion), rollout_by_hand(captured.attentions, fusion),
                vitlab=f"vitlab's rollout ({fusion} fusion)", lesson="rollout_by_hand")
print("Asserted: vitlab's rollout equals rollout_by_hand for mean, max and min fusion.\n")

# %% [markdown]
# ## One block against rollout
#
# The maps side by side: each block's class-token row on its own (heads averaged), rollout with each fusion, and
# rollout with max fusion after discarding each row's weakest weights first (`discard_ratio`, vitlab's only), to
# keep only the strong paths.


# %%
def all_maps(attentions: list[Tensor], geo: Geometry, discard: float) -> dict[str, Tensor]:
    """Every map the lesson compares, each (B, patches): single blocks' class-token rows and rollouts."""
    maps = {f"block {b + 1} only": cls_attention(a, geo).mean(dim=1).flatten(1) for b, a in enumerate(attentions)}
    maps |= {f"rollout {fusion}": rollout_by_hand(attentions, fusion) for fusion in FUSIONS}
    maps[f"rollout max, discard {discard:.0%}"] = rollout(attentions, head_fusion="max", discard_ratio=discard)
    return maps


def figure_maps(images: Tensor, maps: dict[str, Tensor], geo: Geometry, title: str) -> Figure:
    """Rows of images; columns: the image, then each map over it."""
    rows, columns = images.shape[0], len(maps) + 1
    fig = Figure(figsize=(1.9 * columns, 2.1 * rows + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        draw_overlay(axes[row, 0], images[row], None, title="image")
        for column, (name, flat) in enumerate(maps.items(), start=1):
            grid_map = rearrange(flat[row], "(h w) -> h w", h=geo.grid_size)
            draw_overlay(axes[row, column], images[row], grid_map, title=name.replace(", ", ",\n"))
    return fig


save(figure_maps(inputs, all_maps(captured.attentions, geo, settings.discard), geo,
                 f"{subject.name}: one block's class-token attention vs rollout (heads averaged in single "
                 f"blocks; each map scaled to its own maximum)"), settings.out, FIGURES[0])

# %% [markdown]
# ## Does the map land on the object?
#
# The demo's photos come with object masks: each garment's silhouette, the pixels brighter than the black
# background with the holes inside filled. So every map can be scored on a few hundred test photos: the pointing
# game (is the map's maximum on the object?) and the attention mass ratio (the map's share on the object divided
# by the object's share of the patches; 1.0 = chance), each against a random map.
# Images without masks (CIFAR) cannot be scored.

# %%
measured = subject.examples.take(500 if subject.small else 16)
scores, random = {}, (0.0, 0.0)
if measured.masks is None:
    print("  (no rollout_scores.png: these images have no object masks to score against; the demo's photos do)\n")
else:
    with torch.no_grad():
        _, captured = capture_forward(model, subject.inputs(measured.images))
    objects = object_patches(measured.masks, geo)  # (B, patches)
    baseline = random_maps(objects.shape)  # (B, patches), seeded: the same on every run
    random = (pointing_game(baseline, objects), attention_mass_ratio(baseline, objects))
    scores = {name: (pointing_game(m, objects), attention_mass_ratio(m, objects))
              for name, m in all_maps(captured.attentions, geo, settings.discard).items()}
    explain(f"""
        Model: {subject.name}. Scored on {len(objects)} test images whose objects cover on average
        {100 * objects.float().mean():.0f}% of the patches.
    """)
    width = max(len(name) for name in scores)
    print("\n".join(f"  {name:<{width}}  pointing game {pg:5.2f}   mass ratio {mr:5.2f}"
                    for name, (pg, mr) in [*scores.items(), ("random map", random)]) + "\n")
    best = max(scores, key=lambda name: scores[name][1])
    explain(f"""
        Best mass ratio: {best} ({scores[best][1]:.2f}). The last block alone:
        {scores[f"block {len(captured.attentions)} only"][1]:.2f}; rollout with mean fusion:
        {scores["rollout mean"][1]:.2f}.
    """)


# %%
def figure_scores(scores: dict[str, tuple[float, float]], random: tuple[float, float], title: str) -> Figure:
    """Horizontal bars: pointing game and mass ratio of every map, with the random map as a line."""
    names = list(scores)
    fig = Figure(figsize=(10, 0.45 * len(names) + 1.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(1, 2, sharey=True)
    labels = ("pointing game (share of images)", "attention mass ratio (1.0 = chance)")
    for index, (ax, label) in enumerate(zip(axes, labels, strict=True)):
        values = [scores[name][index] for name in names]
        colours = ["tab:orange" if name.startswith("rollout") else "tab:blue" for name in names]
        ax.barh(names, values, color=colours)
        ax.axvline(random[index], color="grey", linestyle="--", label="random map")
        ax.set(xlabel=label)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].invert_yaxis()  # first block at the top
    return fig


if scores:
    save(figure_scores(scores, random, f"{subject.name}: does the map land on the object? "
                                       f"({len(measured)} test images)"), settings.out, FIGURES[1])

# %% [markdown]
# ## Questions
#
# 1. Why add the identity before multiplying? What would rollout say about a model whose blocks mostly pass their
#    input through the residual connection, if you left it out?
# 2. Which single block's class-token map scores best here, and is it the last one? What does that tell you about
#    reading only the last block?
# 3. Mean, max and min fusion answer different questions about the heads. Which one would you use to ask "does any
#    head look here?", and which for "do all heads agree?"
# 4. Rollout ignores the MLPs and the values: it only follows attention weights. Name one way this can make a
#    rollout map wrong about what the model uses.
#    (The object mask is the whole silhouette: a map on a coat's collar and one on its hem score the same.)
