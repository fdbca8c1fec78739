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
# # Lesson 1: an image is a sequence of patches
#
# A Vision Transformer never sees pixels one by one. It cuts the image into a grid of square patches (4x4 pixels
# for the demo vit_tiny at 32x32, 16x16 for ViT-B/16 at 224x224), flattens each patch into a vector, and
# multiplies it by one shared matrix: the patch embedding. torchvision writes that as a strided convolution,
# `conv_proj`, with kernel size = stride = patch size. This lesson cuts the patches by hand with einops, applies
# `conv_proj`'s weights as a plain matrix, and checks that the result equals torchvision's own `_process_input`
# (the convolution).
#
# Builds on: `vitlab/model.py` (the model), `vitlab/capture.py` (`geometry`: grid and patch size), einops.
#
# Figures, in `lesson_outputs/01_patches/`: `patch_grid.png` (the image cut into its patch grid),
# `patches_to_tokens.png` (patches -> pixel rows -> embedding rows).

# %%
import numpy as np
import torch
from einops import rearrange
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.capture import geometry
from vitlab.plotting import draw_overlay, to_display
from vitlab.teaching.lesson import assert_same, explain, save, start, study

FIGURES = ("patch_grid.png", "patches_to_tokens.png")
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/01_patches.py [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`. In a notebook, put the
# same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--arch", "vit_b_16"]`) and run the cells again.
# Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%
settings = start("01_patches", FLAGS)
subject = study(settings)
model, geo = subject.model, geometry(subject.model)
shown = subject.pick(8 if subject.small else 4)
images = subject.inputs(shown.images)  # (B, 3, S, S) normalised, at the model's input size

# %% [markdown]
# ## Cut, flatten, multiply
#
# einops says the cut in one pattern: the image's height is `h` rows of `p1` pixels, its width `w` columns of
# `p2`; each patch becomes one row of `c * p1 * p2` numbers, patches in reading order. The patch embedding is then
# one matrix product with `conv_proj`'s weights, reshaped so that each hidden unit's filter is one row.


# %%
def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into flattened patches, row by row: (B, C, H, W) -> (B, patches, C * p * p)."""
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=patch_size, p2=patch_size)


def embed_by_hand(model: VisionTransformer, images: Tensor) -> Tensor:
    """Patch embedding as flatten + linear, with `conv_proj`'s weights: (B, 3, S, S) -> (B, patches, hidden)."""
    weight = rearrange(model.conv_proj.weight, "d c p1 p2 -> d (c p1 p2)")  # (hidden, 3 * p * p): one row per unit
    return patchify(images, model.patch_size) @ weight.T + model.conv_proj.bias  # (B, patches, hidden)


# %% [markdown]
# The same numbers as torchvision's strided convolution, up to float rounding? `assert_same` says so, or fails
# and says where they differ.

# %%
with torch.no_grad():
    pixel_rows = patchify(images, geo.patch_size)  # (B, patches, 3 * p * p)
    by_hand = embed_by_hand(model, images)  # (B, patches, hidden)
    by_torchvision = model._process_input(images)  # conv_proj, then (B, hidden, g, g) -> (B, patches, hidden)
assert_same(by_torchvision, by_hand, vitlab="torchvision's conv_proj (model._process_input)",
            lesson="embed_by_hand (flatten + linear)", rtol=1e-4, atol=1e-4,
            hint="The patch vectors must be flattened in the order of the weights, (c p1 p2).")
largest = (by_hand - by_torchvision).abs().max().item()
hidden = by_hand.shape[-1]
explain(f"""
    Model: {subject.name}. Its input is {geo.image_size}x{geo.image_size} pixels, cut into a
    {geo.grid_size}x{geo.grid_size} grid of {geo.patch_size}x{geo.patch_size} patches: a sequence of
    {geo.num_patches} patches.

    einops cut {images.shape[0]} images into {tuple(pixel_rows.shape)} (images, patches, values per patch).
    Multiplying by conv_proj's weights reshaped to a ({hidden}, {pixel_rows.shape[-1]}) matrix gave
    {tuple(by_hand.shape)}; torchvision's strided convolution gave {tuple(by_torchvision.shape)}. Largest
    difference: {largest:.2e}, float rounding only. Asserted: flatten + linear == conv_proj.

    The encoder then puts one learned class token in front and adds a position embedding to every token, so
    it works on {geo.num_tokens} tokens of {hidden} numbers each. Nothing in the encoder knows these came from
    an image: to it they are words.
""")

