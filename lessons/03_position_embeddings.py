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
# # Lesson 3: position embeddings, and what the class token is
#
# Attention treats its input as a set: shuffle the patches and every token would get the same output, shuffled.
# So before the first block the ViT adds a learned vector to each token that says where it is, the position
# embedding. Nobody tells the model that the patches form a grid; it learns that from data. The class token is one
# more learned vector, put in front of the patches: it enters the encoder identical for every image, gathers
# information from the patches through attention, and its output alone feeds the classifier.
#
# Builds on: `vitlab/analysis/structure.py` (`position_embedding_similarity`, `position_embedding_spearman`),
# `vitlab/analysis/attention.py` (`patch_distances`), `vitlab/capture.py` (`capture_forward`: hidden states),
# `vitlab/plotting.py` (`plot_position_similarity`).
#
# Figures, in `lesson_outputs/03_position_embeddings/`: `position_similarity.png` (grid of grids),
# `similarity_vs_distance.png` (similarity against distance between positions; the class token across images,
# block by block).

# %%
import torch
import torch.nn.functional as F
from einops import rearrange
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.attention import patch_distances
from vitlab.analysis.structure import position_embedding_similarity, position_embedding_spearman
from vitlab.capture import capture_forward, geometry
from vitlab.plotting import plot_position_similarity
from vitlab.shipped import SHIPPED_BASES, shipped_card
from vitlab.teaching.lesson import assert_same, explain, save, start, study

FIGURES = ("position_similarity.png", "similarity_vs_distance.png")
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/03_position_embeddings.py [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`. In a
# notebook, put the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--arch", "vit_b_16"]`) and run
# the cells again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%
settings = start("03_position_embeddings", FLAGS)
subject = study(settings)
model, geo = subject.model, geometry(subject.model)

# %% [markdown]
# ## How similar is each position to the others?
#
# The ViT paper's Figure 7 (centre): the cosine similarity of each position's embedding with all others, one small
# map per position. Five lines: drop the class token's row, scale every embedding to length 1, and one matrix
# product gives every cosine.


# %%
def position_similarity_by_hand(model: VisionTransformer) -> Tensor:
    """Fig. 7 centre, written out: the cosine similarity of every patch position's embedding with every other.

    Returns (grid, grid, grid, grid): entry [r, c] is position (r, c)'s similarity map with all positions.
    """
    embeddings = model.encoder.pos_embedding[0, 1:].detach()  # (1, T, hidden) -> (patches, hidden), no class token
    unit = embeddings / embeddings.norm(dim=-1, keepdim=True)  # length 1: a dot product is now a cosine
    similarity = unit @ unit.T  # (patches, patches)
    grid = geometry(model).grid_size
    return rearrange(similarity, "(r c) (gr gc) -> r c gr gc", r=grid, gr=grid)


# %%
similarity = position_similarity_by_hand(model)  # (grid, grid, grid, grid)
assert_same(position_embedding_similarity(model), similarity, vitlab="vitlab's position_embedding_similarity",
            lesson="position_similarity_by_hand")

# %% [markdown]
# Drawn as the paper draws it: one small map per position, in its place on the grid.

# %%
fig = plot_position_similarity(similarity)
fig.colorbar(fig.axes[0].images[0], ax=fig.axes, shrink=0.5, label="cosine similarity")  # all maps: -1 to 1
save(fig, settings.out, FIGURES[0])

# %% [markdown]
# ## Nearby means similar?
#
# Average the similarity over all pairs of positions at the same distance, separately for pairs in the same row or
# column and for the others; and, for the class token, measure how alike it is across images at the encoder's
# input and after every block.


