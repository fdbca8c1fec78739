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
# # Lesson 14: token norms, and the high-norm outliers of Darcet et al. 2023
#
# Every token leaves every block as a vector; its length (L2 norm) says how loud it is in the residual stream. In
# "Vision Transformers Need Registers" (Darcet et al. 2023) large, long-trained ViTs (DINOv2, OpenCLIP, DeiT-III)
# turned out to hold a few patch tokens, mostly on plain background, whose norms are about ten times the others'
# from the middle blocks on. They carry global information instead of their patch's content, the class token
# attends to them much more than to an ordinary patch, and they are what makes those models' attention maps
# spotty. Giving the model a few extra "register" tokens to think in makes them disappear.
#
# This lesson measures the norms of every token after every block, flags outliers and asks the paper's questions:
# are there any, where do they sit (grid position; with object masks also on the garment or on the black
# background), and does the class
# token in the next block attend to them more than their share of tokens? A small model trained briefly may have
# none: then the lesson says so and shows the loudest patches it did find.
#
# Builds on: `vitlab/analysis/norms.py` (`token_norms`, `high_norm_tokens`, `outlier_positions`,
# `outlier_attention`), `vitlab/capture.py` (`capture_forward`), `vitlab/analysis/localization.py`
# (`object_patches`).
#
# Figures, in `lesson_outputs/14_token_norms/`: `token_norms_by_block.png` (per block: median, 99th percentile and
# largest patch norm, the class token's norm and the outlier threshold), `high_norm_tokens.png` (a few images' norm
# maps in the block with the loudest patch, outliers or the loudest candidates marked, and how often each grid
# position is flagged).

# %%
import argparse

import torch
from matplotlib.figure import Figure
from torch import Tensor

from vitlab.analysis.localization import object_patches
from vitlab.analysis.norms import DEFAULT_FACTOR, high_norm_tokens, outlier_attention, outlier_positions, token_norms
from vitlab.capture import capture_forward, geometry
from vitlab.cli import Rule, number_flag
from vitlab.plotting import draw_overlay, style_depth_axes
from vitlab.teaching.lesson import assert_same, explain, save, start, study

FIGURES = ("token_norms_by_block.png", "high_norm_tokens.png")
SHOWN = 5  # images in the map figure
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/14_token_norms.py [--factor X] [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`. In a
# notebook, put the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--factor", "2"]`) and run the
# cells again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%
# --factor, checked while parsing, before any model is loaded: a multiple of the median patch norm, above 1.
FACTOR = Rule(1, 1000, f"--factor {DEFAULT_FACTOR:g}", whole=False, low_open=True)


def own_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--factor", type=number_flag("factor", FACTOR), default=DEFAULT_FACTOR, metavar="X",
                        help=f"a patch is an outlier above X times its image's median patch norm (default "
                        f"{DEFAULT_FACTOR:g})")


settings = start("14_token_norms", FLAGS, own_flags)
subject = study(settings)
geo = geometry(subject.model)

# %% [markdown]
# ## Norms and the outlier rule, written out
#
# The L2 norm: the square root of the sum of squares over the hidden dimension. The rule: a patch is an outlier
# when its norm exceeds FACTOR times the median patch norm of the same image in the same block.


# %%
def norms_by_hand(hidden_states: list[Tensor]) -> Tensor:
    """The L2 norm of every token: one (B, tokens, hidden) per block -> (blocks, B, tokens)."""
    return torch.stack([state.pow(2).sum(dim=-1).sqrt() for state in hidden_states])


def outliers_by_hand(norms: Tensor, factor: float) -> Tensor:
    """The rule: a patch (token 1 on) louder than factor x its image's median patch norm. (B, T) -> (B, T) bool."""
    patches = norms[:, 1:]  # the class token (token 0) is not a patch
    median = patches.median(dim=1, keepdim=True).values  # (B, 1)
    return torch.cat([torch.zeros_like(norms[:, :1], dtype=torch.bool), patches > factor * median], dim=1)


