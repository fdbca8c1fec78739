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
# # Lesson 4: one attention head, seen from the class token
#
# In every block each head computes, for every token, a probability distribution over all tokens: where that token
# reads from. The classifier only looks at the class token, so the first map worth drawing is the class token's
# row: how much of what the class token reads comes from each patch. The lesson draws it for every head of one
# block (the last by default), over several photos, and measures each head: how many patches it spreads over and,
# where the images have object masks (the garment's silhouette on the demo's photos), how much of it lands on the
# garment rather than on the black around it.
#
# Builds on: `vitlab/capture.py` (`capture_forward`: attention probabilities), `vitlab/analysis/attention.py`
# (`cls_attention`), `vitlab/analysis/localization.py` (`attention_mass_ratio`), `vitlab/plotting.py`
# (`draw_overlay`).
#
# Figures, in `lesson_outputs/04_attention_heads/`: `cls_attention_heads.png` (images x heads of one block),
# `heads_all_blocks.png` (one image, every block and head).

# %%
import argparse

import torch
from matplotlib.figure import Figure
from torch import Tensor

from vitlab.analysis.attention import cls_attention
from vitlab.analysis.localization import attention_mass_ratio, object_patches
from vitlab.capture import capture_forward, geometry
from vitlab.cli import Rule, number_flag
from vitlab.errors import VitlabError
from vitlab.plotting import draw_overlay
from vitlab.teaching.lesson import LARGEST_BLOCKS, explain, save, start, study

FIGURES = ("cls_attention_heads.png", "heads_all_blocks.png")
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/04_attention_heads.py [--block N] [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`. In
# a notebook, put the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--block", "1"]`) and run the
# cells again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%


def own_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--block", type=number_flag("block", Rule(1, LARGEST_BLOCKS, "--block 4")), default=None,
                        metavar="N", help="which encoder block, 1 = first (default: the last)")


settings = start("04_attention_heads", FLAGS, own_flags)
subject = study(settings)
model, geo = subject.model, geometry(subject.model)
num_blocks = len(model.encoder.layers)
block = num_blocks if settings.block is None else settings.block
if not 1 <= block <= num_blocks:
    raise VitlabError(f"--block {block} is out of range: this model has blocks 1 to {num_blocks} (for example "
                      f"--block {num_blocks}).")

# %% [markdown]
# ## Every head of one block, measured
#
# Two numbers per head. The effective number of patches, exp(entropy) of the head's map renormalised over the
# patches: 1 when it reads one patch, the whole grid when it reads all evenly. And, where there are masks, the
# object mass ratio: the map's share on the garment's patches divided by the garment's share of the image (1.0 is
# chance).


# %%
def effective_patches(maps: Tensor) -> Tensor:
    """exp(entropy) of each map renormalised over the patches: (B, heads, g, g) -> (B, heads)."""
    p = maps.flatten(2)
    p = p / p.sum(dim=-1, keepdim=True)
    return torch.exp(-(p * p.clamp(min=1e-12).log()).sum(dim=-1))


measured = subject.examples.take(64 if subject.small else 8)
with torch.no_grad():
    _, captured = capture_forward(model, subject.inputs(measured.images))
maps = cls_attention(captured.attentions[block - 1], geo)  # (B, heads, g, g)
heads = maps.shape[1]
spread = effective_patches(maps).mean(dim=0)  # (heads,)
on_patches = maps.flatten(2).sum(dim=-1).mean(dim=0)  # (heads,) the rest goes to the class token itself
lines = [f"  head {h:2d}: spreads over {spread[h]:5.1f} of {geo.num_patches} patches (effective), "
         f"{100 * on_patches[h]:3.0f}% of its attention on patches" for h in range(heads)]
if measured.masks is not None:
    objects = object_patches(measured.masks, geo)  # (B, patches)
    for h in range(heads):
        lines[h] += f", object mass ratio {attention_mass_ratio(maps[:, h].flatten(1), objects):.2f}"
explain(f"""
    Model: {subject.name}. Block {block} of {num_blocks} has {heads} heads. For each, the class token's row of
    attention over the {geo.grid_size}x{geo.grid_size} patches, measured on {measured.images.shape[0]} test
    images (object mass ratio: attention on object patches relative to the object's share of the image; 1.0
    is chance):
""")
print("\n".join(lines) + "\n")

# %% [markdown]
# ## The maps
#
# Four photos, each of a different class where the labels allow, with every head's map over them; then one photo
# in every block, to see how the heads change with depth.


# %%
def figure_heads(images: Tensor, maps: Tensor, row_titles: list[str], title: str) -> Figure:
    """Rows of images: the image, then the map of each head over it. maps: (B, heads, g, g)."""
    rows, heads = maps.shape[:2]
    fig = Figure(figsize=(1.9 * (heads + 1), 2.1 * rows + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(rows, heads + 1, squeeze=False)
    for row in range(rows):
        draw_overlay(axes[row, 0], images[row], None, title=row_titles[row])
        for head in range(heads):
            draw_overlay(axes[row, head + 1], images[row], maps[row, head], title=f"head {head}")
    return fig


shown = subject.pick(4)
inputs = subject.inputs(shown.images)  # (4, 3, S, S)
with torch.no_grad():
    shown_logits, shown_captured = capture_forward(model, inputs)
titles = [f"pred: {p}" + (f"\ntrue: {subject.label_name(int(t))}" if subject.labels_match else "")
          for p, t in zip(subject.predicted_names(shown_logits), shown.labels, strict=True)]
maps_shown = cls_attention(shown_captured.attentions[block - 1], geo)  # (4, heads, g, g)
save(figure_heads(inputs, maps_shown, titles, f"{subject.name}: class-token attention, block {block}, every head "
                                              f"(each map scaled to its own maximum)"), settings.out, FIGURES[0])
per_block = torch.stack([cls_attention(a, geo)[0] for a in shown_captured.attentions])  # (blocks, heads, g, g)
save(figure_heads(inputs[:1].expand(num_blocks, -1, -1, -1), per_block, [f"block {b + 1}" for b in range(num_blocks)],
                  f"{subject.name}: class-token attention of one image, every block and head"),
     settings.out, FIGURES[1])

# %% [markdown]
# ## Questions
#
# 1. Each map is one row of a softmax, so it sums to 1 over all tokens. Why does it not sum to 1 over the patches
#    you see? Where does the rest go?
# 2. Two heads of the same block can look at very different places. What would be lost if all heads agreed?
# 3. An "effective number of patches" of 1 means a head reads one patch; of 64 (the demo's whole grid) means it
#    reads all evenly. Which heads of your model are focused, which diffuse, and does that change with --block?
#    With --block 1, do the heads look at the garment's outline, its middle, or the black around it?
# 4. Is a head that attends to the garment proof that the model uses the object to decide? What else would you need
#    to check? (Lessons 10 and 11 come back to this.)
