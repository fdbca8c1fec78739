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
# # Lesson 6: attention across depth, how far each head looks
#
# A CNN's early layers can only see a few pixels; its receptive field grows with depth. A ViT head can attend
# anywhere from the first block on. Does it? The ViT paper's Figure 7 (right) answers with the mean attention
# distance, one dot per head and block. In ViT-B/16 some early heads are local (small distance, like a
# convolution) while others already look across the image, and late heads are nearly all global. This lesson
# measures it on your model and compares it with two references: uniform attention (every patch equally) and the
# same architecture at its random initialisation.
#
# Builds on: `vitlab/analysis/attention.py` (`mean_attention_distance`, `patch_distances`), `vitlab/capture.py`
# (`capture_forward`), `vitlab/plotting.py` (`plot_mean_distance`).
#
# Figures, in `lesson_outputs/06_attention_distance/`: `attention_distance.png` (one dot per head and block, as in
# the paper), `attention_distance_range.png` (per block: the most local head, the mean and the most global head,
# trained vs random initialisation).

# %%
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.attention import mean_attention_distance, patch_distances
from vitlab.capture import capture_forward, geometry
from vitlab.model import build_model
from vitlab.plotting import plot_mean_distance, style_depth_axes
from vitlab.shipped import SHIPPED_BASES, shipped_base_file
from vitlab.teaching.lesson import assert_same, explain, save, start, study

FIGURES = ("attention_distance.png", "attention_distance_range.png")
LOCAL_SHARE = 0.5  # a head is "local" when it looks less than half as far as uniform attention would
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/06_attention_distance.py [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`. In a
# notebook, put the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--arch", "vit_b_16"]`) and run
# the cells again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%
settings = start("06_attention_distance", FLAGS)
subject = study(settings)
model, geo = subject.model, geometry(subject.model)

# %% [markdown]
# ## Mean attention distance, written out
#
# For every query patch: the distance in pixels to every key patch, weighted by how much the query attends to it;
# averaged over queries and images. The class token is neither query nor key here, so each query's weights over
# the patches are renormalised to sum to 1.


# %%
def mean_distance_by_hand(attentions: list[Tensor], patch_size: int) -> Tensor:
    """The paper's mean attention distance: one (B, heads, T, T) per block -> (blocks, heads) in pixels."""
    patches = attentions[0].shape[-1] - 1  # the class token (token 0) is neither query nor key here
    grid = round(patches**0.5)
    rows, cols = torch.arange(patches) // grid, torch.arange(patches) % grid  # each patch's place, row-major
    centres = torch.stack([rows, cols], dim=-1).float() * patch_size  # (patches, 2), in pixels
    distance = (centres[:, None] - centres[None, :]).norm(dim=-1)  # (patches, patches) between patch centres
    per_block = []
    for attention in attentions:
        weights = attention[:, :, 1:, 1:]  # (B, heads, patches, patches): patch queries over patch keys
        weights = weights / weights.sum(dim=-1, keepdim=True)  # each query's weights sum to 1 again
        per_query = (weights * distance).sum(dim=-1)  # (B, heads, patches): how far each query looks
        per_block.append(per_query.mean(dim=(0, 2)))  # averaged over images and queries: (heads,)
    return torch.stack(per_block)  # (blocks, heads)


# %% [markdown]
# Measured in batches over a few hundred test images, for the trained model and for a random twin; on every batch
# vitlab's `mean_attention_distance` must equal the dozen lines above.


# %%
def distances_of(model: VisionTransformer, inputs: Tensor, batch_size: int) -> Tensor:
    """Mean attention distance (blocks, heads), averaged over `inputs` in batches; vitlab's checked on each."""
    total = torch.zeros(())
    for first in range(0, len(inputs), batch_size):
        batch = inputs[first : first + batch_size]
        with torch.no_grad():
            _, captured = capture_forward(model, batch)
        by_hand = mean_distance_by_hand(captured.attentions, model.patch_size)  # (blocks, heads)
        assert_same(mean_attention_distance(captured.attentions, model.patch_size), by_hand,
                    vitlab="vitlab's mean_attention_distance", lesson="mean_distance_by_hand")
        total = total + by_hand * len(batch)
    return total / len(inputs)


def random_twin(model: VisionTransformer) -> VisionTransformer:
    """The same architecture at a random initialisation (fixed seed), in eval mode."""
    torch.manual_seed(0)
    return VisionTransformer(image_size=model.image_size, patch_size=model.patch_size,
                             num_layers=len(model.encoder.layers), num_heads=model.encoder.layers[0].num_heads,
                             hidden_dim=model.hidden_dim, mlp_dim=model.mlp_dim).eval()