# %% [markdown]
# ## The patch grid
#
# The first photo with its grid, each patch numbered by its place in the sequence. A garment spans many patches:
# no single patch holds a sleeve, a collar or a heel whole, so the model must combine patches to recognise one.


# %%
def figure_patch_grid(image: Tensor, grid: int, patch: int, title: str) -> Figure:
    """The image with its patch grid and each patch's position in the sequence."""
    fig = Figure(figsize=(5.5, 5.8), layout="constrained")
    ax = fig.add_subplot()
    draw_overlay(ax, image, None, patch_grid=grid)
    step = image.shape[-1] / grid
    font = 7 if grid <= 8 else 5
    for index in range(grid * grid):
        row, col = divmod(index, grid)
        ax.text((col + 0.5) * step - 0.5, (row + 0.5) * step - 0.5, str(index), color="yellow", fontsize=font,
                ha="center", va="center")
    ax.set_title(f"{title}\n{grid}x{grid} = {grid * grid} patches of {patch}x{patch} px, numbered in sequence order")
    return fig


save(figure_patch_grid(images[0], geo.grid_size, geo.patch_size, f"{subject.name}: a photo as patches"),
     settings.out, FIGURES[0])

# %% [markdown]
# ## From patches to tokens
#
# The three steps on the first image: the patches pulled apart, the matrix of their pixels (one row per patch),
# and the tokens the linear layer makes of them (one row per patch, one column per hidden unit).


# %%
def exploded_patches(image: Tensor, grid: int, patch: int, gap: int) -> np.ndarray:
    """(H, W, 3) display image with white gaps between the patches."""
    pixels = to_display(image)  # (S, S, 3) in [0, 1]
    cell = patch + gap
    canvas = np.ones((grid * cell - gap, grid * cell - gap, 3))
    for row in range(grid):
        for col in range(grid):
            canvas[row * cell : row * cell + patch, col * cell : col * cell + patch] = pixels[
                row * patch : (row + 1) * patch, col * patch : (col + 1) * patch
            ]
    return canvas


def figure_patches_to_tokens(image: Tensor, pixel_rows: Tensor, tokens: Tensor, grid: int, patch: int) -> Figure:
    """Three panels: the patches apart; the (patches, 3p^2) matrix of their pixels; the (patches, hidden) tokens."""
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    ax_patches, ax_pixels, ax_tokens = fig.subplots(1, 3, width_ratios=[1, 1.1, 1.1])
    ax_patches.imshow(exploded_patches(image, grid, patch, gap=max(1, patch // 4)))
    ax_patches.set_title(f"1. Cut: {grid * grid} patches, read row by row")
    ax_patches.set_axis_off()
    shown_pixels = ax_pixels.imshow(pixel_rows.numpy(), aspect="auto", cmap="gray", interpolation="nearest")
    ax_pixels.set(title=f"2. Flatten: one row of 3x{patch}x{patch} = {pixel_rows.shape[1]} values per patch",
                  xlabel="value index (channel, row, column)", ylabel="patch (sequence position)")
    fig.colorbar(shown_pixels, ax=ax_pixels, label="normalised pixel value")
    limit = tokens.abs().max().item()  # symmetric colour scale: white is 0
    shown_tokens = ax_tokens.imshow(tokens.numpy(), aspect="auto", cmap="coolwarm", interpolation="nearest",
                                    vmin=-limit, vmax=limit)
    ax_tokens.set(title=f"3. Linear: {tokens.shape[1]} features per patch (= conv_proj)",
                  xlabel="embedding dimension", ylabel="patch (sequence position)")
    fig.colorbar(shown_tokens, ax=ax_tokens, label="embedding value")
    return fig


save(figure_patches_to_tokens(images[0], pixel_rows[0], by_hand[0], geo.grid_size, geo.patch_size), settings.out,
     FIGURES[1])

# %% [markdown]
# ## Questions
#
# 1. The einops pattern ends in `(c p1 p2)`. vit-pytorch writes `(p1 p2 c)`. Why does the order matter here, and
#    what would the check say if you changed it? (Try it.)
# 2. How many tokens does ViT-B/16 process for a 224x224 image, and for a 384x384 one? Self-attention compares
#    every token with every other: how much more work is the larger image?
# 3. Why is a convolution whose kernel size equals its stride the same thing as one linear layer applied to each
#    patch separately? What would change if the stride were smaller than the kernel?
# 4. The demo's photos are 28x28, padded with 2 black pixels on each side to 32x32. Which patches of the 8x8 grid
#    hold some padding, and how much of each? Why does black padding cost the model nothing here, when the clothes
#    already lie on black?
