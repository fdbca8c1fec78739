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
# # Lesson 5: pick one patch and follow where it looks, block by block
#
# Lesson 4 looked at the class token's row of attention. Every patch has a row too: the patch is a query, and its
# row says which tokens it reads from. This lesson picks a patch on the garment and one on the black background,
# draws their rows (heads averaged) for every block, and measures how far each looks: the attention-weighted
# distance in pixels from the query patch to the patches it reads.
#
# Builds on: `vitlab/capture.py` (`capture_forward`), `vitlab/analysis/attention.py` (`query_attention`,
# `fuse_heads`, `patch_distances`), `vitlab/analysis/localization.py` (`masks_at`, `object_patches`),
# `vitlab/plotting.py` (`draw_overlay`).
#
# Figures, in `lesson_outputs/05_query_patch/`: `query_patch_by_block.png` (two query patches of one image, every
# block), `query_distance_by_block.png` (how far object and background patches look, and how much of it lands on
# the object, over many images).

# %%
import argparse

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from vitlab.analysis.attention import fuse_heads, patch_distances, query_attention
from vitlab.analysis.localization import masks_at, object_patches
from vitlab.capture import Geometry, capture_forward, geometry
from vitlab.cli import Rule, number_flag
from vitlab.errors import VitlabError
from vitlab.plotting import draw_overlay, style_depth_axes
from vitlab.teaching.lesson import LARGEST_GRID, explain, save, start, study

FIGURES = ("query_patch_by_block.png", "query_distance_by_block.png")
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/05_query_patch.py [--patch ROW COL] [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`.
# In a notebook, put the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--patch", "3", "4"]`) and
# run the cells again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%


def own_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patch", type=number_flag("patch", Rule(0, LARGEST_GRID - 1, "--patch 3 4")), nargs=2,
                        metavar=("ROW", "COL"), default=None,
                        help="query patch for the first row of the figure (default: the patch at the object's centre)")


settings = start("05_query_patch", FLAGS, own_flags)
subject = study(settings)
model, geo = subject.model, geometry(subject.model)
if settings.patch is not None and not all(0 <= v < geo.grid_size for v in settings.patch):
    raise VitlabError(f"--patch {settings.patch[0]} {settings.patch[1]} is off the {geo.grid_size}x{geo.grid_size} "
                      f"grid: use 0 to {geo.grid_size - 1} for both.")

# %% [markdown]
# ## Two queries per image
#
# With object masks, the object patch nearest the object's centroid (a sandal's or a trouser's centroid can fall
# in a gap, on black) and the object-free patch farthest from it; without (CIFAR), the centre patch and the
# top-left corner.


