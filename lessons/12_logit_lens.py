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
# # Lesson 12: the logit lens, the prediction block by block
#
# A ViT decides only at the end: the class token after the last block goes through one LayerNorm and the head. The
# logit lens (nostalgebraist 2020 for language models; ViT-Prisma for vision) asks what that same readout would say
# if the network stopped earlier: apply the final LayerNorm and the head to the class token after every block.
# Where does the final answer appear, and how sure is each block of it? At the last block the lens is the model.
#
# Builds on: `vitlab/analysis/lens.py` (`logit_lens`), `vitlab/capture.py` (`capture_forward`),
# `vitlab/plotting.py` (`style_depth_axes`).
#
# Figures, in `lesson_outputs/12_logit_lens/`: `logit_lens.png` (per block: agreement with the final prediction,
# accuracy where the labels are the model's own, and the mean probability of the finally predicted class),
# `logit_lens_images.png` (a few images: that probability block by block).

# %%
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.lens import logit_lens
from vitlab.capture import capture_forward
from vitlab.plotting import style_depth_axes
from vitlab.teaching.lesson import assert_same, explain, save, start, study

FIGURES = ("logit_lens.png", "logit_lens_images.png")
SHOWN_IMAGES = 6
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/12_logit_lens.py [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`. In a notebook, put
# the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--arch", "vit_b_16"]`) and run the cells
# again. Without flags the lesson studies vitlab's small demo model, trained once and cached.

# %%
settings = start("12_logit_lens", FLAGS)
subject = study(settings)

# %% [markdown]
# ## The lens, written out
#
# Three lines: take each block's class token, normalise it with the final LayerNorm, read it with the head.


# %%
def lens_by_hand(model: VisionTransformer, hidden_states: list[Tensor]) -> Tensor:
    """Each block's class token -> final LayerNorm -> head: one (B, tokens, hidden) per block -> (blocks, B, C)."""
    class_tokens = [state[:, 0] for state in hidden_states]  # one (B, hidden) per block: token 0 is the class token
    return torch.stack([model.heads(model.encoder.ln(token)) for token in class_tokens])


# %% [markdown]
# vitlab's `logit_lens` must equal it, and at the last block both must be the model's own output.

# %%
shown = subject.examples.take(500 if subject.small else 8)
with torch.no_grad():
    logits, captured = capture_forward(subject.model, subject.inputs(shown.images))
    lens = lens_by_hand(subject.model, captured.hidden_states)  # (blocks, B, classes)
    assert_same(logit_lens(subject.model, captured.hidden_states), lens, vitlab="vitlab's logit_lens",
                lesson="lens_by_hand", rtol=1e-5, atol=1e-5)
assert_same(logits, lens[-1], vitlab="the model's own output", lesson="lens_by_hand at the last block",
            rtol=1e-4, atol=1e-5)
final = logits.argmax(dim=-1)  # (B,)
probabilities = lens.softmax(dim=-1)  # (blocks, B, classes)
final_probability = probabilities.gather(2, final[None, :, None].expand(len(lens), -1, 1))[..., 0]  # (blocks, B)
curves = {"agrees with the final prediction": (lens.argmax(dim=-1) == final).float().mean(dim=1),
          "mean probability of the final class": final_probability.mean(dim=1)}
if subject.labels_match:
    curves["accuracy"] = (lens.argmax(dim=-1) == shown.labels).float().mean(dim=1)
explain(f"""
    Model: {subject.name}, {len(shown)} test images, {len(lens)} blocks. Asserted: vitlab's logit_lens equals
    the lesson's three lines, and at the last block both equal the model's own logits.
""")
for block in range(len(lens)):
    print(f"  block {block + 1:2d}: " + ", ".join(f"{name} {values[block]:.1%}" for name, values in curves.items()))
first = next(block for block in range(len(lens)) if curves["agrees with the final prediction"][block] >= 0.9)
explain(f"""
    The lens first agrees with the final prediction on 90% of the images at block {first + 1}. Before that the
    head, which was only ever trained on the last block's class token, reads something else there.
""")


# %%
def figure_by_block(curves: dict[str, Tensor], title: str) -> Figure:
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for name, values in curves.items():
        ax.plot(torch.arange(1, len(values) + 1).numpy(), values.numpy(), "o-", label=name)
    style_depth_axes(ax, "share of images / probability", title=title, ylim=(0, 1.05))
    return fig


def figure_images(final_probability: Tensor, names: list[str], title: str) -> Figure:
    """(blocks, n) probability of each image's final class, one line per image."""
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for image, name in enumerate(names):
        ax.plot(torch.arange(1, len(final_probability) + 1).numpy(), final_probability[:, image].numpy(), "o-",
                label=f"image {image + 1}: {name}")
    style_depth_axes(ax, "probability of the final prediction", title=title, ylim=(0, 1.05))
    return fig


save(figure_by_block(curves, f"{subject.name}: the logit lens by block"), settings.out, FIGURES[0])
save(figure_images(final_probability[:, :SHOWN_IMAGES], subject.predicted_names(logits[:SHOWN_IMAGES]),
                   f"{subject.name}: {SHOWN_IMAGES} images"), settings.out, FIGURES[1])

# %% [markdown]
# ## Questions
#
# 1. The head was trained only on the last block's class token. Why may an early block's class token hold the
#    answer in a form the head cannot read (lesson 13's probes test exactly this)?
# 2. In the demo model the first blocks are the shipped base's frozen features (learned without labels, on fractals
#    and then on the photos) and only the last two were fine-tuned. Where would you expect the answer to appear,
#    and does the lens agree?
# 3. Ten kinds of clothing are not equally easy: a trouser or a bag has a silhouette of its own, a shirt shares its
#    outline with a T-shirt/top, a pullover and a coat. Which classes would you expect the lens to get right at an
#    earlier block, and how would you check?
# 4. The lens reuses the final LayerNorm on every block. Why does normalising matter here: what would the head
#    see from an early block's class token without it?
