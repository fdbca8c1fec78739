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
# # Lesson 9: what fine-tuning changed, attention before and after
#
# Lesson 8 froze all but the last blocks and trained. What does that do to attention? The lesson fine-tunes the
# studied model itself, in seconds, on a new task: "is the image bright or dark?", that is, is its mean pixel value
# above the median of the training images'. The old task needed the garment's outline and details, the new one
# only its overall brightness (a large pale coat against a small dark sandal). A fresh 2-class head and the last
# 2 blocks train; everything else is frozen. Then it runs the model before and after on the same images and
# compares every block's attention. For the demo model it then makes the same comparison for the fine-tune that
# made it: the shipped base it started from against the demo model, whose last 2 blocks were fine-tuned to name
# the clothes.
#
# Builds on: `vitlab/model.py` (`freeze_all_but_last`, `count_parameters`), `vitlab/training/train.py`
# (`make_optimizer`, `train_step`, `RECIPES`), `vitlab/capture.py` (`capture_forward`),
# `vitlab/analysis/attention.py` (`cls_attention`).
#
# Figures, in `lesson_outputs/09_what_finetuning_changed/`: `attention_change_per_block.png` (mean absolute change
# of the attention probabilities, per block), `before_after.png` (the last block's class-token attention before and
# after, on the same images), and for the demo model `base_vs_demo.png`: the same change between vitlab's shipped
# pretrained base and the demo fine-tuned from it.

# %%
import argparse
import copy

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from vitlab.analysis.attention import cls_attention
from vitlab.analysis.structure import distance_ratios
from vitlab.capture import capture_forward, geometry
from vitlab.cli import Rule, number_flag
from vitlab.errors import VitlabError
from vitlab.model import build_model, count_parameters, freeze_all_but_last
from vitlab.plotting import draw_overlay
from vitlab.shipped import SHIPPED_BASES, shipped_base_file
from vitlab.teaching.lesson import LARGEST_BLOCKS, Subject, explain, save, start, study
from vitlab.training.train import RECIPES, make_criterion, make_optimizer, train_step

FIGURES = ("attention_change_per_block.png", "before_after.png", "base_vs_demo.png")
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings and the model
#
# As a script: `python lessons/09_what_finetuning_changed.py [--trainable-blocks N] [--arch vit_b_16 | --checkpoint
# PATH] [--out DIR]`. In a notebook, put the same flags in `FLAGS`, in the first code cell (for example `FLAGS =
# ["--trainable-blocks", "1"]`) and run the cells again. Without flags the lesson studies vitlab's small demo model,
# trained once and cached.

# %%


def own_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trainable-blocks", default=2, metavar="N", help="how many last blocks train (default: 2)",
                        type=number_flag("trainable_blocks", Rule(1, LARGEST_BLOCKS - 1, "--trainable-blocks 2")))


settings = start("09_what_finetuning_changed", FLAGS, own_flags)
subject = study(settings)
geo = geometry(subject.model)
num_blocks = len(subject.model.encoder.layers)
if not 1 <= settings.trainable_blocks < num_blocks:
    raise VitlabError(f"--trainable-blocks {settings.trainable_blocks}: choose 1 to {num_blocks - 1}, so that at "
                      f"least one block stays frozen and one trains.")
frozen = num_blocks - settings.trainable_blocks

# %% [markdown]
# ## A new task, trained in seconds
#
# Labels from the pixels themselves: bright when the image's mean pixel value exceeds the median over the training
# images (so the two answers are about equally common). A copy of the model gets a fresh
# 2-class head, everything but its last blocks is frozen, and the notebook's recipe (Adam, learning rate 1e-3 for
# every trainable parameter) trains it.

# %%
TASK = ("dark", "bright")  # the new task's classes


def brightness(images: Tensor) -> Tensor:
    """Each uint8 image's mean pixel value over channels and pixels: (B, 3, H, W) -> (B,)."""
    return images.float().mean(dim=(1, 2, 3))


def bright_or_dark(images: Tensor, cut: float) -> Tensor:
    """The new task's labels from uint8 images (B, 3, H, W): 1 (bright) when the mean pixel value exceeds `cut`."""
    return (brightness(images) > cut).long()  # (B,)