# %%
def object_and_background_patches(masks: Tensor | None, geo: Geometry) -> tuple[Tensor, Tensor, str, str]:
    """One query patch on the object and one on the background per image: (B,), (B,) patch indices and names."""
    g = geo.grid_size
    if masks is None:
        return torch.tensor([(g // 2) * g + g // 2]), torch.tensor([0]), "centre patch", "corner patch"
    masks = masks_at(masks, geo)  # (B, S, S) at the model's input size
    rows, cols = torch.meshgrid(torch.arange(masks.shape[1]), torch.arange(masks.shape[2]), indexing="ij")
    area = masks.flatten(1).sum(dim=1).clamp(min=1)  # (B,)
    centre_row = (masks * rows).flatten(1).sum(dim=1) / area  # (B,) in pixels
    centre_col = (masks * cols).flatten(1).sum(dim=1) / area
    centre = (centre_row // geo.patch_size).long() * g + (centre_col // geo.patch_size).long()  # (B,)
    empty = ~object_patches(masks, geo)  # (B, patches)
    from_centre = patch_distances(g, 1)[centre]  # (B, patches), in patches
    on_object = torch.where(empty, torch.full_like(from_centre, float("inf")), from_centre).argmin(dim=1)  # (B,)
    distances = patch_distances(g, 1)[on_object]  # (B, patches) from the object patch, in patches
    background = torch.where(empty, distances, torch.full_like(distances, -1.0)).argmax(dim=1)  # (B,)
    return on_object, background, "object patch", "background patch"


measured = subject.examples.take(64 if subject.small else 8)
inputs = subject.inputs(measured.images)
with torch.no_grad():
    _, captured = capture_forward(model, inputs)
attentions = captured.attentions
on_object, background, object_name, background_name = object_and_background_patches(measured.masks, geo)
queries = {object_name: on_object.expand(len(inputs)), background_name: background.expand(len(inputs))}

# %% [markdown]
# ## How far does each query look?
#
# A query's row over the patches (heads averaged, renormalised), weighted by the pixel distance from the query to
# each patch: the distance it looks. Uniform attention gives the reference; with masks (the garments'
# silhouettes), the row's share on the object says how much of it lands there.


# %%
def query_rows(attentions: list[Tensor], geo: Geometry, queries: Tensor) -> Tensor:
    """Each image's query-patch row over the patches, heads averaged and renormalised: (B,) -> (blocks, B, P)."""
    batch = torch.arange(queries.shape[0])
    rows = [a.mean(dim=1)[batch, geo.num_prefix_tokens + queries, geo.num_prefix_tokens :] for a in attentions]
    rows = torch.stack(rows)  # (blocks, B, patches)
    return rows / rows.sum(dim=-1, keepdim=True)


def query_distance(rows: Tensor, geo: Geometry, queries: Tensor) -> Tensor:
    """Attention-weighted distance (pixels) from each query patch to what it reads: (blocks, B, P) -> (blocks, B)."""
    distances = patch_distances(geo.grid_size, geo.patch_size)  # (patches, patches)
    return (rows * distances[queries]).sum(dim=-1)


rows = {name: query_rows(attentions, geo, q) for name, q in queries.items()}  # each (blocks, B, P)
distances = {name: query_distance(rows[name], geo, q) for name, q in queries.items()}  # each (blocks, B)
all_distances = patch_distances(geo.grid_size, geo.patch_size)
uniform = {name: all_distances[q].mean().item() for name, q in queries.items()}
share_on_object, object_share = None, 0.0
if measured.masks is not None:
    objects = object_patches(measured.masks, geo).float()  # (B, P)
    share_on_object = {name: (r * objects).sum(dim=-1) for name, r in rows.items()}  # each (blocks, B)
    object_share = objects.mean().item()
lines = [f"  {name + ':':<18} {d[0].mean():5.1f} px in block 1 -> {d[-1].mean():5.1f} px in block "
         f"{len(attentions)}   (uniform attention: {uniform[name]:5.1f} px)" for name, d in distances.items()]
if share_on_object is not None:
    lines += [f"  {name + ':':<18} {100 * v[0].mean():3.0f}% on the object in block 1 -> "
              f"{100 * v[-1].mean():3.0f}% in block {len(attentions)}   (uniform: {100 * object_share:.0f}%)"
              for name, v in share_on_object.items()]
explain(f"""
    Model: {subject.name}, {len(attentions)} blocks, {geo.patch_size}-px patches. In each of {len(inputs)}
    test images, one query {object_name} and one {background_name}; heads averaged. How far each looks
    (attention-weighted distance), and how much of its attention lands on the object:
""")
print("\n".join(lines) + "\n")

# %% [markdown]
# ## One image, every block
#
# The first image's two queries (or yours, with `--patch ROW COL`), their heads-averaged rows drawn over it.


# %%
def outline(ax, patch: int, geo: Geometry, size: int, colour: str) -> None:
    """Draw a box around one patch of a (size x size) image."""
    step = size / geo.grid_size
    row, col = divmod(patch, geo.grid_size)
    ax.add_patch(Rectangle((col * step - 0.5, row * step - 0.5), step, step, fill=False, edgecolor=colour,
                           linewidth=2))


def figure_by_block(image: Tensor, maps: dict[str, Tensor], patches: dict[str, int], geo: Geometry,
                    title: str) -> Figure:
    """One row per query patch; its heads-averaged attention in every block."""
    blocks = next(iter(maps.values())).shape[0]
    fig = Figure(figsize=(1.9 * (blocks + 1), 2.2 * len(maps) + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(len(maps), blocks + 1, squeeze=False)
    for row, (name, block_maps) in enumerate(maps.items()):
        draw_overlay(axes[row, 0], image, None, title=f"query: {name}\n(row {patches[name] // geo.grid_size}, "
                                                        f"col {patches[name] % geo.grid_size})")
        outline(axes[row, 0], patches[name], geo, image.shape[-1], "cyan")
        for block in range(blocks):
            draw_overlay(axes[row, block + 1], image, block_maps[block], title=f"block {block + 1}")
            outline(axes[row, block + 1], patches[name], geo, image.shape[-1], "cyan")
    return fig


def fused_query_maps(attentions: list[Tensor], geo: Geometry, image: int, patch: int) -> Tensor:
    """Heads-averaged attention row of one patch of one image, for every block: (blocks, g, g)."""
    token = geo.num_prefix_tokens + patch
    return torch.stack([fuse_heads(query_attention(a[image : image + 1], geo, token))[0] for a in attentions])


first_name, first = object_name, int(on_object[0])
if settings.patch is not None:
    first_name, first = "your patch", settings.patch[0] * geo.grid_size + settings.patch[1]
patches = {first_name: first, background_name: int(background[0])}
maps = {name: fused_query_maps(attentions, geo, 0, patch) for name, patch in patches.items()}
save(figure_by_block(inputs[0], maps, patches, geo,
                     f"{subject.name}: where one patch attends (heads averaged; cyan box = the query)"),
     settings.out, FIGURES[0])

# %% [markdown]
# ## Over many images
#
# Per block, the mean and the 25-75% band over the images: how far each kind of query looks, and how much of it is
# on the object; dashed, what uniform attention would give.


# %%
def figure_measures(distances: dict[str, Tensor], uniform: dict[str, float], on_object: dict[str, Tensor] | None,
                    object_share: float, title: str) -> Figure:
    """Per block, mean and 25-75% band over images: how far each kind of query looks; how much of it is on the
    object (when there are masks)."""
    panels = 1 if on_object is None else 2
    fig = Figure(figsize=(6.5 * panels, 4.2), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    measures = [(axes[0], distances, "distance to where it attends (pixels)", 1.0)]
    if on_object is not None:
        measures.append((axes[1], on_object, "attention on object patches (%)", 100.0))
    for ax, values_by_name, ylabel, scale in measures:
        for name, values in values_by_name.items():  # (blocks, B)
            blocks = torch.arange(1, values.shape[0] + 1).numpy()
            low, high = scale * values.quantile(0.25, dim=1), scale * values.quantile(0.75, dim=1)
            line, = ax.plot(blocks, scale * values.mean(dim=1).numpy(), "o-", label=f"{name} (mean, 25-75% band)")
            ax.fill_between(blocks, low.numpy(), high.numpy(), alpha=0.2, color=line.get_color())
            reference = uniform[name] if scale == 1.0 else 100 * object_share
            ax.axhline(reference, color=line.get_color(), linestyle="--", linewidth=1,
                       label=f"{name}: uniform attention")
        style_depth_axes(ax, ylabel)
    return fig


save(figure_measures(distances, uniform, share_on_object, object_share,
                     f"{subject.name}: where a patch looks, over {len(inputs)} images"), settings.out, FIGURES[1])

# %% [markdown]
# ## Questions
#
# 1. In the first block, does a patch look mostly at itself and its neighbours, or everywhere? Why might a network
#    that can look anywhere from the start still choose to look nearby?
# 2. Does the object patch read mostly from the garment? What does the background patch read from, and why could
#    that be useful for telling clothes apart? (Where the black is says a lot: between a trouser's legs, beside a
#    bag's handle, under a sandal's straps.)
# 3. Token i in block 2 is no longer "patch i": it already mixes what block 1 read. What does that mean for how
#    you should read the later maps?
# 4. Choose your own query with --patch ROW COL (lesson 1's figure numbers the patches: index = ROW * grid + COL).
#    Find a patch whose map surprises you and explain it. Put the query on a shoe's strap or heel: in block 1,
#    does it read the rest of the shoe or only its own neighbours?