# %%
def similarity_by_distance(similarity: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Mean similarity at each distance (in patches), for pairs in the same row or column and for the others.

    similarity: (grid, grid, grid, grid). Returns {"same row or column": (distances, means), "other pairs": ...},
    self-pairs left out.
    """
    grid = similarity.shape[0]
    flat = similarity.reshape(grid * grid, grid * grid)  # (patches, patches), row-major positions
    distances = patch_distances(grid, patch_size=1).round(decimals=3)  # (patches, patches) in patch units
    rows = torch.arange(grid * grid) // grid
    cols = torch.arange(grid * grid) % grid
    aligned = (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])  # (patches, patches)
    result = {}
    for name, pairs in (("same row or column", aligned), ("other pairs", ~aligned)):
        values = sorted(set(distances[pairs].tolist()) - {0.0})
        means = torch.stack([flat[pairs & (distances == d)].mean() for d in values])
        result[name] = (torch.tensor(values), means)
    return result


def class_token_agreement(hidden_states: list[Tensor], class_token: Tensor) -> Tensor:
    """Mean cosine similarity between the class tokens of different images: at the input, then after each block.

    hidden_states: one (B, tokens, hidden) per block. Returns (blocks + 1,).
    """
    batch = hidden_states[0].shape[0]
    tokens = [class_token.expand(batch, -1)] + [h[:, 0] for h in hidden_states]  # each (B, hidden)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool)
    result = []
    for token in tokens:
        unit = F.normalize(token, dim=-1)
        result.append((unit @ unit.T)[off_diagonal].mean())  # (B, B) -> mean over pairs of different images
    return torch.stack(result)


by_distance = similarity_by_distance(similarity)
aligned_distance, aligned_mean = by_distance["same row or column"]
_, other_mean = by_distance["other pairs"]
shown = subject.pick(16 if subject.small else 4)
with torch.no_grad():
    _, captured = capture_forward(model, subject.inputs(shown.images))
    # What the class token is at the encoder input: the learned vector plus its own position embedding.
    class_token_in = (model.class_token + model.encoder.pos_embedding[:, :1])[0]  # (1, hidden)
    agreement = class_token_agreement(captured.hidden_states, class_token_in)
spearman = position_embedding_spearman(model)
fractal_spearman = shipped_card(name="fractal")["metrics"]["position_spearman"]
config = subject.run_config or {}
base_note = f"vitlab's shipped fractal base reached {fractal_spearman:.2f} on generated fractals, its card says"
if subject.source == "demo" and config.get("pretrained") in SHIPPED_BASES and config["pretrained"] != "fractal":
    base_note += (f"; the demo's {config['pretrained']} base went on from it, filling in hidden patches of unlabelled "
                  "photos, and the demo fine-tunes that base with these embeddings frozen")
explain(f"""
    Model: {subject.name}. encoder.pos_embedding has shape {tuple(model.encoder.pos_embedding.shape)}: one
    learned vector for the class token and one for each of the {geo.num_patches} patch positions.

    Position embeddings, mean cosine similarity: neighbours (distance 1) {aligned_mean[0]:.2f}; other
    positions in the same row or column {aligned_mean[1:].mean():.2f}; positions sharing neither
    {other_mean.mean():.2f}. Random vectors would give about 0 everywhere. One number for "nearby means
    similar": the Spearman correlation between two positions' similarity and their distance on the grid is
    {spearman:.2f} (-1: always more similar when closer; a random initialisation: about 0; {base_note}).
    Whatever structure you see, the model learned from data: nothing told it the patches form a grid.
    Asserted: the lesson's position_similarity_by_hand equals
    vitlab.analysis.structure.position_embedding_similarity.

    The class token (model.class_token, shape {tuple(model.class_token.shape)}) is the same learned vector
    for every image: across {shown.images.shape[0]} images its cosine similarity at the encoder input is
    {agreement[0]:.2f}, after block 1 it is {agreement[1]:.2f} and after the last block {agreement[-1]:.2f}.
    Attention filled it with what it read from the patches; the classifier looks only at it.
""")


# %%
def figure_distance_and_class_token(by_distance: dict[str, tuple[Tensor, Tensor]], agreement: Tensor,
                                    title: str, count: int) -> Figure:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    fig.suptitle(title)
    ax_distance, ax_class = fig.subplots(1, 2)
    for name, (distance, mean) in by_distance.items():
        ax_distance.plot(distance.numpy(), mean.numpy(), "o-", markersize=4, label=name)
    ax_distance.axhline(0, color="grey", linewidth=0.8)
    ax_distance.set(xlabel="distance between the two positions (patches)",
                    ylabel="mean cosine similarity of position embeddings",
                    title="Position embeddings: similarity against distance")
    ax_distance.grid(True, alpha=0.3)
    ax_distance.legend()
    ax_class.plot(range(len(agreement)), agreement.numpy(), "o-")
    ax_class.set(xlabel="block (0 = encoder input)", ylabel="mean cosine similarity between images",
                 title=f"The class token of {count} images, block by block",
                 ylim=(min(0.0, agreement.min().item()) - 0.05, 1.05))
    ax_class.xaxis.get_major_locator().set_params(integer=True)
    ax_class.grid(True, alpha=0.3)
    return fig


save(figure_distance_and_class_token(by_distance, agreement, subject.name, shown.images.shape[0]), settings.out,
     FIGURES[1])

# %% [markdown]
# ## Questions
#
# 1. Neighbouring positions end up with similar embeddings, yet the model was never told that patches form a grid.
#    What in the training data could have taught it? The demo's base learned them on fractals, then on photos whose
#    garments always sit centred: compare the printed Spearman with the fractal base's. Did the photos sharpen the
#    grid or blur it?
# 2. The paper's ViT-B/16 shows row and column stripes in the similarity maps. Look for them in your figure: what
#    would they let the model do that a blob around each position would not?
# 3. The class token enters identical for all images and leaves different. Through which operation does
#    information reach it, and why can it not be the MLP?
# 4. Fine-tuning ViT-B/16 at 384x384 gives a 24x24 grid, but it learned 14x14 position embeddings. What could you
#    do with them? (torchvision interpolates: which interpolation keeps the pattern you see here?)