# %%
measured = subject.examples.take(256 if subject.small else 8)
with torch.no_grad():
    _, captured = capture_forward(subject.model, subject.inputs(measured.images))
norms = norms_by_hand(captured.hidden_states)  # (blocks, B, tokens)
assert_same(token_norms(captured.hidden_states), norms, vitlab="vitlab's token_norms", lesson="norms_by_hand")
outliers = torch.stack([outliers_by_hand(block, settings.factor) for block in norms])  # (blocks, B, tokens)
assert_same(torch.stack([high_norm_tokens(block, settings.factor) for block in norms]), outliers,
            vitlab="vitlab's high_norm_tokens", lesson="outliers_by_hand")

# %% [markdown]
# ## Block by block
#
# One line per block: the class token's norm, the median patch's, how loud the loudest patch is against its
# image's median, how many outliers, and how much of the next block's class-token attention they get compared with
# their share of tokens (1.0x being what uniform attention would give).


# %%
def loudness(norms: Tensor) -> Tensor:
    """Each patch's norm over its image's median patch norm: (blocks, B, T) -> (blocks, B, patches)."""
    patches = norms[:, :, 1:]
    return patches / patches.median(dim=2, keepdim=True).values


def block_line(norms: Tensor, outliers: Tensor, attentions: list[Tensor], block: int, factor: float) -> str:
    """One block's norms, how loud its loudest patch is, its outliers and the class token's attention on them."""
    count = int(outliers[block].sum())
    loudest = loudness(norms)[block].max()
    line = (f"  block {block + 1:2d}: class token {norms[block, :, 0].mean():7.2f}, median patch "
            f"{norms[block, :, 1:].median(dim=1).values.mean():7.2f}, loudest patch {loudest:5.2f}x its median, "
            f"{count} outliers")
    if count and block < len(norms) - 1:
        share = outlier_attention(norms, attentions, block, factor)
        line += (f"; next block's class token gives them {share.enrichment.mean():.1f}x their share (heads "
                 + ", ".join(f"{value:.1f}" for value in share.enrichment.tolist()) + ")")
    return line


ratios = loudness(norms)  # (blocks, B, patches)
explain(f"""
    Model: {subject.name}, {len(measured)} test images, {geo.num_tokens} tokens each, outliers above
    {settings.factor:g}x the median patch norm. Asserted: the lesson's norms_by_hand and outliers_by_hand equal
    vitlab.analysis.norms'. Per block (norms averaged over images):
""")
print("\n".join(block_line(norms, outliers, captured.attentions, b, settings.factor) for b in range(len(norms)))
      + "\n")

# %% [markdown]
# ## Where the loudest patches sit
#
# In the block with the loudest patch: the outliers, or, if there are none, each image's loudest patch; with
# object masks (the garments' silhouettes), how many of them lie on the garment (Darcet et al.'s sit on
# background, where a patch carries little of its own: here, the plain black around the clothes).

# %%
block = int(ratios.amax(dim=(1, 2)).argmax())  # the block with the loudest patch
flagged = outliers[block, :, 1:]  # (B, patches)
if not outliers.any():
    flagged = ratios[block] >= ratios[block].amax(dim=1, keepdim=True)  # each image's loudest patch
where = ""
if measured.masks is not None and flagged.any():
    on_object = object_patches(measured.masks, geo)  # (B, patches)
    where = (f" {on_object[flagged].float().mean():.0%} of them lie on the object (object patches are "
             f"{on_object.float().mean():.0%} of all patches); Darcet et al.'s sit on background.")
if outliers.any():
    positions = outlier_positions(outliers[block], geo.grid_size)
    explain(f"""
        {int(outliers.sum())} outlier tokens in all blocks. In block {block + 1}, which has the loudest patch,
        {len(positions)} outliers in {len(positions[:, 0].unique())} of {len(measured)} images.{where}
    """)
