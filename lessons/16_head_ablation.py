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
# # Lesson 16: head ablation, which heads the prediction needs
#
# Attention maps show where a head looks, not whether the model needs it. Michel et al. (2019, "Are Sixteen Heads
# Really Better than One?") switched heads off one at a time and found that most can go with little loss. A head
# writes its own slice of the vector that the block's `out_proj` reads; ablating it sets that slice to zero. This
# lesson ablates every head of every block alone and measures the accuracy lost, then a whole block's attention.
#
# Builds on: `vitlab/analysis/ablation.py` (`ablate_heads`, `ablation_table`, `probability_change`),
# `vitlab/capture_grad.py` (`attention_probs`).
#
# Figure, in `lesson_outputs/16_head_ablation/`: `head_ablation.png` (blocks x heads: accuracy lost when that head
# alone is switched off).

# %%
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.ablation import ablate_heads, ablation_table, probability_change
from vitlab.capture_grad import attention_probs
from vitlab.teaching.lesson import assert_same, explain, save, start, study

FIGURES = ("head_ablation.png",)
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/16_head_ablation.py [--arch vit_b_16 | --checkpoint PATH] [--out DIR]`. In a notebook,
# put the same flags in `FLAGS`, in the first code cell (for example `FLAGS = ["--checkpoint", "runs/demo"]`) and run
# the cells again. Without flags the lesson studies vitlab's small demo model, trained once and cached. (ViT-B/16 takes
# 144 ablations, each a forward pass: minutes on a CPU.)

# %%
settings = start("16_head_ablation", FLAGS)
subject = study(settings)
model = subject.model

# %% [markdown]
# ## One ablated head, written out
#
# A hook replaces one block's attention output: recompute it from the attention probabilities and the values,
# zero the ablated head's slice, and let `out_proj` read the rest.


# %%
def without_head(model: VisionTransformer, images: Tensor, block: int, head: int) -> Tensor:
    """The model's logits (B, classes) with one head's output slice zeroed."""
    attention = model.encoder.layers[block].self_attention

    def recompute(module, args, output):
        probs, values = attention_probs(module, args[0])  # (B, heads, T, T), (B, heads, T, head_dim)
        per_head = probs @ values  # (B, heads, T, head_dim): what each head writes
        per_head[:, head] = 0.0  # the ablated head writes nothing
        concat = per_head.transpose(1, 2).flatten(2)  # (B, T, heads * head_dim), what out_proj reads
        return module.out_proj(concat), None

    handle = attention.register_forward_hook(recompute)
    try:
        return model(images)
    finally:
        handle.remove()


# %% [markdown]
# vitlab's `ablate_heads` must give the same logits, for the first head of the last block.

# %%
shown = subject.examples.take(500 if subject.small else 3)  # ViT-B/16: 144 ablations, each a forward pass
images = subject.inputs(shown.images)
last = len(model.encoder.layers) - 1
with torch.no_grad():
    with ablate_heads(model, {last: [0]}):
        theirs = model(images)
    assert_same(theirs, without_head(model, images, last, 0), vitlab=f"vitlab's ablate_heads (block {last + 1}, "
                "head 0)", lesson="without_head", rtol=1e-4, atol=1e-5)

# %% [markdown]
# ## Every head, one at a time; every block's attention at once
#
# With labels that index the model's classes, the accuracy lost; otherwise the agreement with the unablated model.

# %%
with torch.no_grad():
    labels = shown.labels if subject.labels_match else model(images).argmax(-1)  # else: agreement with itself
    table = ablation_table(model, images, labels)
    whole_block = {block: probability_change(model, images, {block: range(table.drop.shape[1])}).mean().item()
                   for block in range(table.drop.shape[0])}
measure = "accuracy" if subject.labels_match else "agreement with the unablated model"
block, head = divmod(int(table.drop.argmax()), table.drop.shape[1])
explain(f"""
    Model: {subject.name}, {len(shown)} test images; {measure} with every head: {table.accuracy:.1%}. Asserted:
    vitlab's ablate_heads equals the lesson's without_head. The most needed head: block {block + 1}, head
    {head}, whose removal costs {table.drop[block, head]:.1%}; {int((table.drop <= 0.01).sum())} of
    {table.drop.numel()} heads cost at most one point.
""")
for index, change in whole_block.items():
    print(f"  block {index + 1:2d}: every head off changes the predicted class's probability by {change:+.1%}")


# %%
def figure_table(drop: Tensor, title: str) -> Figure:
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(100 * drop.numpy(), cmap="Reds", vmin=min(0.0, 100 * drop.min().item()))
    for block in range(drop.shape[0]):
        for head in range(drop.shape[1]):
            ax.text(head, block, f"{100 * drop[block, head]:.1f}", ha="center", va="center", fontsize=9)
    ax.set(xlabel="head", ylabel="block", title=title, xticks=range(drop.shape[1]), yticks=range(drop.shape[0]),
           yticklabels=[str(b + 1) for b in range(drop.shape[0])])
    fig.colorbar(image, ax=ax, label="accuracy lost (points)")
    return fig


save(figure_table(table.drop, f"{subject.name}: {measure} lost per head"), settings.out, FIGURES[0])

# %% [markdown]
# ## Questions
#
# 1. The demo's first two blocks are the shipped base's frozen features. Would you expect their heads to matter less
#    or more than the fine-tuned blocks' heads? What does the table say?
# 2. Which classes lose the most when the most needed head is switched off: the ones with a silhouette of their own
#    (trouser, bag) or the ones that differ in details (shirt, T-shirt/top, coat)? How would you measure it?
# 3. Removing one head costs little, yet removing a whole block's attention may cost a lot. Why can the other heads
#    stand in for one, but not for all?
# 4. A head with a small accuracy drop may still change the probabilities. Why is the accuracy a coarse measure?