def fine_tune(subject: Subject, trainable_blocks: int, images: Tensor, labels: Tensor, batch_size: int,
              epochs: int) -> VisionTransformer:
    """A copy of the model with a fresh 2-class head, trained on the bright-or-dark task; the original is
    untouched. images: uint8 (N, 3, H, W), labels (N,)."""
    model = copy.deepcopy(subject.model)
    torch.manual_seed(0)
    model.heads.head = nn.Linear(model.hidden_dim, len(TASK))
    freeze_all_but_last(model, trainable_blocks)
    recipe = RECIPES["notebook"]  # the notebook's recipe: Adam, lr 1e-3 for every trainable parameter
    optimizer = make_optimizer(model, recipe, recipe.lr, pretrained=False)
    criterion = make_criterion(recipe)
    model.train()
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        shuffled = torch.randperm(len(images), generator=order)
        for first in range(0, len(images), batch_size):
            index = shuffled[first : first + batch_size]
            train_step(model, images[index], labels[index], subject.transform, optimizer, criterion)
    return model.eval()


def accuracy(model: VisionTransformer, subject: Subject, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        predicted = model(subject.inputs(images)).argmax(dim=-1)
    return (predicted == labels).float().mean().item()


train_images = subject.splits.train.images[: 2048 if subject.small else 64]
cut = brightness(train_images).median().item()  # half the training images are brighter
steps_batch, epochs = (64, 2) if subject.small else (16, 1)
tuned = fine_tune(subject, settings.trainable_blocks, train_images, bright_or_dark(train_images, cut), steps_batch,
                  epochs)
trainable, total = count_parameters(tuned)
test_images = subject.examples.images[: 500 if subject.small else 16]
test_labels = bright_or_dark(test_images, cut)
share_bright = test_labels.float().mean().item()

# %% [markdown]
# ## Frozen blocks must not change at all
#
# A frozen block computes with the same weights on the same input, so its attention is bit-for-bit identical:
# `torch.equal`, not "very close". The first trainable block sees the same input with new weights; the blocks
# after it see new inputs too.


# %%
def check_frozen_blocks_identical(before: list[Tensor], after: list[Tensor], frozen: int) -> None:
    """Assert: the attention of every frozen block is bit-for-bit the same; the last block's is not."""
    for block in range(frozen):
        if not torch.equal(before[block], after[block]):
            largest = (before[block] - after[block]).abs().max().item()
            raise AssertionError(
                f"Block {block + 1} was frozen, yet its attention changed (largest difference {largest:.3g}). "
                f"Frozen weights on identical inputs must give identical attention: something before it trained, "
                f"or the two forward passes did not run the same way (eval mode, no dropout).")
    if torch.equal(before[-1], after[-1]):
        raise AssertionError("The last block trained, yet its attention is unchanged: the fine-tune did nothing.")


inputs = subject.inputs(subject.examples.take(64 if subject.small else 8).images)
with torch.no_grad():
    _, before = capture_forward(subject.model, inputs)
    _, after = capture_forward(tuned, inputs)
check_frozen_blocks_identical(before.attentions, after.attentions, frozen)
change = torch.stack([(a - b).abs().mean() for a, b in zip(after.attentions, before.attentions, strict=True)])
explain(f"""
    Model: {subject.name}. New task: is the image bright (mean pixel value above {cut:.1f} of 255, the training
    images' median) or dark? A fresh 2-class head
    and the last {settings.trainable_blocks} of {num_blocks} blocks trained ({trainable:,} of {total:,}
    parameters), on {len(train_images)} training images for {epochs} epoch(s). Test accuracy on
    {len(test_images)} images: {100 * accuracy(tuned, subject, test_images, test_labels):.1f}% (always guessing the more
    common answer: {100 * max(share_bright, 1 - share_bright):.1f}%).

    Attention on the same {len(inputs)} images, before vs after. Asserted: blocks 1 to {frozen} (frozen)
    are identical, every probability of every head (torch.equal). Mean absolute change per block:
""")
average_weight = 1 / geo.num_tokens  # each row of attention sums to 1 over the tokens
print("\n".join(f"  block {b + 1}: {change[b]:.2e}" + ("  (frozen: identical)" if b < frozen else
                                                      f"  ({change[b] / average_weight:.0%} of an average "
                                                      f"attention weight, 1/{geo.num_tokens})")
                for b in range(num_blocks)) + "\n")


# %%
def figure_change(change: Tensor, frozen: int, title: str) -> Figure:
    """Bar per block: mean |attention after - before|; frozen blocks labelled as identical."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    blocks = list(range(1, len(change) + 1))
    colours = ["tab:blue" if b <= frozen else "tab:orange" for b in blocks]
    ax.bar(blocks, change.numpy(), color=colours)
    for b in blocks:
        text = "identical" if b <= frozen else f"{change[b - 1]:.1e}"
        ax.text(b, change[b - 1].item(), f" {text}", ha="center", va="bottom", fontsize=8, rotation=90)
    ax.set(xlabel="encoder block (blue: frozen, identical by torch.equal; orange: fine-tuned)",
           ylabel="mean |attention after - before|", title=title, xticks=blocks,
           ylim=(0, 1.4 * change.max().item()))
    ax.grid(True, axis="y", alpha=0.3)
    return fig


save(figure_change(change, frozen, f"{subject.name}:\nattention change from fine-tuning the last "
                                   f"{settings.trainable_blocks} blocks"), settings.out, FIGURES[0])

# %% [markdown]
# ## Where the class token reads, before and after
#
# The last block's class-token attention (heads averaged) on a few images, with the fine-tuned model's answer.


# %%
def figure_before_after(images: Tensor, before: Tensor, after: Tensor, titles: list[str], title: str) -> Figure:
    """Row 1 before, row 2 after: (B, g, g) maps over the same images."""
    count = images.shape[0]
    fig = Figure(figsize=(2.3 * count, 5.2), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(2, count, squeeze=False)
    for column in range(count):
        draw_overlay(axes[0, column], images[column], before[column], title="before")
        draw_overlay(axes[1, column], images[column], after[column], title=f"after\n{titles[column]}")
    return fig


shown = subject.pick(6 if subject.small else 4)
shown_inputs = subject.inputs(shown.images)
with torch.no_grad():
    _, shown_before = capture_forward(subject.model, shown_inputs)
    logits, shown_after = capture_forward(tuned, shown_inputs)
maps_before = cls_attention(shown_before.attentions[-1], geo).mean(dim=1)  # (B, g, g), heads averaged
maps_after = cls_attention(shown_after.attentions[-1], geo).mean(dim=1)
titles = [f"truth: {TASK[int(t)]}, predicted: {TASK[int(p)]}"
          for t, p in zip(bright_or_dark(shown.images, cut), logits.argmax(dim=-1), strict=True)]
save(figure_before_after(shown_inputs, maps_before, maps_after, titles,
                         f"{subject.name}: class-token attention in block {num_blocks} (heads averaged),\n"
                         f"before and after fine-tuning for 'bright or dark?'"), settings.out, FIGURES[1])

# %% [markdown]
# ## The demo model is itself a fine-tune
#
# vitlab's shipped base (pretrained without labels on generated fractals, then on the unlabelled photos), with its
# last blocks and a new head trained to name the clothes: the same comparison, base against demo, and the same
# check on its frozen blocks.

# %%
config = subject.run_config or {}
if subject.source == "demo" and config.get("pretrained") in SHIPPED_BASES:
    base = build_model(config["arch"], num_classes=len(subject.classes), trainable_blocks=0,
                       pretrained=shipped_base_file(name=config["pretrained"])).eval()
    base_frozen = num_blocks - config["trainable_blocks"]
    with torch.no_grad():
        _, before = capture_forward(base, inputs)
        _, after = capture_forward(subject.model, inputs)
    check_frozen_blocks_identical(before.attentions, after.attentions, base_frozen)
    change = torch.stack([(a - b).abs().mean() for a, b in zip(after.attentions, before.attentions, strict=True)])
    ratios = [distance_ratios(model, inputs).mean(dim=1) for model in (base, subject.model)]  # (blocks,) each
    explain(f"""
        Base against demo, on the same {len(inputs)} images; the demo's last {config['trainable_blocks']} blocks
        were trained. Asserted: blocks 1 to {base_frozen} are identical.
    """)
    print("\n".join(f"  block {b + 1}: change {change[b]:.2e}, mean attention distance {ratios[0][b]:.2f}x "
                    f"uniform in the base, {ratios[1][b]:.2f}x after fine-tuning" for b in range(len(change))) + "\n")
    save(figure_change(change, base_frozen, f"{subject.name}: attention change from the shipped base"),
         settings.out, FIGURES[2])

# %% [markdown]
# ## Questions
#
# 1. Why is "identical" the right expectation for frozen blocks, and not merely "very close"? What could make it
#    fail in practice (think of dropout, training mode, or fine-tuning the embeddings)?
# 2. The first trainable block and the one after it both change. Which of their changes comes from new weights and
#    which from new inputs? How could you separate the two?
# 3. The old task needed the garment's outline and details, the new one the brightness of the whole image. Look at
#    before_after.png: did the class token start reading different patches, and would you have predicted which?
# 4. Fine-tuning only the last blocks keeps every earlier map unchanged. Is that an argument for or against
#    reading a fine-tuned model's early-block attention as an explanation of its new task?