else:
    explain(f"""
        No outliers: in no block does any patch of any of the {len(measured)} images reach {settings.factor:g}x
        its image's median norm. The loudest patch measured is {ratios[block].max():.2f}x, in block {block + 1}
        (Darcet et al.'s artifacts are near 10x). The figure marks each image's loudest patch in that block
        instead.{where}
    """)


# %%
def figure_norms(norms: Tensor, factor: float, title: str) -> Figure:
    """Per block: patch-norm median, 99th percentile and maximum; the class token's norm; the outlier threshold."""
    fig = Figure(figsize=(6.8, 4.3), layout="constrained")
    ax = fig.add_subplot()
    blocks = torch.arange(1, len(norms) + 1).numpy()
    patches = norms[:, :, 1:].flatten(1)  # (blocks, B * patches)
    median = norms[:, :, 1:].median(dim=2).values.mean(dim=1)  # (blocks,) mean over images of each image's median
    ax.plot(blocks, median.numpy(), "o-", label="patch tokens: median")
    ax.plot(blocks, patches.quantile(0.99, dim=1).numpy(), "s--", label="patch tokens: 99th percentile")
    ax.plot(blocks, patches.amax(dim=1).numpy(), "^:", label="patch tokens: largest")
    ax.plot(blocks, norms[:, :, 0].mean(dim=1).numpy(), "d-", label="class token (mean over images)")
    ax.plot(blocks, (factor * median).numpy(), color="grey", linestyle="--", label=f"outlier threshold ({factor:g}x "
            f"median)")
    style_depth_axes(ax, "L2 norm of the token's state", title=title)
    return fig


def figure_maps(images: Tensor, ratios: Tensor, marked: Tensor, counts: Tensor, title: str) -> Figure:
    """Norm-over-median maps (B, g, g) with marked (B, g, g) tokens crossed, and flagged counts per position."""
    shown = len(images)
    fig = Figure(figsize=(2.2 * (shown + 1), 2.9), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(1, shown + 1, squeeze=False)[0]
    scale = images.shape[-1] / ratios.shape[-1]  # pixels per patch
    for column in range(shown):
        draw_overlay(axes[column], images[column], ratios[column], alpha=0.6,
                     title=f"loudest {ratios[column].max():.2f}x")
        rows, cols = marked[column].nonzero(as_tuple=True)
        axes[column].scatter((cols.float() + 0.5) * scale - 0.5, (rows.float() + 0.5) * scale - 0.5, marker="x",
                             color="cyan", s=40)
    image = axes[-1].imshow(counts.numpy(), cmap="viridis")
    axes[-1].set_title("flagged per grid position\n(all measured images)", fontsize=9)
    axes[-1].set_axis_off()
    fig.colorbar(image, ax=axes[-1], shrink=0.8)
    return fig


save(figure_norms(norms, settings.factor, f"{subject.name}: token norms by block"), settings.out, FIGURES[0])
grid = (len(measured), geo.grid_size, geo.grid_size)
counts = flagged.sum(dim=0).reshape(geo.grid_size, geo.grid_size)  # (g, g) over all measured images
marked_what = "outliers" if outliers.any() else "each image's loudest patch"
save(figure_maps(subject.inputs(measured.images[:SHOWN]), ratios[block].reshape(grid)[:SHOWN],
                 flagged.reshape(grid)[:SHOWN], counts,
                 f"{subject.name}: norm / median patch norm in block {block + 1}; x: {marked_what}"),
     settings.out, FIGURES[1])

# %% [markdown]
# ## Questions
#
# 1. Why does the rule compare with the median patch norm and not the mean? What would a few tokens with ten times
#    the usual norm do to the mean?
# 2. The norms of all tokens grow with depth. Why does a residual stream tend to do that, and why does this lesson
#    compare each token with its own block's median instead of with a fixed number?
# 3. Darcet et al. found outliers only in large models trained for long. If the demo model has none, what about it
#    (size, training time, image size, task) could explain that? Try --arch vit_b_16.
# 4. If a token is an outlier and the class token gives it five times its share of attention, what does that say
#    about reading the class token's attention map as "where the model looks"?