inputs = subject.inputs(subject.examples.take(256 if subject.small else 8).images)
batch_size = 128 if subject.small else 4
trained = distances_of(model, inputs, batch_size)  # (blocks, heads)
random = distances_of(random_twin(model), inputs, batch_size)
uniform = patch_distances(geo.grid_size, geo.patch_size).mean().item()
local = trained < LOCAL_SHARE * uniform  # (blocks, heads): heads that look much closer than uniform
explain(f"""
    Model: {subject.name}, {geo.grid_size}x{geo.grid_size} patches of {geo.patch_size} px, averaged over
    {len(inputs)} test images. Uniform attention would give {uniform:.1f} px; a head counts as local here
    when its distance is under {LOCAL_SHARE:.0%} of that ({LOCAL_SHARE * uniform:.1f} px). Asserted: the
    lesson's mean_distance_by_hand equals vitlab.analysis.attention.mean_attention_distance.
""")
print("\n".join(
    f"  block {b + 1:2d}: most local head {trained[b].min():6.1f} px, mean {trained[b].mean():6.1f} px, "
    f"most global {trained[b].max():6.1f} px, {int(local[b].sum())} local heads "
    f"(random init: mean {random[b].mean():5.1f} px)" for b in range(trained.shape[0])) + "\n")

# %% [markdown]
# ## Local heads, and where they come from
#
# The demo model's first 2 blocks are vitlab's shipped base, frozen: pretrained without labels by predicting
# hidden patches from their neighbours (`vitlab.training.pretrain`), first on generated fractals, then on the
# unlabelled clothing photos. Measuring the base itself on the same photos shows what fine-tuning the last 2
# blocks to name the clothes did to how far they look.

# %%
if local.any():
    explain(f"""
        {int(local.sum())} of {local.numel()} heads are local, {int(local[: len(local) // 2].sum())} of them in
        the first half of the blocks: early blocks mix local and global heads, like the paper's Figure 7.
    """)
else:
    explain(f"""
        No head of this model is local: every head, in every block, averages within
        {(trained - uniform).abs().max():.1f} px of uniform attention. Local heads are not built in; they are
        learned, in the paper from far more data and training than this model saw.
    """)
config = subject.run_config or {}
if subject.source == "demo" and config.get("pretrained") in SHIPPED_BASES:
    base = build_model(subject.arch, num_classes=len(subject.classes), trainable_blocks=0,
                       pretrained=shipped_base_file(name=config["pretrained"])).eval()
    before = distances_of(base, inputs, batch_size)  # (blocks, heads)
    frozen_note = " (frozen, so unchanged)" if config["trainable_blocks"] < len(trained) else ""
    explain(f"""
        The shipped {config['pretrained']} base the demo started from, on the same photos: the most local head of
        block 1 at {before[0].min() / uniform:.2f}x uniform, the last block's heads at
        {before[-1].mean() / uniform:.2f}x on average. After fine-tuning the last
        {config['trainable_blocks']} blocks to name the clothes: block 1's most local head at
        {trained[0].min() / uniform:.2f}x{frozen_note}, the last block at
        {trained[-1].mean() / uniform:.2f}x. Compare the random initialisation beside them: local heads are
        learned, not built in.
    """)


# %%
def figure_range(trained: Tensor, random: Tensor, uniform: float, title: str) -> Figure:
    """Per block: min, mean and max over heads, for the trained and the random model."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    blocks = torch.arange(1, trained.shape[0] + 1).numpy()
    for values, label in ((trained, "trained"), (random, "random initialisation")):
        line, = ax.plot(blocks, values.mean(dim=1).numpy(), "o-", label=f"{label}: mean over heads")
        ax.fill_between(blocks, values.amin(dim=1).numpy(), values.amax(dim=1).numpy(), color=line.get_color(),
                        alpha=0.2, label=f"{label}: most local to most global head")
    ax.axhline(uniform, color="grey", linestyle="--", label="uniform attention")
    style_depth_axes(ax, "mean attention distance (pixels)", title=title,
                     ylim=(0, 1.15 * max(uniform, trained.max().item(), random.max().item())))
    return fig


fig = plot_mean_distance(trained, geo.patch_size)
ax = fig.axes[0]
ax.axhline(uniform, color="grey", linestyle="--", linewidth=1, label="uniform")
ax.set_ylim(0, 1.15 * max(uniform, trained.max().item()))  # from 0, as the paper: small differences look small
ax.set_title(f"{subject.name}: how far each head looks")
ax.legend(fontsize=7, ncol=2, loc="lower right")
save(fig, settings.out, FIGURES[0])
save(figure_range(trained, random, uniform, f"{subject.name}: local and global heads by depth"), settings.out,
     FIGURES[1])

# %% [markdown]
# ## Questions
#
# 1. Uniform attention over ViT-B/16's 14x14 grid gives about 116 px, over the demo's 8x8 grid about 16.5 px. Why
#    is the maximum possible value not the image's diagonal?
# 2. The demo's base learned its local heads by filling in hidden patches, of fractals and then of clothing photos.
#    Why would that task need heads that look nearby, and why would classifying an image not (vitlab tried both:
#    BENCHMARKS.md)?
# 3. A randomly initialised model's heads sit near the uniform value. Why does random attention look "global"?
# 4. The paper reports that ViT models pre-trained on more data have more local heads in early blocks. Why might a
#    model learn to imitate a convolution when nobody built one in?
