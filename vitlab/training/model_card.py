"""`MODEL_CARD.md`: what a finished run's weights are, how they were made, what they scored, and where.

    write_model_card(out, config, summary, splits, model, transform)   # MODEL_CARD.md and the attention.png it shows

The weights themselves are `model.safetensors` beside it (`vitlab.training.checkpoint.write_safetensors`).
"""

from __future__ import annotations

import platform
from dataclasses import fields
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.models import VisionTransformer

from vitlab.analysis.attention import rollout
from vitlab.atomic import atomic_write
from vitlab.capture import capture
from vitlab.data import BatchTransform, DataSplits
from vitlab.plotting import draw_overlay, save_figure
from vitlab.training.checkpoint import WEIGHTS_FILE
from vitlab.training.config import FinetuneConfig
from vitlab.training.imported import IMPORTED, model_name, statistics

CARD_FILE = "MODEL_CARD.md"
GALLERY_FILE = "attention.png"
# Resolved into the others, or filled from --pretrained (an imported model's spec); a new run needs a new folder.
SETTINGS_NOT_IN_COMMAND = ("preset", "resume", "quiet", "out", "imported")


def command_line(config: FinetuneConfig) -> str:
    """The command that makes this run again: every resolved setting that differs from the defaults, as flags."""
    default = FinetuneConfig()
    flags = []
    for field in fields(FinetuneConfig):
        value = getattr(config, field.name)
        if field.name in SETTINGS_NOT_IN_COMMAND or value == getattr(default, field.name) or value is None \
                or value == IMPORTED:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags.append(f"{flag} {value}")
    return " ".join(["python -m vitlab.finetune", *flags])


def write_model_card(out: Path, config: FinetuneConfig, summary: dict, splits: DataSplits,
                     model: VisionTransformer, transform: BatchTransform) -> Path:
    """MODEL_CARD.md (and the attention.png it shows): what the weights are, how they were made, what they scored."""
    save_figure(attention_gallery(model, transform, splits), out / GALLERY_FILE)
    text = card_text(config, summary, splits)
    return atomic_write(out / CARD_FILE, lambda file: file.write(text.encode()))


def card_text(config: FinetuneConfig, summary: dict, splits: DataSplits) -> str:
    """The card's Markdown: model, data, recipe, result, where and how long, the command, the gallery."""
    machine = platform.processor() or platform.machine()
    rows = [
        ("architecture", _architecture(config)),
        ("start weights", f"{config.pretrained}" + (f" ({config.weights})" if config.weights else "")),
        ("trained", f"the last {config.trainable_blocks} encoder blocks and a new {splits.num_classes}-class head "
                    f"({summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters)"),
        ("data", f"`{config.dataset}`: {len(splits.train):,} train / {len(splits.val):,} validation / "
                 f"{len(splits.test):,} test images; classes {', '.join(splits.classes[:12])}"
                 + (", ..." if splits.num_classes > 12 else "")),
        ("recipe", f"`{config.recipe}`, {config.epochs} epochs, batch {config.batch_size}, head lr "
                   f"{config.lr or 'the recipe default'}, seed {config.seed}"
                   + (", frozen trunk cached" if config.cache_trunk else "")),
        ("test accuracy", f"{summary['test_acc']:.2%} on {summary['test_images']:,} test images, measured once on the "
                          f"best validation epoch ({summary['best_epoch']}; validation {summary['best_val_acc']:.2%})"),
        ("device", f"{summary['device']} ({machine}), torch {torch.__version__}"),
        ("wall time", f"{summary['wall_seconds']:.1f} s inside the run"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"""# Model card: {model_name(vars(config))} fine-tuned on {config.dataset}

Written by vitlab at the end of the run. The weights are `{WEIGHTS_FILE}` (safetensors; the same as `best.pt`'s),
readable with the safetensors library alone; `vitlab.load_trained_model` rebuilds the model from either file.

| | |
| --- | --- |
{table}

The command that made it:

```bash
{command_line(config)}
```

Every setting, resolved, is in `config.json`; every epoch in `history.json` and `metrics.csv`.

![Rollout over test images]({GALLERY_FILE})

`{GALLERY_FILE}`: eight test images and their attention rollout (mean over heads, every block), the model's own
view of where the class token's information comes from. No attention map is ground truth: see vitlab's lessons.
"""


def _architecture(config: FinetuneConfig) -> str:
    """The card's architecture row: vitlab's arch, or an imported model's origin, shape and normalisation."""
    if config.arch != IMPORTED:
        return f"torchvision VisionTransformer `{config.arch}` at {config.image_size} px"
    spec, (mean, std) = config.imported, statistics(config.imported)
    vit = spec["vit"]
    return (f"`{spec['name']}` imported from {spec['source']} (`{config.pretrained}`) as a torchvision "
            f"VisionTransformer: {vit['num_layers']} blocks of width {vit['hidden_dim']}, {vit['num_heads']} heads, "
            f"{vit['patch_size']}-px patches, at {config.image_size} px (made for {spec['native_image_size']}); "
            f"inputs normalised with mean {mean} and std {std}")


@torch.no_grad()
def attention_gallery(model: VisionTransformer, transform: BatchTransform, splits: DataSplits,
                      count: int = 8) -> Figure:
    """Two rows: `count` test images, and the same images with their rollout over them."""
    shown = splits.test.take(count)
    device = next(model.parameters()).device
    model.eval()
    with capture(model) as captured:
        predicted = model(transform(shown.images.to(device))).argmax(dim=-1).cpu()  # (N,)
    grid = captured.geometry.grid_size
    maps: Tensor = rollout(captured.attentions).reshape(-1, grid, grid).cpu()  # (N, P) -> (N, g, g)
    fig = Figure(figsize=(1.6 * len(shown), 3.6), layout="constrained")
    axes = fig.subplots(2, len(shown), squeeze=False)
    for column in range(len(shown)):
        truth, guess = splits.classes[int(shown.labels[column])], splits.classes[int(predicted[column])]
        draw_overlay(axes[0, column], shown.images[column], None, title=f"{truth}\n-> {guess}")
        draw_overlay(axes[1, column], shown.images[column], maps[column], title="rollout")
    return fig

