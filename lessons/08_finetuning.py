"""Lesson 8: fine-tuning, what is frozen and what trains.

The notebook this course grew from fine-tunes ImageNet ViT-B/16 on CIFAR-100: it swaps the 1000-class head for a
fresh 100-class one, freezes everything, then unfreezes the last 3 encoder blocks and the head. That trains
21,340,516 of 85,875,556 parameters (24.85%). This lesson counts them piece by piece (and asserts the totals),
then runs a real, short fine-tune through `vitlab.training.finetune` on a model small enough for a laptop: the demo
vit_tiny's trained body with a fresh head, only its last block and head training, on 256 shapes images for
4 epochs. It plots the training curves.

Training ViT-B/16 on a CPU runs at a few images per second, so the default mode never does. With --arch vit_b_16
(ImageNet weights and CIFAR-100 under --data-dir needed) the lesson fine-tunes it for one epoch on 64 CIFAR-100
images; with --checkpoint PATH it fine-tunes that run's model on its own dataset.

Builds on: vitlab/model.py (`build_model`, `count_parameters`), vitlab/training/finetune.py (`main`, the training job),
vitlab/training/checkpoint.py, vitlab/plotting.py (`plot_curves`).

Run: python lessons/08_finetuning.py [--arch vit_b_16 | --checkpoint PATH] [--out DIR]
Figures: parameters.png (ViT-B/16's parameters by part, trainable vs frozen), curves.png (loss and accuracy of
the short fine-tune). The run folder itself (config, history, checkpoints) is kept in OUT/finetune_run.

Questions:
1. Each ViT-B/16 block has 7,087,872 parameters. Where are they: how many in attention, how many in the MLP?
   (Hint: hidden 768, MLP 3072.)
2. The patch and position embeddings stay frozen. What would you expect to go wrong if you trained them on
   CIFAR-100's 32x32 images upscaled to 224x224?
3. The fresh head starts at chance (25% for 4 shapes), and only the last block and the head train, for a few dozen
   steps. Why can accuracy climb so fast, and what does that say about the features the frozen blocks compute?
4. vitlab's default recipe trains the pretrained blocks at a tenth of the head's learning rate. Why not the same?
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import nn

from vitlab.data import load_dataset
from vitlab.errors import DataUnavailableError, VitlabError
from vitlab.model import build_model, count_parameters
from vitlab.plotting import plot_curves
from vitlab.teaching.lesson import demo_run, explain, parse_args, print_questions, run_lesson, save, use_threads
from vitlab.training import finetune
from vitlab.training.checkpoint import load_checkpoint
from vitlab.training.config import DATASETS_FLAGS

FIGURES = ("parameters.png", "curves.png")
NOTEBOOK_COUNTS = (21_340_516, 85_875_556)  # trainable, total: ViT-B/16, 100 classes, last 3 blocks + head
# A few seconds on a laptop CPU: last block + fresh head of a vit_tiny, 256 images, 4 epochs (8 steps each).
SMALL_RUN = ["--trainable-blocks", "1", "--subset", "256", "--epochs", "4", "--batch-size", "32", "--lr", "1e-3",
             "--max-rotation", "0"]
# About a minute per epoch on a CPU: ViT-B/16 as in the notebook (last 3 blocks + head), on 64 images.
LARGE_RUN = ["--trainable-blocks", "3", "--subset", "64", "--epochs", "1", "--batch-size", "16"]


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


def with_fresh_head(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """Save `state_dict` with the classification head re-initialised, as the notebook swaps in a new head."""
    weight = state_dict["heads.head.weight"]  # (classes, hidden)
    torch.manual_seed(0)
    head = nn.Linear(weight.shape[1], weight.shape[0])
    fresh = {**state_dict, "heads.head.weight": head.weight.detach(), "heads.head.bias": head.bias.detach()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fresh, path)
    return path


def dataset_on_disk(name: str, data_dir: str) -> bool:
    """Whether `load_dataset(name, data_dir)` works without downloading anything."""
    try:
        load_dataset(name, data_dir, download=False, progress=False)
    except DataUnavailableError:
        return False
    return True


def refuse_vit_b_16_on_shapes(arch: str, dataset: str) -> None:
    """vitlab.training.finetune ends every shapes run by scoring attention against the object masks, and it compares the
    stored 32x32 masks with the model's patches: for ViT-B/16 (224x224 input) that fails after training."""
    if arch == "vit_b_16" and dataset == "shapes":
        raise VitlabError("This lesson fine-tunes ViT-B/16 on CIFAR-100 only: the fine-tuning job cannot yet finish a "
                          "ViT-B/16 run on the 32x32 shapes (its final attention scoring compares 32x32 masks with "
                          "224x224 patches). Put CIFAR-100 under --data-dir DIR, or run the lesson without --arch.")


