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
# # Lesson 8: fine-tuning, what is frozen and what trains
#
# The notebook this course grew from fine-tunes ImageNet ViT-B/16 on CIFAR-100: it swaps the 1000-class head for a
# fresh 100-class one, freezes everything, then unfreezes the last 3 encoder blocks and the head. That trains
# 21,340,516 of 85,875,556 parameters (24.85%). This lesson counts them piece by piece (and checks the totals),
# then runs a real, short fine-tune through vitlab's fine-tuning job on a model small enough for a laptop: the
# demo model's trained body with a fresh head, only its last block and head training, on 256 images for 4 epochs.
#
# Training ViT-B/16 on a CPU runs at a few images per second, so the default mode never does. With `--arch
# vit_b_16` (ImageNet weights, and CIFAR-100 under `--data-dir`) the lesson fine-tunes it for one epoch on 64
# CIFAR-100 images; with `--checkpoint PATH` it fine-tunes that run's model on its own dataset.
#
# Builds on: `vitlab/model.py` (`build_model`, `count_parameters`), `vitlab/training/finetune.py` (`main`, the
# training job), `vitlab/training/checkpoint.py`, `vitlab/plotting.py` (`plot_curves`).
#
# Figures, in `lesson_outputs/08_finetuning/`: `parameters.png` (ViT-B/16's parameters by part, trainable vs
# frozen), `curves.png` (loss and accuracy of the short fine-tune). The run folder itself (config, history,
# checkpoints) is kept in `OUT/finetune_run`.

# %%
import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import nn

from vitlab.data import load_dataset
from vitlab.errors import DataUnavailableError, VitlabError
from vitlab.model import build_model, count_parameters
from vitlab.plotting import plot_curves
from vitlab.teaching.flags import GENERATED_DATASETS, refuse_data_dir_for, studies_small_model
from vitlab.teaching.lesson import assert_same, demo_run, explain, save, start
from vitlab.training import finetune
from vitlab.training.checkpoint import load_checkpoint
from vitlab.training.imported import is_external

FIGURES = ("parameters.png", "curves.png")
FLAGS: list[str] = []  # in a notebook, the command line: for example ["--arch", "vit_b_16"] (see Settings)

# %% [markdown]
# ## Settings, and what will be fine-tuned
#
# As a script: `python lessons/08_finetuning.py [--arch vit_b_16 | --checkpoint PATH] [--data-dir DIR] [--out DIR]`. In
# a notebook, put the same flags in `FLAGS`, in the first code cell and run the cells again. The plan is checked here,
# before any work: an ImageNet `--arch` needs CIFAR-100 on disk (lessons never download it).

# %%
# A few seconds on a laptop CPU: last block + fresh head of the demo model, 256 images, 4 epochs (8 steps each).
SMALL_RUN = ["--trainable-blocks", "1", "--subset", "256", "--epochs", "4", "--batch-size", "32", "--lr", "1e-3",
             "--max-rotation", "0"]
# About a minute per epoch on a CPU: an ImageNet ViT as in the notebook (last 3 blocks + head), on 64 images.
LARGE_RUN = ["--trainable-blocks", "3", "--subset", "64", "--epochs", "1", "--batch-size", "16"]


@dataclass
class Plan:
    """What the short fine-tune trains, on what: checked before anything is written."""

    arch: str
    dataset: str
    data_dir: str | None
    weights: dict[str, torch.Tensor] | None  # the body to start from (its head is replaced); None: ImageNet's
    description: str
    imported: str | None = None  # a timm or Hugging Face checkpoint, fine-tuned through --pretrained instead


def dataset_on_disk(name: str, data_dir: str) -> bool:
    """Whether `load_dataset(name, data_dir)` works without downloading anything."""
    try:
        load_dataset(name, data_dir, download=False, progress=False)
    except DataUnavailableError:
        return False
    return True


def plan_finetune(settings: argparse.Namespace) -> Plan:
    """The model and data of the fine-tune the flags ask for; a VitlabError for a plan that cannot run here."""
    if settings.checkpoint is not None and is_external(settings.checkpoint):
        return Plan("imported", "shapes", None, None, f"{settings.checkpoint} (imported) with a fresh head, on 256 "
                    f"shapes images", imported=settings.checkpoint)
    if settings.checkpoint is not None:
        checkpoint = load_checkpoint(settings.checkpoint, purpose="study")
        config = checkpoint["config"]
        if config["arch"] == "imported":
            raise VitlabError(f"{settings.checkpoint} is a run of an imported model, which this lesson fine-tunes "
                              f"from its source: pass --checkpoint {config['pretrained']} (the timm or Hugging Face "
                              f"checkpoint the run started from).")
        refuse_data_dir_for(settings, config["dataset"], f"{config['arch']} from {settings.checkpoint}")
        generated = config["dataset"] in GENERATED_DATASETS  # made in memory or shipped: no data folder
        data_dir = None if generated else settings.data_dir or config["data_dir"]
        if not generated and not dataset_on_disk(config["dataset"], data_dir):
            raise VitlabError(f"{settings.checkpoint} was trained on {config['dataset']}, which is not under "
                              f"{data_dir}. Pass --data-dir DIR (this lesson never downloads data).")
        if config["arch"] != "vit_tiny" and config["dataset"] in GENERATED_DATASETS:
            # The fine-tuning job's final attention scoring compares the 32x32 masks with 224x224 patches.
            raise VitlabError(f"This lesson cannot fine-tune {config['arch']} on the 32x32 {config['dataset']}: the "
                              f"job's final attention scoring fails at 224x224. Study a run trained on CIFAR.")
        return Plan(config["arch"], config["dataset"], data_dir, checkpoint["model"],
                    f"the model of {settings.checkpoint} with a fresh head, on {config['dataset']}")
    if not studies_small_model(settings):  # an ImageNet --arch
        data_dir = settings.data_dir or "./data"
        if not dataset_on_disk("cifar100", data_dir):
            raise VitlabError(f"--arch {settings.arch}: this lesson fine-tunes it on CIFAR-100, which is not under "
                              f"{data_dir}. Put CIFAR-100 there (or pass --data-dir DIR), or leave --arch out to "
                              f"fine-tune the small demo model.")
        return Plan(settings.arch, "cifar100", data_dir, None,
                    f"ImageNet {settings.arch} with a fresh head, on 64 CIFAR-100 images")
    _, _, demo_best = demo_run()  # trains the shared demo model on first use
    demo = load_checkpoint(demo_best)
    config = demo["config"]
    return Plan(config["arch"], config["dataset"], None, demo["model"],
                f"the demo {config['arch']}'s trained body with a fresh head, on 256 {config['dataset']} images")


settings = start("08_finetuning", FLAGS)
plan = plan_finetune(settings)
out = Path(settings.out)

# %% [markdown]
# ## The notebook's model, counted part by part
#
# ViT-B/16 for CIFAR-100 as the notebook sets it up, `build_model("vit_b_16", 100, trainable_blocks=3)`, with
# random weights: nothing to download. Its counts must be the notebook's.


# %%
def parameter_parts(model: nn.Module) -> list[tuple[str, int, bool]]:
    """(part, parameter count, trains?) for each piece of a torchvision ViT, input to output."""
    def part(name: str, params) -> tuple[str, int, bool]:
        params = list(params)
        return name, sum(p.numel() for p in params), any(p.requires_grad for p in params)

    parts = [part("patch embedding (conv_proj)", model.conv_proj.parameters()),
             part("class token", [model.class_token]),
             part("position embedding", [model.encoder.pos_embedding])]
    parts += [part(f"block {i + 1}", block.parameters()) for i, block in enumerate(model.encoder.layers)]
    parts += [part("final layer norm", model.encoder.ln.parameters()), part("head", model.heads.parameters())]
    return parts


NOTEBOOK_COUNTS = (21_340_516, 85_875_556)  # trainable, total: ViT-B/16, 100 classes, last 3 blocks + head
vit_b_16 = build_model("vit_b_16", num_classes=100, pretrained=False, trainable_blocks=3)
trainable, total = count_parameters(vit_b_16)
assert_same(torch.tensor([trainable, total]), torch.tensor(NOTEBOOK_COUNTS),
            vitlab="vitlab's count_parameters (ViT-B/16, 100 classes, last 3 blocks and head trainable)",
            lesson="NOTEBOOK_COUNTS (the notebook's trainable and total parameters)")
parts = parameter_parts(vit_b_16)
del vit_b_16
width = max(len(name) for name, _, _ in parts)
print("\n".join(f"  {name:<{width}} {count:>11,}  {'trains' if trains else 'frozen'}" for name, count, trains in parts))
print(f"  {'total':<{width}} {total:>11,}\n  {'trainable':<{width}} {trainable:>11,}  "
      f"({100 * trainable / total:.2f}%, asserted equal to the notebook's count)\n")