def finetune_plan(args, run_dir: Path) -> tuple[list[str], str]:
    """The vitlab.training.finetune command line for this mode, and a description of it."""
    if args.checkpoint is not None:
        checkpoint = load_checkpoint(args.checkpoint, purpose="study")
        config = checkpoint["config"]
        data_dir = args.data_dir or config["data_dir"]
        if config["dataset"] != "shapes" and not dataset_on_disk(config["dataset"], data_dir):
            raise VitlabError(f"{args.checkpoint} was trained on {config['dataset']}, which is not under "
                              f"{data_dir}. Pass --data-dir DIR (this lesson never downloads data).")
        small = config["arch"] == "vit_tiny"
        refuse_vit_b_16_on_shapes(config["arch"], config["dataset"])
        start = with_fresh_head(checkpoint["model"], run_dir.parent / "start_weights.pt")
        on_disk = ["--data-dir", data_dir] if DATASETS_FLAGS[config["dataset"]].data_dir else []  # shapes: none
        argv = ["--arch", config["arch"], "--dataset", config["dataset"], *on_disk,
                "--pretrained", str(start), *(SMALL_RUN if small else LARGE_RUN)]
        return argv, f"the model of {args.checkpoint} with a fresh head, on {config['dataset']}"
    if args.arch == "vit_b_16":
        data_dir = args.data_dir or "./data"
        refuse_vit_b_16_on_shapes("vit_b_16", "cifar100" if dataset_on_disk("cifar100", data_dir) else "shapes")
        argv = ["--arch", "vit_b_16", "--dataset", "cifar100", "--data-dir", data_dir, *LARGE_RUN]
        return argv, "ImageNet ViT-B/16 with a fresh head, on 64 CIFAR-100 images"
    _, _, demo_best = demo_run()  # trains the shared demo model on first use
    demo_weights = load_checkpoint(demo_best)["model"]
    start = with_fresh_head(demo_weights, run_dir.parent / "start_weights.pt")
    argv = ["--arch", "vit_tiny", "--dataset", "shapes", "--pretrained", str(start), *SMALL_RUN]
    return argv, "the demo vit_tiny's trained body with a fresh head, on 256 shapes images"


@run_lesson
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__file__, __doc__, argv)
    use_threads(args, small=args.checkpoint is None and args.arch != "vit_b_16")
    out = Path(args.out)

    # 1. The notebook's model, counted part by part. Random weights: nothing to download.
    vit_b_16 = build_model("vit_b_16", num_classes=100, pretrained=False, trainable_blocks=3)
    trainable, total = count_parameters(vit_b_16)
    assert (trainable, total) == NOTEBOOK_COUNTS, (
        f"ViT-B/16 with the last 3 blocks and a 100-class head should train {NOTEBOOK_COUNTS[0]:,} of "
        f"{NOTEBOOK_COUNTS[1]:,} parameters (the notebook's numbers), but vitlab counts {trainable:,} of {total:,}")
    parts = parameter_parts(vit_b_16)
    del vit_b_16
    width = max(len(name) for name, _, _ in parts)
    explain("""
        ViT-B/16 for CIFAR-100 as the notebook sets it up (vitlab.build_model("vit_b_16", 100,
        trainable_blocks=3)), part by part:
    """)
    print("\n".join(f"  {name:<{width}} {count:>11,}  {'trains' if trains else 'frozen'}"
                    for name, count, trains in parts))
    print(f"  {'total':<{width}} {total:>11,}\n  {'trainable':<{width}} {trainable:>11,}  "
          f"({100 * trainable / total:.2f}%, asserted equal to the notebook's count)\n")
    save(figure_parameters(parts, trainable, total, "ViT-B/16 fine-tuned as in the notebook"), out, FIGURES[0])

    # 2. A real fine-tune, small enough for a laptop, through the same job the notebook's run uses.
    run_dir = out / "finetune_run"
    shutil.rmtree(run_dir, ignore_errors=True)  # vitlab never overwrites a run: this lesson's own run is replaced
    command, description = finetune_plan(args, run_dir)
    command += ["--out", str(run_dir), "--quiet"]
    print(f"\nFine-tuning {description}:\n  python -m vitlab.finetune {' '.join(command)}\n")
    code = finetune.main(command)
    if code != 0:
        return code  # vitlab.training.finetune printed why
    history = json.loads((run_dir / "history.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    first, last = history[0], history[-1]
    explain(f"""
        It trained {summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters
        ({100 * summary['trainable_parameters'] / summary['total_parameters']:.1f}%). Validation accuracy after
        epoch 1: {100 * first['val_acc']:.1f}%, after epoch {last['epoch']}: {100 * last['val_acc']:.1f}%; test
        accuracy of the best epoch: {100 * summary['test_acc']:.1f}%. Training took
        {sum(r['seconds'] for r in history):.1f} s at {last['images_per_second']:.0f} images/s.
    """)
    fig = plot_curves(history)
    fig.suptitle(f"Fine-tuning {description}")
    save(fig, out, FIGURES[1])
    print_questions(__doc__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