# %%
def figure_parameters(parts: list[tuple[str, int, bool]], trainable: int, total: int, title: str) -> Figure:
    """Horizontal bars, one per part, orange when it trains."""
    fig = Figure(figsize=(8, 0.32 * len(parts) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    names = [name for name, _, _ in parts]
    counts = [count / 1e6 for _, count, _ in parts]
    colours = ["tab:orange" if trains else "tab:blue" for _, _, trains in parts]
    ax.barh(names, counts, color=colours)
    for index, (_, count, _) in enumerate(parts):
        ax.text(count / 1e6, index, f" {count:,}", va="center", fontsize=8)
    ax.invert_yaxis()  # input at the top
    ax.set(xlabel="parameters (millions)", xlim=(0, max(counts) * 1.3),
           title=f"{title}\ntraining {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")
    ax.legend(handles=[Patch(color="tab:orange", label="trains"), Patch(color="tab:blue", label="frozen")],
              loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


save(figure_parameters(parts, trainable, total, "ViT-B/16 fine-tuned as in the notebook"), out, FIGURES[0])

# %% [markdown]
# ## A real fine-tune
#
# Small enough for a laptop, through the same job the notebook's run uses (`python -m vitlab.finetune`). The head
# is replaced by a fresh one, as the notebook swaps in a new head; the lesson's own run folder is replaced on
# every run (vitlab never overwrites a run otherwise).


# %%
def with_fresh_head(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """Save `state_dict` with the classification head re-initialised, as the notebook swaps in a new head."""
    weight = state_dict["heads.head.weight"]  # (classes, hidden)
    torch.manual_seed(0)
    head = nn.Linear(weight.shape[1], weight.shape[0])
    fresh = {**state_dict, "heads.head.weight": head.weight.detach(), "heads.head.bias": head.bias.detach()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fresh, path)
    return path


run_dir = out / "finetune_run"
shutil.rmtree(run_dir, ignore_errors=True)
command = ["--dataset", plan.dataset, *(["--data-dir", plan.data_dir] if plan.data_dir else [])]
command = ["--pretrained", plan.imported, *command] if plan.imported else ["--arch", plan.arch, *command]
if plan.weights is not None:
    command += ["--pretrained", str(with_fresh_head(plan.weights, out / "start_weights.pt"))]
command += [*(SMALL_RUN if plan.arch in ("vit_tiny", "imported") else LARGE_RUN), "--out", str(run_dir), "--quiet"]
print(f"\nFine-tuning {plan.description}:\n  python -m vitlab.finetune {' '.join(command)}\n")
code = finetune.main(command)
if code != 0:
    raise SystemExit(code)  # the job printed why; the lesson ends with the job's exit code
history = json.loads((run_dir / "history.json").read_text())
summary = json.loads((run_dir / "summary.json").read_text())
explain(f"""
    It trained {summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters
    ({100 * summary['trainable_parameters'] / summary['total_parameters']:.1f}%). Validation accuracy after
    epoch 1: {100 * history[0]['val_acc']:.1f}%, after epoch {history[-1]['epoch']}:
    {100 * history[-1]['val_acc']:.1f}%; test accuracy of the best epoch: {100 * summary['test_acc']:.1f}%.
    Training took {sum(r['seconds'] for r in history):.1f} s at {history[-1]['images_per_second']:.0f} images/s.
""")
fig = plot_curves(history)
fig.suptitle(f"Fine-tuning {plan.description}")
save(fig, out, FIGURES[1])

# %% [markdown]
# ## Questions
#
# 1. Each ViT-B/16 block has 7,087,872 parameters. Where are they: how many in attention, how many in the MLP?
#    (Hint: hidden 768, MLP 3072.)
# 2. The patch and position embeddings stay frozen. What would you expect to go wrong if you trained them on
#    CIFAR-100's 32x32 images upscaled to 224x224?
# 3. The fresh head starts at chance (one in ten for the ten kinds of clothing), and only the last block and the
#    head train, for a few dozen steps on about 26 photos per class. How far did accuracy climb, and what does that
#    say about the features the frozen blocks compute? Which classes would you expect it to confuse first?
# 4. vitlab's default recipe trains the pretrained blocks at a tenth of the head's learning rate. Why not the same?
